"""The Hugging Face Hub: ``hf://`` sources for files and runs, and uploading an exported run.

A source is ``hf://OWNER/REPO[@REVISION][/PATH]`` (the Hub's own URI form): a file of a model repo
(``vco convert-official``, ``--stats``) or a whole exported run (``vco sample --run``). Downloads go
through ``huggingface_hub`` into its standard cache (``HF_HUB_CACHE``, default
~/.cache/huggingface/hub), so a second use, or an offline machine (``HF_HUB_OFFLINE=1``) whose cache
holds the file, reads it from there; anything else is a HubError that says which file to fetch and
where it must go. ``huggingface_hub`` is the optional extra ``vco[hub]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PREFIX = "hf://"
# what `vco sample --run hf://...` needs of an exported run (vco.export writes these)
RUN_FILES = ["checkpoint.safetensors", "checkpoint.json", "config.yaml", "semantic_stats.safetensors",
             "README.md", "vco_export.json"]


class HubError(RuntimeError):
    """A Hub source that cannot be read or a folder that cannot be uploaded; says what to do."""


@dataclass(frozen=True)
class HubSource:
    repo_id: str              # OWNER/REPO
    path: str = ""            # a file (or folder) inside the repo; "" = the whole repo
    revision: str | None = None

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}{'@' + self.revision if self.revision else ''}" \
               f"{'/' + self.path if self.path else ''}"


def is_hub_source(text) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def parse_source(text: str, revision: str | None = None) -> HubSource:
    """``hf://OWNER/REPO[@REV][/PATH]``; ``revision`` (a --revision flag) may give the revision
    instead of ``@REV``, not both."""
    parts = text[len(PREFIX):].rstrip("/").split("/") if is_hub_source(text) else []
    if len(parts) < 2 or not all(parts):
        raise HubError(f"{text!r} is not a Hub source: write hf://OWNER/REPO/PATH/IN/REPO "
                       f"(e.g. hf://hanlincs/V-Co/<checkpoint>.pth), optionally hf://OWNER/REPO@REVISION/...")
    name, _, at = parts[1].partition("@")
    if at and revision and at != revision:
        raise HubError(f"{text} names revision {at!r} but --revision says {revision!r}: give one")
    return HubSource(f"{parts[0]}/{name}", "/".join(parts[2:]), at or revision)


def library():
    """The huggingface_hub package, or a HubError that says how to install it."""
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401  (submodules the package loads lazily)
        import huggingface_hub.errors  # noqa: F401
    except ImportError:
        raise HubError("hf:// sources and --push need the huggingface_hub package: "
                       "pip install 'vco[hub]'") from None
    return huggingface_hub


def cache_dir() -> Path:
    return Path(library().constants.HF_HUB_CACHE)


def offline() -> bool:
    hub = library()
    is_offline = getattr(hub.constants, "is_offline_mode", None)
    return bool(is_offline() if is_offline else hub.constants.HF_HUB_OFFLINE)


def _cached_folder(source: HubSource) -> Path:
    """Where the cache keeps a model repo (the library's documented layout)."""
    return cache_dir() / f"models--{source.repo_id.replace('/', '--')}"


def _not_available(source: HubSource, reason: str, files: list[str]) -> HubError:
    rev = source.revision or "main"
    fetch = "\n  ".join(f"hf download {source.repo_id} {f} --revision {rev}" for f in files)
    return HubError(
        f"{source} is not in the Hugging Face cache ({cache_dir()}) and the Hub cannot be reached "
        f"({reason}). On a machine with network run\n  {fetch}\nthen copy its "
        f"{_cached_folder(source).name}/ folder (from that machine's cache, ~/.cache/huggingface/hub "
        f"by default) into {cache_dir()}/ here; or download the file(s) anywhere and pass the local path.")


def _translate(e: Exception, source: HubSource, files: list[str]) -> HubError:
    """huggingface_hub's exceptions -> one HubError saying what went wrong and what to do."""
    errors = library().errors
    if isinstance(e, errors.LocalEntryNotFoundError) or isinstance(e, errors.OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE=1" if offline() else f"no network: {str(e).strip().splitlines()[0]}"
        return _not_available(source, why, files)
    if isinstance(e, errors.GatedRepoError):
        return HubError(f"{source}: the repo {source.repo_id} is gated: accept its terms on "
                        f"https://huggingface.co/{source.repo_id} and log in (`hf auth login`)")
    if isinstance(e, errors.RepositoryNotFoundError):
        return HubError(f"{source}: no model repo {source.repo_id} on the Hub (or it is private: log in "
                        f"with `hf auth login`)")
    if isinstance(e, errors.RevisionNotFoundError):
        return HubError(f"{source}: the repo {source.repo_id} has no revision {source.revision!r}")
    if isinstance(e, errors.EntryNotFoundError):
        return HubError(f"{source}: the repo {source.repo_id} has no file {files[0]!r}"
                        f"{_listing(source)}")
    return HubError(f"{source}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")


def _listing(source: HubSource) -> str:
    """'; it holds: a, b' from the Hub (or nothing when that fails too)."""
    try:
        files = library().list_repo_files(source.repo_id, revision=source.revision)
    except Exception:
        return ""
    return f"; it holds: {', '.join(files[:20])}" + (" ..." if len(files) > 20 else "")


def fetch_file(source: str | HubSource, revision: str | None = None) -> Path:
    """The local path of one file of a Hub repo, downloaded into the cache unless it is there."""
    src = source if isinstance(source, HubSource) else parse_source(source, revision)
    if not src.path:
        raise HubError(f"{src} names a repo, not a file: write {src}/PATH (the file's path as the "
                       f"repo's 'Files' tab shows it){_listing(src)}")
    hub = library()
    try:
        return Path(hub.hf_hub_download(src.repo_id, src.path, revision=src.revision,
                                        local_files_only=offline(), library_name="vco"))
    except Exception as e:
        raise _translate(e, src, [src.path]) from None


def fetch_run(source: str | HubSource, revision: str | None = None) -> Path:
    """The local folder of an exported run (``vco export``) on the Hub: the repo, or its PATH
    subfolder, downloaded into the cache (the files a run needs only)."""
    src = source if isinstance(source, HubSource) else parse_source(source, revision)
    prefix = f"{src.path}/" if src.path else ""
    hub = library()
    try:
        folder = Path(hub.snapshot_download(src.repo_id, revision=src.revision, local_files_only=offline(),
                                            allow_patterns=[prefix + f for f in RUN_FILES], library_name="vco"))
    except Exception as e:
        raise _translate(e, src, [prefix + f for f in RUN_FILES[:3]]) from None
    run = folder / src.path
    if not (run / "checkpoint.safetensors").is_file():
        raise HubError(f"{src} holds no checkpoint.safetensors: it is not a run written by `vco export`")
    return run


def resolve_file(path: str, revision: str | None = None) -> str:
    """A local path as it is; an ``hf://`` file fetched (``revision`` only applies to the Hub)."""
    return _local(path, revision, fetch_file)


def resolve_run(run: str, revision: str | None = None) -> str:
    """A local run folder as it is; an ``hf://`` exported run fetched into the cache."""
    return _local(run, revision, fetch_run)


def _local(text: str, revision: str | None, fetch) -> str:
    if is_hub_source(text):
        return str(fetch(text, revision))
    if revision:
        raise HubError(f"--revision applies to hf:// sources; {text} is a local path")
    return text


def check_push(repo_id: str) -> None:
    """A HubError unless an upload to ``repo_id`` can start: the package, the name, a login."""
    hub = library()
    owner, _, name = repo_id.partition("/")
    if not owner or not name or "/" in name:
        raise HubError(f"--push takes OWNER/REPO (e.g. your-name/vco-tiny-fmnist), got {repo_id!r}")
    if not hub.get_token():
        raise HubError("not logged in to the Hugging Face Hub: run `hf auth login` (or set HF_TOKEN), "
                       "then export again with --push (or upload an exported folder with `hf upload`)")
    if offline():
        raise HubError(f"HF_HUB_OFFLINE=1 is set: unset it to push to {repo_id}")


def push_folder(folder: str | Path, repo_id: str, private: bool = False, message: str = "") -> str:
    """Upload an exported folder as the model repo ``repo_id`` (created if needed); its URL."""
    check_push(repo_id)
    hub = library()
    try:
        api = hub.HfApi()
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                          commit_message=message or f"vco export ({Path(folder).name})")
    except Exception as e:
        raise HubError(f"uploading {folder} to {repo_id} failed ({type(e).__name__}: "
                       f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); the folder is "
                       f"unchanged: retry, or upload it by hand") from None
    return str(url)
