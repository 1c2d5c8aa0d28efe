"""`vco export`: a trained run as a self-contained folder to share (e.g. as a Hugging Face model repo).

The folder is itself a run folder, so ``vco sample --run DIR`` (or ``--run hf://OWNER/REPO`` once
it is uploaded) and ``vco train --init-from DIR`` read it like any other:

    checkpoint.safetensors   the chosen weights (default: ema1, the sampling weights) and the model's
                             buffers; no optimizer state (a checksummed vco checkpoint)
    checkpoint.json          its metadata: the resolved config, step, class names, which weights
    config.yaml              the resolved config
    semantic_stats.safetensors  V-Co: the semantic stream's statistics (fine-tuning needs them)
    eval/                    the run's evaluation results (JSON, tables, plots, sample grids)
    README.md                a model card with the Hub's YAML header
    vco_export.json          where it came from: source run, step, weights, vco version, checksum
"""
from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import __version__
from .config import from_dict, to_dict, to_yaml
from .files import atomic_write_text, current_umask
from .semantic.stream import STATS_NAME
from .train.checkpoint import (CKPT_NAME, CheckpointError, checkpoint_sections, load_tensors, read_meta,
                               save_checkpoint)

SECTIONS = ("ema1", "ema2", "model")
# the Hub dataset ids of the datasets vco knows by name (a folder of images has none)
HUB_DATASETS = {"fashion-mnist": "zalando-datasets/fashion_mnist", "imagenet": "ILSVRC/imagenet-1k"}
EVAL_FILES = ("*.json", "*.md", "*.png")


@dataclass
class Export:
    folder: Path
    step: int
    weights: list[str]
    evaluations: list[dict]       # one row per evaluation found in the run's eval/ folder
    notes: list[str]


