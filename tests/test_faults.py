"""Faults: interrupted and killed runs, damaged files, non-finite steps, bad input.

Each test states the failure it injects and the guarantee it checks: nothing already written
is lost or corrupted, and the user gets an error that names the problem and the fix.
"""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vco.train.checkpoint as ck
from vco.cli import main
from vco.config import ConfigError, build_config
from vco.data import DataError, ImageFolderDataset
from vco.train import CheckpointError, Trainer, load_run_model
from vco.train.checkpoint import load_tensors, read_meta

SMALL = ["image_size=16", "hidden_size=32", "depth=2", "num_heads=2", "bottleneck_dim=8",
         "in_context_len=2", "in_context_start=1", "precision=fp32", "data.name=synthetic",
         "synthetic_size=16", "batch_size=8", "log_every=1", "warmup_steps=0"]


def cfg_for(preset="jit-tiny", *extra):
    return build_config(preset, overrides=SMALL + list(extra))


def model_tensors(run):
    return load_tensors(run)          # weights, EMAs and optimizer state (no RNG state is stored)


# ---------------------------------------------------------------- exact resume
def test_vco_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    """V-Co (semantic stream, class-balanced batches, both EMAs, optimizer, RNG): 2 + 2 == 4."""
    vco = ["semantic_dim=32", "classes_per_batch=2", "stats_images=16"]
    Trainer(cfg_for("vco-tiny", "train.steps=4", *vco), tmp_path / "full").train(progress=False)
    Trainer(cfg_for("vco-tiny", "train.steps=2", *vco), tmp_path / "part").train(progress=False)
    Trainer(cfg_for("vco-tiny", "train.steps=4", *vco), tmp_path / "part", resume=True).train(progress=False)
    a, b = load_tensors(tmp_path / "full"), load_tensors(tmp_path / "part")
    assert a.keys() == b.keys() and any(k.startswith("ema2/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cli_resume_with_dropout_is_bitwise_equal(tmp_path):
    """`vco train --resume R --steps N`, with dropout on (the global RNG is restored too)."""
    drop = ["depth=4", "attn_dropout=0.3", "proj_dropout=0.3"]
    args = ["train", "--preset", "jit-tiny", "--quiet", "--set", *SMALL, *drop]
    assert main([*args, "--out", str(tmp_path / "full"), "--steps", "4"]) == 0
    assert main([*args, "--out", str(tmp_path / "part"), "--steps", "2"]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--steps", "4", "--quiet"]) == 0
    a, b = load_tensors(tmp_path / "full"), load_tensors(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and dropout really acts: without it the weights differ
    plain = ["train", "--preset", "jit-tiny", "--quiet", "--set", *SMALL, "depth=4"]
    assert main([*plain, "--out", str(tmp_path / "nodrop"), "--steps", "4"]) == 0
    c = load_tensors(tmp_path / "nodrop")
    assert not torch.equal(a["model/blocks.1.mlp.w3.weight"], c["model/blocks.1.mlp.w3.weight"])


# ---------------------------------------------------------------- crash-safe checkpoints
CHILD = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)   # as the test process: the same reduction order, bitwise results
import vco.train.checkpoint as ck
from vco.config import ConfigError, build_config
from vco.train import Trainer
real, calls = ck.save_file, []
def hanging_save(tensors, path, metadata=None):
    calls.append(path)
    real(tensors, path, metadata=metadata)
    if len(calls) == 3:                       # the third save: half written, then killed
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        Path(sys.argv[2]).write_text("saving")
        time.sleep(600)
ck.save_file = hanging_save
cfg = build_config("jit-tiny", overrides=sys.argv[3:])
Trainer(cfg, sys.argv[1]).train(progress=False)
"""


def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path):
    script, marker, run = tmp_path / "child.py", tmp_path / "marker", tmp_path / "run"
    script.write_text(CHILD)
    overrides = SMALL + ["train.steps=6", "ckpt_every=1"]
    child = subprocess.Popen([sys.executable, str(script), str(run), str(marker), *overrides])
    deadline = time.time() + 240
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the child never reached its third save"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert read_meta(run)["step"] == 2                  # the last complete checkpoint
    assert list(run.glob(".*.tmp"))                     # the killed save's leftovers...
    load_tensors(run)                                   # ...did not touch the real file
    Trainer(cfg_for("jit-tiny", "train.steps=6"), run, resume=True).train(progress=False)
    assert not list(run.glob(".*.tmp")) and read_meta(run)["step"] == 6
    Trainer(cfg_for("jit-tiny", "train.steps=6"), tmp_path / "straight").train(progress=False)
    a, b = model_tensors(run), model_tensors(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)      # and the resumed run is exact


def test_disk_full_during_a_save_loses_nothing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(cfg_for("jit-tiny", "train.steps=1"), run)
    trainer.train(progress=False)
    before = model_tensors(run)

    def full_disk(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ck, "save_file", full_disk)
    trainer.train_step([next(iter(trainer.loader(1, 2)))])
    with pytest.raises(CheckpointError, match="No space left on device.*intact"):
        trainer.save()
    after = model_tensors(run)
    assert read_meta(run)["step"] == 1 and all(torch.equal(before[k], after[k]) for k in before)
    assert not list(run.glob(".*.tmp"))


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from vco.files import WriteError, atomic_write, atomic_write_text, remove_stale_temporaries
    target = tmp_path / "out" / "result.json"
    atomic_write_text(target, "old")

    def half_then_full(tmp):
        tmp.write_text("half a new fi")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(WriteError, match=r"result\.json: No space left on device.*intact"):
        atomic_write(target, half_then_full)
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["result.json"]

    def compute_error(tmp):                         # the writer's own error keeps its type
        tmp.write_text("x")
        raise KeyError("bad input")
    with pytest.raises(KeyError):
        atomic_write(target, compute_error, passthrough=(KeyError,))
    with pytest.raises(WriteError, match="bad input"):
        atomic_write(target, compute_error)
    assert target.read_text() == "old" and len(list(target.parent.iterdir())) == 1

    (target.parent / ".result.json.abc123.tmp").write_text("left by a killed writer")
    (target.parent / ".tmpQ3xZ9a").write_text("left by safetensors' own writer, killed mid-save")
    (target.parent / ".tmp-notes.txt").write_text("the user's")       # not a temporary of ours
    remove_stale_temporaries(target.parent)
    assert sorted(p.name for p in target.parent.iterdir()) == [".tmp-notes.txt", "result.json"]


def test_atomic_writes_get_ordinary_permissions_or_keep_the_replaced_files(tmp_path):
    """Not the temporary file's private 0o600: a new file gets 0o666 less the umask, as open()
    would give it; a replaced file keeps its mode; a checkpoint (safetensors writes its own
    temporary) too."""
    import stat
    from vco.files import atomic_write_text
    old_mask = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640
        (tmp_path / "kept.json").write_text("old")
        (tmp_path / "kept.json").chmod(0o604)
        atomic_write_text(tmp_path / "kept.json", "new")
        assert stat.S_IMODE((tmp_path / "kept.json").stat().st_mode) == 0o604
        Trainer(cfg_for("jit-tiny", "train.steps=1"), tmp_path / "run").train(progress=False)
        for name in ("checkpoint.safetensors", "checkpoint.json", "config.yaml"):
            assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o640, name
    finally:
        os.umask(old_mask)


def test_a_real_save_killed_midway_leaves_only_files_the_next_start_removes(tmp_path):
    # safetensors writes ".tmpXXXXXX" inside our own temporary: both are found and removed
    from safetensors.torch import save_file
    from vco.files import remove_stale_temporaries
    seen = set()
    watcher = threading.Thread(target=lambda: [seen.update(os.listdir(tmp_path)) or time.sleep(0.0005)
                                               for _ in range(4000)])
    watcher.start()
    save_file({"w": torch.zeros(20_000_000)}, str(tmp_path / ".checkpoint.safetensors.ab12.tmp"))
    watcher.join()
    library = [n for n in seen if n.startswith(".tmp")]
    assert library and all(re.fullmatch(r"\.tmp[A-Za-z0-9]{6}", n) for n in library)   # its naming
    for name in library + [".checkpoint.safetensors.ab12.tmp"]:   # as a kill would leave them
        (tmp_path / name).write_bytes(b"partial")
    remove_stale_temporaries(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_run_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["train", "--preset", "jit-tiny", "--out", str(tmp_path / "file" / "run"),
                 "--steps", "1", "--quiet", "--set", *SMALL]) == 2
    assert "cannot create the run folder" in capsys.readouterr().err


# ---------------------------------------------------------------- safe loading
def test_every_torch_load_in_the_package_is_weights_only():
    src = Path(__file__).resolve().parents[1] / "src"
    calls = [(p, line) for p in src.rglob("*.py") for line in p.read_text().splitlines()
             if re.search(r"torch\.load\(", line)]
    assert calls, "expected the RAE stat.pt loader"
    assert all("weights_only=True" in line for _, line in calls), calls


def test_tampered_checkpoint_is_rejected(tmp_path):
    Trainer(cfg_for("jit-tiny", "train.steps=1"), tmp_path / "r").train(progress=False)
    path = tmp_path / "r" / "checkpoint.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                       # one flipped byte in the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        Trainer(cfg_for("jit-tiny"), tmp_path / "r", resume=True)


def test_checkpoint_of_another_preset_names_the_tensors(tmp_path):
    Trainer(cfg_for("jit-tiny", "train.steps=1"), tmp_path / "r").train(progress=False)
    with pytest.raises(CheckpointError, match=r"t_embedder\.mlp\.0\.weight: checkpoint \(32, 256\) vs model \(64, 256\)"):
        Trainer(cfg_for("jit-tiny", "hidden_size=64"), tmp_path / "r", resume=True)
    with pytest.raises(CheckpointError, match=r"missing \(\d+\): blocks\.2"):
        Trainer(cfg_for("jit-tiny", "depth=3"), tmp_path / "r", resume=True)


# ---------------------------------------------------------------- numerics
def nan_on(steps_to_poison):
    from vco.train.objective import Objective
    real = Objective.forward

    def poisoned(self, *a, **kw):
        out = real(self, *a, **kw)
        if poisoned.calls in steps_to_poison:
            out["loss"] = out["loss"] * float("nan")
        poisoned.calls += 1
        return out
    poisoned.calls = 0
    return poisoned


def test_non_finite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    from vco.train.objective import Objective
    monkeypatch.setattr(Objective, "forward", nan_on({1, 2}))
    trainer = Trainer(cfg_for("jit-tiny", "train.steps=4"), tmp_path / "r")
    weights = []
    for step in range(4):
        trainer.train_step([next(iter(trainer.loader(step, step + 1)))])
        weights.append(trainer.model.final_layer.linear.weight.detach().clone())
    assert trainer.skipped == 2 and trainer.step == 4
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[1], weights[2])  # skipped
    assert not torch.equal(weights[2], weights[3])                                      # resumed
    assert all(torch.isfinite(w).all() for w in weights)


def test_consecutive_non_finite_steps_stop_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    from vco.train.objective import Objective
    Trainer(cfg_for("jit-tiny", "train.steps=2"), tmp_path / "r").train(progress=False)
    good = model_tensors(tmp_path / "r")
    monkeypatch.setattr(Objective, "forward", nan_on(set(range(100))))
    trainer = Trainer(cfg_for("jit-tiny", "train.steps=20", "max_bad_steps=3", "ckpt_every=1"),
                      tmp_path / "r", resume=True)
    with pytest.raises(FloatingPointError, match="3 consecutive steps.*intact"):
        trainer.train(progress=False)
    assert read_meta(tmp_path / "r")["step"] == 2
    assert all(torch.equal(good[k], v) for k, v in model_tensors(tmp_path / "r").items())
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] is None and records[-1]["skipped_steps"] == 3


# ---------------------------------------------------------------- bad input
def folder_with(tmp_path, files: dict) -> Path:
    for rel, writer in files.items():
        path = tmp_path / "data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
    return tmp_path / "data"


def test_truncated_jpeg_names_the_file(tmp_path):
    def truncated(p):
        Image.new("RGB", (64, 64), (200, 10, 10)).save(p, quality=95)
        p.write_bytes(p.read_bytes()[:300])
    root = folder_with(tmp_path, {"a/ok.jpg": lambda p: Image.new("RGB", (20, 20)).save(p),
                                  "a/cut.jpg": truncated})
    ds = ImageFolderDataset(root, 16)
    with pytest.raises(DataError, match=r"cut\.jpg.*Remove or replace"):
        [ds[i] for i in range(len(ds))]


def test_sixteen_bit_and_small_images_are_converted(tmp_path):
    def png16(p):
        Image.fromarray(np.full((12, 10), 65535 // 2, np.uint16)).save(p)   # I;16, smaller than 16
    root = folder_with(tmp_path, {"a/deep.png": png16})
    img, _ = ImageFolderDataset(root, 16)[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8            # upscaled, RGB
    assert abs(img.float().mean().item() - 127.5) < 2                      # 16-bit range scaled


def test_empty_class_folder_is_kept_but_never_drawn(tmp_path, caplog):
    from vco.data import ClassBalancedSchedule
    root = folder_with(tmp_path, {f"{c}/{i}.png": (lambda p: Image.new("RGB", (16, 16)).save(p))
                                  for c in ("a", "c") for i in range(4)})
    (root / "b").mkdir()
    ds = ImageFolderDataset(root, 16)
    assert ds.class_names == ["a", "b", "c"] and ds.empty_classes == ["b"]
    assert "never drawn" in caplog.text
    s = ClassBalancedSchedule(ds.labels, 4, 1, 2)
    assert set(ds.labels[s.global_indices(0)].tolist()) == {0, 2}


def test_num_classes_mismatch_between_data_and_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "1", "--quiet", "--set", *SMALL]) == 0
    root = folder_with(tmp_path, {f"{c}/{i}.png": (lambda p: Image.new("RGB", (16, 16)).save(p))
                                  for c in ("x", "y") for i in range(8)})
    assert main(["train", "--resume", str(run), "--data", str(root), "--steps", "2", "--quiet"]) == 2
    assert "the data has 2 classes but model.num_classes is 10" in capsys.readouterr().err


def test_sampler_arguments_out_of_range(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "1", "--quiet", "--set", *SMALL]) == 0
    for args, message in ((["--cfg", "-1"], "argument --cfg: must be a finite number >= 0"),
                          (["--steps", "0"], "argument --steps: must be a finite number >= 1"),
                          (["--num", "0"], "argument --num: must be a finite number >= 1")):
        with pytest.raises(SystemExit) as e:              # refused by the argument parser
            main(["sample", "--run", str(run), "--out", str(tmp_path / "g.png"), *args])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert main(["sample", "--run", str(run), "--out", str(tmp_path / "g.png"), "--steps", "20000"]) == 2
    assert "--steps must be in 1..10000" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--steps", "1", "--quiet"]) == 2   # never overwritten
    assert "already holds a run" in capsys.readouterr().err


# ---------------------------------------------------------------- more bad input
def write(path: Path, img: Image.Image):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_image_folder_modes_and_errors(tmp_path):
    write(tmp_path / "cat" / "a.png", Image.new("RGBA", (40, 30), (255, 0, 0, 0)))  # transparent
    write(tmp_path / "cat" / "b.png", Image.new("L", (20, 20), 128))
    write(tmp_path / "dog" / "c.jpg", Image.new("CMYK", (50, 50), (0, 0, 0, 0)))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, 16)
    assert ds.class_names == ["cat", "dog"] and len(ds) == 3
    img, label = ds[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and label == 0
    assert img.min() == 255                               # transparent -> white
    assert ds[1][0].float().mean().item() == pytest.approx(128, abs=1)
    (tmp_path / "dog" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="bad.png"):
        ImageFolderDataset(tmp_path, 16)[2]


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ImageFolderDataset(tmp_path / "nope", 16)
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        ImageFolderDataset(tmp_path, 16)


def test_override_types_are_checked():
    assert build_config("jit-tiny", overrides=["blr=1e-4"]).train.blr == 1e-4
    with pytest.raises(ConfigError, match="depth"):
        build_config("jit-tiny", overrides=["depth=deep"])


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match="hidden_size"):
        build_config("jit-tiny", overrides=["hiden_size=3"])
    with pytest.raises(ConfigError, match="key=value"):
        build_config("jit-tiny", overrides=["depth"])


def test_truncated_checkpoint_is_rejected(tmp_path):
    Trainer(cfg_for("jit-tiny", "train.steps=1"), tmp_path / "r").train(progress=False)
    path = tmp_path / "r" / "checkpoint.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_run_model(tmp_path / "r")


def _edit_header(path: Path, old: bytes, new: bytes) -> None:
    """Replace bytes inside the safetensors JSON header (same length: the file stays readable)."""
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    header = bytes(data[8:8 + size])
    assert len(old) == len(new) and header.count(old) >= 1, (old, header[:200])
    data[8:8 + size] = header.replace(old, new, 1)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("old, new", [
    (b'\\"step\\": 3', b'\\"step\\": 9'),                 # the step in the metadata JSON
    (b'\\"cfg\\": 2.0', b'\\"cfg\\": 9.0'),               # the stored guidance scale
    (b'"shape":[96,32]', b'"shape":[32,96]'),           # a tensor's shape (same bytes, other layout)
])
def test_an_edited_checkpoint_header_is_reported_as_corrupt(tmp_path, old, new):
    from vco.train import load_run_model
    run = tmp_path / "run"
    Trainer(cfg_for("jit-tiny", "train.steps=3"), run).train(progress=False)
    load_run_model(run)                                          # intact: loads
    _edit_header(run / "checkpoint.safetensors", old, new)
    with pytest.raises(CheckpointError, match="is corrupt: its header"):
        read_meta(run)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run_model(run)
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(cfg_for("jit-tiny", "train.steps=6"), run, resume=True)


def png_claiming(path: Path, width: int, height: int) -> None:
    """A valid 8x8 PNG whose IHDR (CRC fixed up) claims width x height: a decompression bomb."""
    import struct
    import zlib
    Image.new("RGB", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


def test_a_decompression_bomb_names_the_file_and_the_setting(tmp_path):
    (tmp_path / "a").mkdir()
    png_claiming(tmp_path / "a" / "bomb.png", 100_000, 100_000)
    with pytest.raises(DataError, match=r"bomb\.png claims 100000x100000 pixels, over data\.max_image_pixels"):
        ImageFolderDataset(tmp_path, 16)[0]


def test_unreadable_files_are_replaced_by_the_next_of_their_class_up_to_the_cap(tmp_path, caplog):
    for i in range(3):
        write(tmp_path / "a" / f"{i}.png", Image.new("L", (16, 16), 40 * (i + 1)))
    write(tmp_path / "b" / "0.png", Image.new("L", (16, 16), 250))
    (tmp_path / "a" / "1.png").write_bytes(b"\x89PNG broken")            # index 1, class a
    ds = ImageFolderDataset(tmp_path, 16, max_bad_images=1)
    img, label = ds[1]
    assert label == 0 and torch.equal(img, ds[2][0])                     # the next image of class a
    assert torch.equal(ds[1][0], img)                                    # the same every time
    assert "1.png" in caplog.text and "skipping an unreadable image" in caplog.text
    (tmp_path / "a" / "2.png").write_bytes(b"\x89PNG broken too")
    with pytest.raises(DataError, match=r"2 unreadable image\(s\), over data.max_bad_images=1") as e:
        ImageFolderDataset(tmp_path, 16, max_bad_images=1)[1]
    assert "1.png" in str(e.value) and "2.png" in str(e.value) and "vco data check" in str(e.value)


def test_data_check_lists_every_bad_file_and_its_manifest_trains_without_them(tmp_path, capsys):
    root = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(3):
            write(root / c / f"{i}.png", Image.new("RGB", (20, 20), (i * 50, 0, 0)))
    (root / "a" / "broken.png").write_bytes(b"\x89PNG broken")
    png_claiming(root / "b" / "bomb.png", 100_000, 100_000)
    (root / "b" / "notes.txt").write_text("not an image")
    manifest = tmp_path / "manifest.json"
    assert main(["data", "check", str(root), "--manifest", str(manifest), "--workers", "2"]) == 1
    said = capsys.readouterr().out
    assert all(name in said for name in ("broken.png", "bomb.png", "notes.txt"))
    assert "6 readable images in 2 classes, 3 unreadable or not images" in said
    cfg = build_config("jit-tiny", overrides=["data.name=folder", f"data.path={root}",
                                              f"data.manifest={manifest}", "image_size=16"])
    from vco.data import build_dataset
    ds = build_dataset(cfg.data, 16, 2)
    assert len(ds) == 6 and not any("broken" in str(p) or "bomb" in str(p) for p, _ in ds.samples)
    other = tmp_path / "other"
    (other / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="lists .*data, not"):
        ImageFolderDataset(other, 16, manifest=manifest)
