"""`vco export`: a run as a self-contained folder, read back by `vco sample --run DIR` and
`--run hf://OWNER/REPO` (from a Hub cache built by hand, offline). No upload is tested."""
import json
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import hub_cache
from vco.cli import main
from vco.config import build_config
from vco.export import export_run
from vco.hub import RUN_FILES
from vco.sampling import generate
from vco.semantic.stream import STATS_NAME
from vco.train import Trainer, load_run_model
from vco.train.checkpoint import CheckpointError, load_tensors, read_meta

SMALL = ["image_size=16", "hidden_size=32", "depth=6", "num_heads=2", "bottleneck_dim=8",
         "in_context_len=2", "in_context_start=2", "stream_blocks=1", "precision=fp32",
         "data.name=synthetic", "synthetic_size=16", "batch_size=8", "stats_images=16",
         "log_every=1", "warmup_steps=0", "train.steps=3", "train.ema_decays=[0.5,0.9]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step V-Co run (semantic statistics of its own) with one evaluation result in eval/."""
    run = tmp_path_factory.mktemp("export") / "run"
    Trainer(build_config("vco-tiny", overrides=SMALL), run).train(progress=False)
    (run / "eval").mkdir()
    result = {"fid": 123.456, "precision": 0.25, "recall": 0.125, "checkpoint_step": 3,
              "reference": "/data/fashion-mnist-test-ref.npz",
              "settings": {"num": 20, "cfg": 1.0, "steps": 5, "method": "heun", "seed": 0,
                           "batch_size": 64, "weights": "ema1", "cfg_semantic": None, "sigma_rel": None}}
    (run / "eval" / "eval_n20_s5_cfg1.json").write_text(json.dumps(result))
    Image.new("RGB", (8, 8)).save(run / "eval" / "samples_cfg1.png")
    return run


def test_export_holds_the_sampling_weights_and_nothing_else(trained, tmp_path):
    out = tmp_path / "share"
    e = export_run(trained, out)
    assert e.step == 3 and e.weights == ["ema1"] and len(e.evaluations) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "checkpoint.json", "checkpoint.safetensors", "config.yaml", "eval", STATS_NAME,
         "vco_export.json"])
    tensors = load_tensors(out)
    sections = {k.split("/", 1)[0] for k in tensors}
    assert sections == {"model", "ema1"}                     # no optim/, no ema2
    source = load_tensors(trained)
    ema1 = {k for k in source if k.startswith("ema1/")}
    buffers = {k for k in source if k.startswith("model/")} - {"model/" + k[5:] for k in ema1}
    assert {k for k in tensors if k.startswith("model/")} == buffers and buffers   # pos_embed etc.
    assert all(torch.equal(tensors[k], source[k]) for k in tensors)
    assert read_meta(out)["weights"] == ["ema1"] and read_meta(out)["step"] == 3
    assert (out / STATS_NAME).read_bytes() == (trained / STATS_NAME).read_bytes()
    assert (out / "eval" / "eval_n20_s5_cfg1.json").is_file() and (out / "eval" / "samples_cfg1.png").is_file()
    provenance = json.loads((out / "vco_export.json").read_text())
    assert provenance["step"] == 3 and provenance["weights"] == ["ema1"] and len(provenance["checkpoint_sha256"]) == 64


def test_exported_folder_samples_exactly_like_the_run(trained, tmp_path):
    out = export_run(trained, tmp_path / "share").folder
    labels = torch.tensor([0, 1, 2, 3])
    images = []
    for run in (trained, out):
        model, cfg, _ = load_run_model(run, "ema1")
        cfg.sampler.steps = 3
        images.append(generate(model, cfg, labels, seed=7, batch_size=4, progress=False))
    assert torch.equal(images[0], images[1])
    with pytest.raises(CheckpointError, match=r"holds only the ema1 weights \(exported from"):
        load_run_model(out, "ema2")