def export_run(run: str | Path, out: str | Path, weights: tuple[str, ...] = ("ema1",),
               license: str | None = None, repo_id: str | None = None) -> Export:
    """Write ``run`` as a shareable folder ``out`` (which must not exist yet, or be empty). The
    folder is built beside ``out`` and renamed into place, so a failed export leaves nothing."""
    run, out = Path(run), Path(out)
    weights = list(dict.fromkeys(weights))
    bad = [w for w in weights if w not in SECTIONS]
    if bad or not weights:
        raise ValueError(f"--weights takes some of {', '.join(SECTIONS)}, got {', '.join(weights) or 'none'}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists and is not empty: vco export never overwrites; "
                              f"choose another --out")
    meta = read_meta(run)
    tensors, held = _weights(run, weights)
    cfg = from_dict(meta["config"])
    notes: list[str] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        stats = _semantic_stats(run, cfg, notes)
        if stats is not None:
            shutil.copyfile(stats, tmp / STATS_NAME)
            cfg.semantic.stats = None        # the copy beside the checkpoint is the run's own
        meta = {k: v for k, v in meta.items() if k not in ("format", "config")}
        meta.update(config=to_dict(cfg), weights=held, exported_from=str(run.resolve()))
        save_checkpoint(tmp, tensors, meta)
        atomic_write_text(tmp / "config.yaml", to_yaml(cfg))
        evaluations = _copy_evaluations(run / "eval", tmp / "eval")
        card = model_card(cfg, meta, held, evaluations, sorted(p.name for p in (tmp / "eval").glob("*.png")),
                          license=license, repo_id=repo_id)
        atomic_write_text(tmp / "README.md", card)
        atomic_write_text(tmp / "vco_export.json", json.dumps({
            "source_run": str(run.resolve()), "step": meta.get("step"), "weights": held,
            "vco_version": __version__, "exported_at": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"), "checkpoint_sha256": _sha256(tmp / CKPT_NAME)}, indent=2))
        _shareable(tmp)
        if out.exists():
            out.rmdir()                      # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Export(out, int(meta.get("step", 0)), held, evaluations, notes)


def _weights(run: Path, weights: list[str]) -> tuple[dict, list[str]]:
    """The exported tensors: each chosen section, and the model's buffers (the ``model/`` entries
    no EMA holds) when the raw weights are left out."""
    model = load_tensors(run, "model")
    parts = {s: model if s == "model" else load_tensors(run, s) for s in weights}
    missing = [s for s, part in parts.items() if not part]
    if missing:
        raise CheckpointError(f"{run} holds no '{missing[0]}' weights: choose --weights from the sections "
                              f"it has ({', '.join(checkpoint_sections(run))})")
    out = {f"{s}/{k}": v for s, part in parts.items() for k, v in part.items()}
    if "model" not in parts:
        covered = {k.split("/", 1)[1] for k in out}
        out.update({f"model/{k}": v for k, v in model.items() if k not in covered})
    return out, list(parts)


def _semantic_stats(run: Path, cfg, notes: list[str]) -> Path | None:
    """The statistics file a fine-tune of this run would use: the run's own, else the file its
    config names (copied so that the folder does not point at this machine)."""
    if not cfg.model.co_denoising:
        return None
    own = run / STATS_NAME
    if own.is_file():
        return own
    if cfg.semantic.stats and Path(cfg.semantic.stats).is_file():
        notes.append(f"semantic statistics copied from {cfg.semantic.stats}")
        return Path(cfg.semantic.stats)
    notes.append("no semantic statistics found (sampling does not need them; a fine-tune recomputes them)")
    return None


def _shareable(folder: Path) -> None:
    """The permissions of ordinary new files (the umask's), not the private ones of the temporary
    folder and atomic writes, so that the folder can be shared or served as it is."""
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _copy_evaluations(src: Path, dst: Path) -> list[dict]:
    """Copy eval/ (JSON, tables, PNGs) and return one row per evaluation its JSON files hold."""
    dst.mkdir()
    if not src.is_dir():
        return []
    for pattern in EVAL_FILES:
        for path in sorted(src.glob(pattern)):
            shutil.copyfile(path, dst / path.name)
    rows = []
    for path in sorted(src.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for r in data if isinstance(data, list) else [data]:
            if isinstance(r, dict) and isinstance(r.get("fid"), (int, float)):
                rows.append(_evaluation_row(path.name, r))
    return rows


def _evaluation_row(file: str, r: dict) -> dict:
    s = r.get("settings", {})
    return {"file": file, "step": r.get("checkpoint_step"), "num": s.get("num"), "cfg": s.get("cfg"),
            "steps": s.get("steps"), "method": s.get("method"), "weights": s.get("weights"),
            "sigma_rel": s.get("sigma_rel"), "fid": r["fid"], "precision": r.get("precision"),
            "recall": r.get("recall"), "fd_dinov2": r.get("fd_dinov2"),
            "inception_score": r.get("inception_score"),
            "reference": Path(r["reference"]).name if r.get("reference") else None}


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def model_card(cfg, meta: dict, weights: list[str], evaluations: list[dict], grids: list[str],
               license: str | None = None, repo_id: str | None = None) -> str:
    """README.md of an exported run: the Hub's YAML header, what the model is, how it was trained,
    the evaluations found in the run, and how to sample it."""
    m, d = cfg.model, cfg.data
    kind = "V-Co (visual co-denoising)" if m.co_denoising else "JiT (pixel-only)"
    title = repo_id.split("/")[-1] if repo_id else f"{cfg.preset or 'vco'} on {d.name}"
    run_arg = f"hf://{repo_id}" if repo_id else "hf://OWNER/REPO"
    lines = ["---", _card_header(cfg, license), "---", "", f"# {title}", "",
             f"A class-conditional pixel-space diffusion transformer, {kind}, trained with vco "
             f"{__version__}.", "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in _card_rows(cfg, meta, weights, kind)], ""]
    if grids:
        lines += ["## Samples", "", *[f"![{g}](eval/{g})" for g in grids[:2]], ""]
    lines += ["## Evaluation", "", *_evaluation_table(evaluations, int(meta.get("step", 0)))]
    lines += ["", "## Use", "", "With vco and its `hub` extra installed (`pip install 'vco[hub]'`):", "", "```bash",
              f"vco sample --run {run_arg} --out samples.png        # a class-labelled grid",
              f"vco train --init-from {run_arg} --out my-finetune   # fine-tune from these weights",
              "```", "", "## Files", "",
              "- `checkpoint.safetensors`: the weights above and the model's buffers, with a SHA-256 per "
              "tensor (no optimizer state).",
              "- `config.yaml`: the resolved training config (`vco train --config config.yaml` retrains it).",
              *(["- `semantic_stats.safetensors`: the semantic stream's statistics."] if m.co_denoising else []),
              "- `eval/`: the run's evaluation results.", "- `vco_export.json`: provenance.", ""]
    return "\n".join(lines)


def _card_header(cfg, license: str | None) -> str:
    """The Hub's YAML metadata (between the --- lines); the license is the user's to set."""
    header = {"library_name": "vco",
              "tags": ["vco", "diffusion", "pixel-diffusion", "image-generation", "class-conditional",
                       "v-co" if cfg.model.co_denoising else "jit"],
              "pipeline_tag": "unconditional-image-generation"}
    if cfg.data.name in HUB_DATASETS:
        header["datasets"] = [HUB_DATASETS[cfg.data.name]]
    if license:
        header["license"] = license
    text = yaml.safe_dump(header, sort_keys=False).rstrip()
    return text if license else text + "\n# license: set one before sharing (e.g. mit, apache-2.0, cc-by-nc-4.0)"


def _card_rows(cfg, meta: dict, weights: list[str], kind: str) -> list[tuple[str, str]]:
    """(what, value) of the run: model, data, training, weights, sampler, V-Co components."""
    from .models import count_params
    m, t, d = cfg.model, cfg.train, cfg.data
    decays = dict(zip(("ema1", "ema2"), meta.get("ema_decays", t.ema_decays)))
    weight_text = ", ".join(f"{w} (EMA decay {decays[w]:g})" if w in decays else f"{w} (raw)" for w in weights)
    data = d.name + (f" ({d.path})" if d.name == "folder" and d.path else "")
    rows = [("preset", cfg.preset or "(custom)"), ("model", kind),
            ("parameters", f"{count_params(m) / 1e6:.2f} M"),
            ("image size", f"{m.image_size} px, {m.patch_size} px patches"),
            ("classes", f"{m.num_classes}"), ("training data", data),
            ("optimizer steps", f"{int(meta.get('step', 0)):,}"),
            ("global batch", f"{meta.get('global_batch', t.batch_size)}"),
            ("weights in this folder", weight_text),
            ("sampler", f"{cfg.sampler.method}, {cfg.sampler.steps} steps, CFG w = {cfg.sampler.cfg:g} "
                        f"on t in [{cfg.sampler.interval_min:g}, {cfg.sampler.interval_max:g}]")]
    if m.co_denoising:
        rows += [("dual stream", f"fusion {m.fusion}, unconditional branch {m.uncond}"),
                 ("semantic encoder", cfg.semantic.encoder + (f" ({cfg.semantic.encoder_path})"
                                                             if cfg.semantic.encoder_path else "")),
                 ("calibration", cfg.semantic.calibration.get("name", "")),
                 ("auxiliary loss", cfg.semantic.aux_loss.get("name", ""))]
    return rows


def _evaluation_table(evaluations: list[dict], step: int) -> list[str]:
    """Markdown lines: one row per evaluation found, and a note on rows of earlier steps."""
    if not evaluations:
        return ["No evaluation was found in the run (`vco eval --run RUN --ref REF` writes one)."]
    lines = ["Found in the run's `eval/` folder (copied here); FID against the reference named.", "",
             "| file | checkpoint step | samples | sampler steps | w | weights | FID | precision | recall | "
             "FD-DINOv2 | reference |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in evaluations:
        weights_used = r["weights"] if r["sigma_rel"] is None else f"post-hoc EMA {r['sigma_rel']:g}"
        lines.append(f"| {r['file']} | {_fmt(r['step'])} | {_fmt(r['num'])} | {_fmt(r['steps'])} | "
                     f"{_fmt(r['cfg'], 2)} | {weights_used} | {_fmt(r['fid'])} | {_fmt(r['precision'], 3)} | "
                     f"{_fmt(r['recall'], 3)} | {_fmt(r['fd_dinov2'])} | {_fmt(r['reference'])} |")
    if any(r["step"] not in (None, step) for r in evaluations):
        lines += ["", f"Rows whose checkpoint step is not {step:,} scored an earlier state of the run."]
    return lines
