"""hf:// sources: parsing, the offline cache (built by hand in the library's documented layout),
and the errors that say which file to fetch and where to put it. No test touches the network."""
import time

import huggingface_hub
import huggingface_hub.constants
import pytest

from helpers import hub_cache
from vco import hub
from vco.hub import HubError, HubSource, fetch_file, parse_source


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache that huggingface_hub uses, in offline mode."""
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return root


@pytest.mark.parametrize("text, revision, expected", [
    ("hf://hanlincs/V-Co/B16/checkpoint-last.pth", None, HubSource("hanlincs/V-Co", "B16/checkpoint-last.pth")),
    ("hf://hanlincs/V-Co@v1/x.pth", None, HubSource("hanlincs/V-Co", "x.pth", "v1")),
    ("hf://hanlincs/V-Co/x.pth", "abc", HubSource("hanlincs/V-Co", "x.pth", "abc")),
    ("hf://user/run", None, HubSource("user/run", "", None)),
    ("hf://user/run@main/", "main", HubSource("user/run", "", "main")),
])
def test_parse_source(text, revision, expected):
    assert parse_source(text, revision) == expected


@pytest.mark.parametrize("text, revision, message", [
    ("hf://hanlincs", None, "not a Hub source"),
    ("hf:///V-Co/x", None, "not a Hub source"),
    ("hanlincs/V-Co/x.pth", None, "not a Hub source"),
    ("hf://a/b@v1/x", "v2", "names revision 'v1' but --revision says 'v2'"),
])
def test_parse_source_errors(text, revision, message):
    with pytest.raises(HubError, match=message):
        parse_source(text, revision)


def test_offline_reads_the_cache_of_each_revision(cache):
    hub_cache(cache, "owner/repo", {"ckpt/a.pth": b"main bytes"})
    hub_cache(cache, "owner/repo", {"ckpt/a.pth": b"tagged bytes"}, revision="v1")
    assert fetch_file("hf://owner/repo/ckpt/a.pth").read_bytes() == b"main bytes"
    assert fetch_file("hf://owner/repo/ckpt/a.pth", revision="v1").read_bytes() == b"tagged bytes"
    assert fetch_file("hf://owner/repo@v1/ckpt/a.pth").read_bytes() == b"tagged bytes"


def test_offline_missing_file_says_what_to_fetch_and_where(cache):
    hub_cache(cache, "owner/repo", {"a.pth": b"x"})
    with pytest.raises(HubError) as e:
        fetch_file("hf://owner/repo/b.pth", revision="v2")
    msg = str(e.value)
    assert "HF_HUB_OFFLINE=1" in msg
    assert "hf download owner/repo b.pth --revision v2" in msg
    assert f"models--owner--repo/ folder" in msg and str(cache) in msg


def test_a_repo_without_a_file_is_refused_with_how_to_name_one(cache):
    with pytest.raises(HubError, match=r"names a repo, not a file: write hf://owner/repo/PATH"):
        fetch_file("hf://owner/repo")


def test_no_network_falls_back_to_the_cache_then_says_what_to_fetch(cache, monkeypatch):
    """Not offline, but the Hub is unreachable (a closed local port stands for it)."""
    import huggingface_hub.utils._http as http
    endpoint = "http://127.0.0.1:9"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    requested = []
    monkeypatch.setattr(http.time, "sleep", lambda s: requested.append(s))    # no retry back-off
    snapshot = hub_cache(cache, "owner/repo", {"a.pth": b"cached"})
    t0 = time.time()
    # a commit hash needs no request: read from the cache
    assert fetch_file("hf://owner/repo/a.pth", revision=snapshot.name).read_bytes() == b"cached"
    with pytest.raises(HubError) as e:
        fetch_file("hf://owner/repo/missing.pth")
    assert "no network" in str(e.value) and "hf download owner/repo missing.pth --revision main" in str(e.value)
    assert time.time() - t0 < 30
    assert requested, "the Hub was asked (and retried) before the cache was used"


def test_resolve_keeps_local_paths_and_refuses_a_stray_revision(tmp_path):
    assert hub.resolve_file(str(tmp_path / "x.pth")) == str(tmp_path / "x.pth")
    with pytest.raises(HubError, match="--revision applies to hf:// sources"):
        hub.resolve_file(str(tmp_path / "x.pth"), revision="v1")


def test_push_needs_a_login(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubError, match="not logged in.*hf auth login"):
        hub.push_folder(tmp_path, "me/model")
    for bad in ("model", "a/b/c", "/b"):
        with pytest.raises(HubError, match="--push takes OWNER/REPO"):
            hub.push_folder(tmp_path, bad)


def test_missing_package_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(HubError, match=r"pip install 'vco\[hub\]'"):
        fetch_file("hf://owner/repo/a.pth")