def test_model_card_header_and_evaluations(trained, tmp_path):
    out = export_run(trained, tmp_path / "share", repo_id="someone/vco-tiny-demo").folder
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["library_name"] == "vco" and "v-co" in header["tags"] and "license" not in header
    assert "# license: set one" in card                      # the field is left for the user
    assert "| preset | vco-tiny |" in card and "| optimizer steps | 3 |" in card
    assert "| eval_n20_s5_cfg1.json | 3 | 20 | 5 | 1.00 | ema1 | 123.46 | 0.250 | 0.125 |" in card
    assert "fashion-mnist-test-ref.npz" in card and "![samples_cfg1.png](eval/samples_cfg1.png)" in card
    assert "vco sample --run hf://someone/vco-tiny-demo" in card
    licensed = export_run(trained, tmp_path / "mit", license="mit").folder
    assert yaml.safe_load((licensed / "README.md").read_text().split("---\n")[1])["license"] == "mit"


def test_fashion_mnist_card_names_the_hub_dataset(trained, tmp_path):
    from vco.config import from_dict
    from vco.export import model_card
    meta = read_meta(trained)
    cfg = from_dict(meta["config"])
    cfg.data.name = "fashion-mnist"
    header = yaml.safe_load(model_card(cfg, meta, ["ema1"], [], []).split("---\n")[1])
    assert header["datasets"] == ["zalando-datasets/fashion_mnist"]


def test_export_never_overwrites_and_leaves_nothing_on_failure(trained, tmp_path, capsys):
    out = tmp_path / "share"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", "--run", str(trained), "--out", str(out)]) == 2
    assert "never overwrites" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"
    assert main(["export", "--run", str(trained), "--out", str(tmp_path / "b"), "--weights", "ema3"]) == 2
    assert "--weights takes some of ema1, ema2, model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["share"]       # no partial folder left
    # every section, raw weights too; the optimizer state never
    e = export_run(trained, tmp_path / "all", weights=("ema1", "ema2", "model"))
    assert {k.split("/", 1)[0] for k in load_tensors(e.folder)} == {"model", "ema1", "ema2"}
    ema1_only = export_run(trained, tmp_path / "ema1").folder
    with pytest.raises(CheckpointError, match=r"holds no 'ema2' weights: .* \(ema1, model\)"):
        export_run(ema1_only, tmp_path / "again", weights=("ema2",))
    assert not (tmp_path / "again").exists()


def test_sample_and_init_from_an_exported_run_on_the_hub(trained, tmp_path, monkeypatch, capsys):
    """The exported folder, uploaded (here: placed in the Hub cache as `hf download` leaves it),
    samples the same grid through --run hf://OWNER/REPO as through --run DIR."""
    out = tmp_path / "share"
    assert main(["export", "--run", str(trained), "--out", str(out)]) == 0
    assert f"next: vco sample --run {out}" in capsys.readouterr().out
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub_cache(cache, "someone/vco-tiny-demo", {f: out / f for f in RUN_FILES if (out / f).is_file()})
    grids = []
    for run in (str(out), "hf://someone/vco-tiny-demo"):
        grid = tmp_path / f"grid{len(grids)}.png"
        assert main(["sample", "--run", run, "--num", "4", "--steps", "3", "--device", "cpu",
                     "--out", str(grid)]) == 0
        grids.append(np.asarray(Image.open(grid)))
    assert np.array_equal(grids[0], grids[1])
    assert main(["sample", "--run", "hf://someone/other", "--out", str(tmp_path / "g.png")]) == 2
    assert "hf download someone/other" in capsys.readouterr().err
    # fine-tuning starts from the exported weights and statistics
    tuned = tmp_path / "tuned"
    assert main(["train", "--init-from", "hf://someone/vco-tiny-demo", "--out", str(tuned), "--steps", "1",
                 "--quiet"]) == 0
    assert (tuned / STATS_NAME).read_bytes() == (out / STATS_NAME).read_bytes()


def test_push_without_login_or_with_a_bad_name_stops_before_exporting(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    out = tmp_path / "share"
    assert main(["export", "--run", str(trained), "--out", str(out), "--push", "me/model"]) == 2
    err = capsys.readouterr().err
    assert "not logged in" in err and "hf auth login" in err
    assert main(["export", "--run", str(trained), "--out", str(out), "--push", "model"]) == 2
    assert "--push takes OWNER/REPO" in capsys.readouterr().err
    assert not out.exists()
