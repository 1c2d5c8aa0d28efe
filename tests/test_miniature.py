"""The miniature comparison's bookkeeping (benchmarks/miniature.py): every variant trains the same
budget and differs from the full recipe in the one ingredient its name says; the equal-time point;
the tables and plot list what is finished."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))   # miniature imports its helpers from ladder
spec = importlib.util.spec_from_file_location("miniature", ROOT / "benchmarks" / "miniature.py")
miniature = importlib.util.module_from_spec(spec)
sys.modules["miniature"] = miniature
spec.loader.exec_module(miniature)
import miniature_report  # noqa: E402  (benchmarks/ is on the path above)


def write_outputs(*args):
    miniature_report.write_outputs(*args, variant_names=list(miniature.BY_NAME))


def test_variants_share_the_budget_and_each_lacks_one_ingredient():
    cfgs = {v.name: miniature.variant_config(v, 1800) for v in miniature.VARIANTS}
    for cfg in cfgs.values():   # same steps, batch, lr, seed, data: the same data order for all
        assert (cfg.train.steps, cfg.train.batch_size, cfg.train.seed, cfg.model.image_size) == (1800, 64, 0, 28)
        assert cfg.train.blr == cfgs["jit-tiny"].train.blr and cfg.data.name == "fashion-mnist"
    full = cfgs["vco-tiny"]
    recipe = lambda c: (c.model.fusion, c.model.uncond, c.semantic.aux_loss["name"], c.semantic.calibration["name"])
    assert recipe(full) == ("dual_stream", "joint_asymmetric_mask", "hybrid", "rms")
    lacks = {"vco-token_concat": 0, "vco-input_dropout": 1, "vco-no_hybrid": 2, "vco-no_rms": 3}
    for name, i in lacks.items():
        differs = [k for k, (a, b) in enumerate(zip(recipe(cfgs[name]), recipe(full))) if a != b]
        assert differs == [i], name
    assert cfgs["jit-tiny"].model.fusion == cfgs["jit-tiny-wide"].model.fusion == "none"
    assert miniature.EVAL_AT[-1] == cfgs["jit-tiny"].train.steps == 1800   # the last point is the preset's


def point(step, seconds, fid):
    return {"step": step, "seconds": seconds, "fid": fid, "precision": 0.5, "recall": 0.4, "kid": 0.01,
            "kid_std": 0.001, "eval_seconds": 1.0}


def test_equal_time_takes_the_last_point_within_the_baselines_seconds():
    rec = {"points": [point(900, 800, 50), point(1800, 1600, 30)]}
    assert miniature_report.at_equal_time(rec, 780)["step"] == 900      # 5% slack: 800 <= 1.05 x 780
    assert miniature_report.at_equal_time(rec, 1600)["step"] == 1800
    assert miniature_report.at_equal_time(rec, 100)["step"] == 900      # nothing within: the first point


def test_outputs_list_finished_variants_and_the_pending_ones(tmp_path):
    recs = [{"variant": "jit-tiny", "removes": "-", "params": 4e6,
             "points": [point(900, 600, 50), point(1800, 1200, 35)]},
            {"variant": "vco-tiny", "removes": "none", "params": 8e6,
             "points": [point(900, 1200, 40), point(1800, 2400, 25)],
             "guided": {"fid": 20.0, "w": 1.5, "precision": 0.6, "recall": 0.3}}]
    write_outputs(recs, tmp_path)
    table = (tmp_path / "miniature.md").read_text()
    vco_row = next(line for line in table.splitlines() if line.startswith("| vco-tiny "))
    assert "| 40.00 | 25.00 |" in vco_row and "40.00 (900)" in vco_row   # equal time: JiT's 1200 s
    assert "20.00 (1.5)" in vco_row
    assert "Not yet run: jit-tiny-wide" in table
    saved = json.loads((tmp_path / "miniature.json").read_text())
    assert [r["variant"] for r in saved["variants"]] == ["jit-tiny", "vco-tiny"]
    assert (tmp_path / "miniature.png").stat().st_size > 10_000


def test_equal_time_uses_the_one_sitting_rates_when_every_variant_has_one(tmp_path):
    # The runs' clocks say vco-tiny's 1800 steps fit in JiT's time (trained on a faster day);
    # the rates timed in one sitting say vco-tiny is 2x slower a step: only its 900 fits.
    recs = [{"variant": "jit-tiny", "removes": "-", "params": 4e6,
             "points": [point(900, 600, 50), point(1800, 1200, 35)]},
            {"variant": "vco-tiny", "removes": "none", "params": 8e6,
             "points": [point(900, 500, 40), point(1800, 1000, 25)]}]
    write_outputs(recs, tmp_path)                      # no timing: the clocks
    row = lambda: next(x for x in (tmp_path / "miniature.md").read_text().splitlines() if x.startswith("| vco-tiny "))
    assert "25.00 (1800)" in row()
    timing = {"sec_per_step": {"jit-tiny": 0.5, "vco-tiny": 1.0}, "date": "today", "machine": "this CPU"}
    write_outputs(recs, tmp_path, timing)
    assert "40.00 (900)" in row() and "| 1.00 |" in row()     # s / step: the timed rate
    saved = json.loads((tmp_path / "miniature.json").read_text())
    assert saved["equal_time_from"] == "timed_seconds" and saved["timing"] == timing
    assert [p["timed_seconds"] for p in saved["variants"][1]["points"]] == [900.0, 1800.0]
    assert [p["seconds"] for p in saved["variants"][1]["points"]] == [500, 1000]   # the clocks kept
    # One variant not timed: every variant falls back to the clocks (no mixing of the two).
    write_outputs(recs, tmp_path, {**timing, "sec_per_step": {"jit-tiny": 0.5}})
    assert "25.00 (1800)" in row()


def test_timing_measures_every_variant_in_alternating_rounds(monkeypatch):
    from test_train import small_cfg
    order = []
    monkeypatch.setattr(miniature, "variant_config",
                        lambda v, steps: order.append(v.name) or small_cfg([f"train.steps={steps}"]))
    monkeypatch.setattr(miniature, "TIME_WARMUP", 1)
    monkeypatch.setattr(miniature, "TIME_STEPS", 2)
    timing = miniature.time_variants(miniature.VARIANTS[:2])
    assert order == ["jit-tiny", "jit-tiny-wide", "jit-tiny-wide", "jit-tiny"]   # rounds alternate
    assert set(timing["sec_per_step"]) == {"jit-tiny", "jit-tiny-wide"}
    for name, rounds in timing["rounds"].items():
        assert len(rounds) == 2 and min(rounds) > 0
        assert timing["sec_per_step"][name] == pytest.approx(sum(rounds) / 2, abs=1e-4)  # the median
    assert timing["steps"] == 2 and timing["warmup"] == 1 and timing["machine"]


def test_a_variant_keeps_finished_points_and_saves_its_record_after_each(monkeypatch, tmp_path):
    """An earlier session's point (its run folder gone) is reused, not recomputed; each new point is
    in the record on disk as soon as it is scored; a guided result already there is kept."""
    trained, saved_after = [], []
    record_path = tmp_path / "results" / "vco-no_rms.json"

    def fake_train(v, run, steps):
        trained.append(steps)
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text("model: {fusion: dual_stream}\n")
        return {"step": steps, "seconds": steps / 2}

    def fake_score(run, settings, ref, inception, out_dir=None):
        if record_path.is_file():
            saved_after.append([p["step"] for p in json.loads(record_path.read_text())["points"]])
        return {"fid": 30.0, "precision": 0.5, "recall": 0.4, "kid": 0.01, "kid_std": 0.001, "seconds": 9.0}

    monkeypatch.setattr(miniature, "train_to", fake_train)
    monkeypatch.setattr(miniature, "score", fake_score)
    record_path.parent.mkdir()
    earlier = {"points": [point(900, 450, 55.0)], "config": {"old": True}, "guided": {"fid": 1.0, "w": 1.5}}
    record_path.write_text(json.dumps(earlier))
    v = miniature.BY_NAME["vco-no_rms"]
    record = miniature.run_variant(v, tmp_path / "runs", None, None, False, 1800, record_path)
    assert trained == [1800]                                   # step 900 came from the record
    assert [p["fid"] for p in record["points"]] == [55.0, 30.0]
    assert record["points"][1]["threads"] >= 1 and record["points"][1]["machine"]
    assert json.loads(record_path.read_text())["points"][1]["step"] == 1800   # saved once scored
    assert saved_after == [[900]]                              # (scoring 1800 saw 900 saved)
    assert json.loads(record_path.read_text())["guided"] == earlier["guided"]
    assert record["guided"] == earlier["guided"] and record["config"] == {"model": {"fusion": "dual_stream"}}
    # A second call finds both points cached: nothing is trained again.
    miniature.run_variant(v, tmp_path / "runs", None, None, False, 1800, record_path)
    assert trained == [1800]


def test_a_budget_run_resumes_with_the_minutes_it_has_left(monkeypatch, tmp_path):
    run = tmp_path / "runs" / "jit-tiny-30min"
    run.mkdir(parents=True)
    # An earlier segment trained 10 minutes (to step 100) before it was stopped.
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "elapsed_s": 6.0 * s}) + "\n"
                                               for s in range(10, 101, 10)))
    (run / "checkpoint.json").write_text(json.dumps({"step": 100}))
    (run / "config.yaml").write_text("train: {steps: 100000, blr: 0.004, batch_size: 64, precision: fp32}\n")
    calls = []

    class FakeTrainer:
        def __init__(self, cfg, run_dir, resume=False):
            calls.append((cfg.train.time_limit_min, cfg.train.steps, cfg.train.precision, resume))

        def train(self, progress=True, on_step=None):
            assert on_step is None                    # the constant lr plans no end
            (run / "checkpoint.json").write_text(json.dumps({"step": 300}))

    monkeypatch.setattr(miniature, "Trainer", FakeTrainer)
    monkeypatch.setattr(miniature, "score", lambda *a, **k: {"fid": 38.0, "precision": 0.4, "recall": 0.4,
                                                            "kid": 0.02, "kid_std": 0.001, "seconds": 5.0})
    v = miniature.BY_NAME["jit-tiny"]
    point = miniature.run_budget(v, tmp_path / "runs", None, None, miniature.Budget(30))
    assert len(calls) == 1
    limit, steps, precision, resume = calls[0]
    assert limit == pytest.approx(20.0, abs=1e-3) and resume and precision == "fp32"
    assert steps == miniature.BUDGET_STEP_CAP
    assert (point["step"], point["fid"], point["minutes"]) == (300, 38.0, 30)
    assert miniature.run_budget(v, tmp_path / "runs", None, None, miniature.Budget(30)) == point and len(calls) == 1   # cached
    # The report lists it and the JSON keeps it.
    recs = [{"variant": "jit-tiny", "removes": "-", "params": 4e6, "points": [{**point, "step": 900, "seconds": 600}]}]
    write_outputs(recs, tmp_path, None, [point])
    assert "| jit-tiny | 30 min | 0.001 | constant | fp32 | 300 | 38.00 |" in (tmp_path / "miniature.md").read_text()
    saved = json.loads((tmp_path / "miniature.json").read_text())["budget_runs"][0]
    assert saved["step"] == 300 and saved["peak_lr"] == pytest.approx(1e-3)   # the lr kept without the config


def test_a_budget_sets_its_peak_lr_and_precision_and_names_its_run_by_them():
    from vco.config import build_config
    v = miniature.BY_NAME["jit-tiny"]
    preset = miniature.variant_config(v, 1800).train
    assert miniature.budget_name(v, miniature.Budget(30)) == "jit-tiny-30min"     # the earlier runs' folders
    b = miniature.Budget(30, "linear", lr=2e-3, precision="bf16")
    assert miniature.budget_name(v, b) == "jit-tiny-30min-linear-lr0.002-bf16"
    train = build_config(v.preset, overrides=b.overrides(v)).train
    assert train.blr * train.batch_size / 256 == pytest.approx(2e-3)              # the peak lr asked for
    assert (train.precision, train.lr_schedule, train.batch_size) == ("bf16", "linear", preset.batch_size)
    same = build_config(v.preset, overrides=miniature.Budget(30).overrides(v)).train
    assert (same.blr, same.precision, same.lr_schedule) == (preset.blr, "fp32", "constant")


def test_a_decayed_budget_run_plans_its_end_once_and_keeps_it_when_resumed(monkeypatch, tmp_path):
    """--schedule linear: a new run is time-boxed by plan_schedule over the whole budget and trains
    with its re-plan hook; resumed, it is rebuilt from its own config.yaml (the end it planned)."""
    from types import SimpleNamespace
    planned, trained, hook = [], [], SimpleNamespace(planned=40, at=12)

    class FakeTrainer:
        def __init__(self, cfg, run_dir, resume=False):
            self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume

        def train(self, progress=True, on_step=None):
            trained.append((self.resume, self.cfg.train.lr_schedule, self.cfg.train.steps, on_step))
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "checkpoint.json").write_text(json.dumps({"step": 40}))
            (self.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 10, "elapsed_s": 60.0}) + "\n")
            tc = self.cfg.train                         # what the trainer records in its run folder
            (self.run_dir / "config.yaml").write_text(
                f"preset: jit-tiny\ntrain: {{steps: {tc.steps}, lr_decay_steps: {tc.lr_decay_steps}, "
                f"lr_schedule: {tc.lr_schedule}, precision: {tc.precision}}}\n")

    def fake_plan(trainer, train_s):
        planned.append(train_s)
        trainer.cfg.train.steps = trainer.cfg.train.lr_decay_steps = 40
        return hook

    monkeypatch.setattr(miniature, "Trainer", FakeTrainer)
    monkeypatch.setattr(miniature, "plan_schedule", fake_plan)
    monkeypatch.setattr(miniature, "score", lambda *a, **k: {"fid": 50.0, "precision": 0.4, "recall": 0.4,
                                                            "kid": 0.02, "kid_std": 0.001, "seconds": 5.0})
    v = miniature.BY_NAME["jit-tiny"]
    point = miniature.run_budget(v, tmp_path / "runs", None, None, miniature.Budget(2, "linear"))
    assert planned == [120] and trained == [(False, "linear", 40, hook)]
    assert point["lr_schedule"] == "linear" and (tmp_path / "runs" / "jit-tiny-2min-linear").is_dir()
    # Stopped after one minute: resumed from its config.yaml with the minute left, not re-planned.
    run = tmp_path / "runs" / "jit-tiny-2min-linear"
    (run / "eval_final.json").unlink()
    miniature.run_budget(v, tmp_path / "runs", None, None, miniature.Budget(2, "linear"))
    assert planned == [120] and trained[1][:3] == (True, "linear", 40) and trained[1][3] is None
