"""The vco command end to end (small settings)."""
import subprocess
import sys

import pytest
from PIL import Image

from vco.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "vco.cli", *args], capture_output=True, text=True)


def test_version_is_the_installed_package_version():
    import re
    from importlib.metadata import version
    from pathlib import Path
    r = run("--version")
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert r.returncode == 0 and r.stdout.strip() == f"vco {version('vco')}" == f"vco {declared}"


def test_info_prints_param_count_last():
    r = run("info", "--preset", "jit-b16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "params=131123712"


def test_train_sample_resume(tmp_path, capsys):
    out = tmp_path / "R"
    small = ["--set", "batch_size=16", "synthetic_size=64", "log_every=5", "precision=fp32"]
    assert main(["train", "--preset", "jit-tiny", "--data", "synthetic", "--steps", "30",
                 "--out", str(out), "--quiet", *small]) == 0
    assert main(["sample", "--run", str(out), "--num", "16", "--steps", "10",
                 "--out", str(tmp_path / "g.png"), "--npz"]) == 0
    grid = Image.open(tmp_path / "g.png")
    assert grid.width > 64 and grid.height >= 8 * 64
    assert main(["train", "--resume", str(out), "--steps", "35", "--quiet"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert (out / "metrics.jsonl").read_text().splitlines()[-1].startswith('{"step": 35')


def test_clear_errors(tmp_path, capsys):
    assert main(["train", "--preset", "jit-tiny", "--data", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["info", "--preset", "jit-tiny", "--set", "dept=3"]) == 2
    assert "depth" in capsys.readouterr().err
    assert main(["sample", "--run", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_info_vco_b16_param_count():
    assert run("info", "--preset", "vco-b16").stdout.strip().splitlines()[-1] == "params=260666112"


def test_stats_command_writes_calibration(tmp_path, capsys):
    from vco.semantic import load_stats
    out = tmp_path / "stats.safetensors"
    assert main(["stats", "--data", "synthetic", "--num", "32", "--out", str(out),
                 "--set", "synthetic_size=32"]) == 0
    st = load_stats(out)
    assert st.var.shape == (49, 32) and st.scale > 0      # vco-tiny: 7 x 7 tokens of features[:7]
    assert main(["stats", "--data", "synthetic", "--out", str(out)]) == 2   # never overwrites
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--steps", "0"], "argument --steps: must be a finite number >= 1, got 0"),
    (["train", "--steps", "-5"], "argument --steps: must be a finite number >= 1, got -5"),
    (["sample", "--run", "r", "--cfg", "nan"], "argument --cfg: must be a finite number >= 0, got nan"),
    (["sample", "--run", "r", "--cfg", "inf"], "argument --cfg: must be a finite number >= 0, got inf"),
    (["sample", "--run", "r", "--batch-size", "0"], "argument --batch-size: must be a finite number >= 1"),
    (["demo", "--minutes", "nan"], "argument --minutes: must be a finite number > 0"),
])
def test_bad_numbers_on_the_command_line_are_refused_before_any_work(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(argv + (["--out", str(tmp_path / "o")] if argv[0] == "train" else []))
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()                      # nothing was written


def test_sample_checks_the_grid_path_before_loading_or_sampling(tmp_path, capsys):
    # the run does not exist: the output path is refused first, before any model is loaded
    assert main(["sample", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "x.noext")]) == 2
    assert "cannot write an image with extension .noext" in capsys.readouterr().err


def test_resume_refuses_another_config_and_records_the_changes_it_allows(tmp_path, capsys, caplog):
    import yaml
    out = tmp_path / "R"
    tiny = ["--set", "image_size=16", "hidden_size=32", "depth=2", "num_heads=2", "bottleneck_dim=8",
            "in_context_len=2", "in_context_start=1", "batch_size=8", "synthetic_size=16",
            "precision=fp32", "log_every=1"]
    assert main(["train", "--preset", "jit-tiny", "--data", "synthetic", "--steps", "2", "--out", str(out),
                 "--quiet", *tiny]) == 0
    original = (out / "config.yaml").read_text()
    for flag, value in (("--preset", "vco-tiny"), ("--config", str(out / "config.yaml"))):
        assert main(["train", "--resume", str(out), flag, value, "--quiet"]) == 2
        assert f"{flag} cannot apply to a resumed run" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == original and not (out / "config_history").exists()

    with caplog.at_level("WARNING", logger="vco.train"):
        assert main(["train", "--resume", str(out), "--steps", "3", "--quiet", "--set", "blr=1e-4",
                     "batch_size=4"]) == 0
    said = capsys.readouterr().out
    assert "train.blr: 0.004 -> 0.0001" in said and "train.batch_size: 8 -> 4" in said
    assert "global batch of 4" in caplog.text and "trained with 8" in caplog.text
    assert (out / "config_history" / "until-step-0000002.yaml").read_text() == original
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["blr"] == 1e-4
