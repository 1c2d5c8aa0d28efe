"""The ablation ladder's bookkeeping (benchmarks/ladder.py): same budget for every variant, the
record schema the issue fixes, resume-aware training time, tables of the finished variants."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ladder", ROOT / "benchmarks" / "ladder.py")
ladder = importlib.util.module_from_spec(spec)
sys.modules["ladder"] = ladder   # its dataclasses look their module up there
spec.loader.exec_module(ladder)

RECORD_KEYS = ["variant", "params", "steps", "seconds", "fid_unguided", "fid_guided", "cfg", "precision",
               "recall"]


def test_every_variant_shares_the_budget_and_the_recipe_rows_are_named():
    budget = ladder.BUDGETS["default"]
    cfgs = {v.name: ladder.variant_config(v, budget) for v in ladder.VARIANTS}
    assert len(cfgs) == len(ladder.VARIANTS) == 13
    for cfg in cfgs.values():   # same steps, batch, lr, seed: the same data order for all
        assert (cfg.train.steps, cfg.train.batch_size, cfg.train.seed) == (400, 16, 0)
        assert cfg.train.blr * cfg.train.batch_size / 256 == pytest.approx(ladder.LR)
        assert cfg.data.name == "fashion-mnist" and cfg.model.image_size == 32
    # the first CPU presets are pinned: the recorded table stays reproducible after the presets moved on
    assert (cfgs["jit-tiny"].model.hidden_size, cfgs["jit-tiny-wide"].model.hidden_size) == (256, 360)
    assert cfgs["vco-tiny"].semantic.encoder_layer == 14 and cfgs["vco-tiny"].train.ema_decays == (0.99, 0.999)
    assert cfgs["jit-tiny"].model.fusion == "none"
    full = cfgs["vco-tiny"]
    assert (full.model.fusion, full.model.uncond, full.semantic.aux_loss["name"],
            full.semantic.calibration["name"]) == ("dual_stream", "joint_asymmetric_mask", "hybrid", "rms")
    # each other V-Co row differs from the full recipe in what its name says
    assert cfgs["input_dropout"].model.uncond == "input_dropout_zeros"
    assert cfgs["dual_stream-no_aux"].semantic.aux_loss["name"] == "none"
    assert cfgs["time_shift"].semantic.calibration["name"] == "time_shift"
    assert {cfgs[n].model.fusion for n in ("token_concat", "direct_add", "channel_concat")} == \
        {"token_concat", "direct_add", "channel_concat"}


def test_training_seconds_counts_a_resumed_run_once(tmp_path):
    # first call: logs every 5 steps, killed after step 30 (last checkpoint at 25);
    # second call resumes from 25, its clock restarts, first log at step 30
    rows = [{"step": s, "elapsed_s": 2.0 * s} for s in range(5, 35, 5)]
    rows += [{"step": s, "elapsed_s": 3.0 * (s - 25)} for s in range(30, 45, 5)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert ladder.training_seconds(metrics) == pytest.approx(2.0 * 25 + 3.0 * 15)


def test_record_has_exactly_the_issue_keys_and_tables_list_finished_variants(tmp_path):
    ev = {"unguided": {"fid": 100.1234}, "guided": {"fid": 90.0, "settings": {"cfg": 2.0}, "kid": 0.0123,
                                                   "kid_std": 0.0011, "precision": 0.5, "recall": 0.25}}
    trained = {"params": 123, "steps": 400, "seconds": 60.0}
    folder = tmp_path / "ladder"
    folder.mkdir()
    for name, budget in (("vco-tiny", "default"), ("jit-tiny", "default"), ("repa", "smoke")):
        rec = ladder.record_of(ladder.BY_NAME[name], trained, ev)
        assert list(rec) == RECORD_KEYS and rec["variant"] == name and rec["fid_unguided"] == 100.123
        (folder / f"{name}.json").write_text(json.dumps({"record": rec, "budget": budget, **ev}))
    runs = ladder.finished_runs(folder, "default")
    records = [run["record"] for run in runs]
    assert [r["variant"] for r in records] == ["jit-tiny", "vco-tiny"]   # ladder order; other budgets left out
    ladder.write_outputs(runs, "default", ladder.BUDGETS["default"], tmp_path)
    assert json.loads((tmp_path / "ladder.json").read_text()) == records
    table = (tmp_path / "ladder.md").read_text()
    assert "| vco-tiny |" in table and "| repa |" not in table and "2 of 13 done" in table
    assert "| 12.3 ± 1.1 |" in table   # KID x1000 of the guided samples
    assert (tmp_path / "ladder.png").stat().st_size > 0
