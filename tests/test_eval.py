"""Evaluation: the per-class label schedule, rank-split generation, the eval commands."""
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vco.config import build_config
from vco.eval.evaluate import generate_share, per_class_labels, rank_slice
from vco.eval.inception import default_weights_path
from vco.models import build_model


def test_per_class_labels_are_exact():
    labels = per_class_labels(50, 10)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 5))
    assert torch.equal(labels, labels.sort().values)
    with pytest.raises(ValueError, match="multiple of the 10 classes"):
        per_class_labels(55, 10)


def test_rank_slices_tile_the_range():
    covered = sum((list(range(101))[rank_slice(101, r, 4)] for r in range(4)), [])
    assert covered == list(range(101))


def tiny_model():
    cfg = build_config("jit-tiny", overrides=["image_size=8", "patch_size=4", "hidden_size=32",
                                               "depth=2", "num_heads=2", "bottleneck_dim=8",
                                               "in_context_len=2", "in_context_start=1",
                                               "sampler.steps=3", "cfg=2.0", "precision=fp32"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():   # non-zero heads so that the images depend on the noise
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.3)
    return model, cfg


def _worker(rank, world, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, cfg = tiny_model()
    labels = per_class_labels(20, 10)
    share, images = generate_share(model, cfg, labels, seed=3, batch_size=3, device="cpu",
                                   progress=False)
    parts = [None] * world
    dist.all_gather_object(parts, images.numpy())
    if rank == 0:
        np.save(out_file, np.concatenate(parts))
    dist.destroy_process_group()


def test_two_process_generation_equals_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "two.npy")), nprocs=2)
    model, cfg = tiny_model()
    _, single = generate_share(model, cfg, per_class_labels(20, 10), seed=3, batch_size=7,
                               device="cpu", progress=False)
    two = np.load(tmp_path / "two.npy")
    assert two.shape == (20, 3, 8, 8)
    assert np.array_equal(two, single.numpy())
    assert len(np.unique(two.reshape(20, -1), axis=0)) == 20       # different noise per sample


def test_each_sample_noise_comes_from_its_own_mixed_seed():
    from vco.diffusion import initial_noise
    from vco.diffusion.randomness import noise_seed, sample_seed
    from vco.sampling import sample_noise
    model, _ = tiny_model()
    noise = sample_noise(model, range(5, 8), seed=3, device="cpu")
    g = torch.Generator().manual_seed(noise_seed(3, 6))
    alone = initial_noise(model.stream_shapes(1), g, "cpu")
    assert all(torch.equal(n[1:2], a) for n, a in zip(noise, alone))       # index 6 alone = in a batch
    assert len({noise_seed(s, i) for s in range(3) for i in range(100)}) == 300
    assert noise_seed(3, 6) not in {sample_seed(3, step, 6) for step in range(1000)}


@pytest.mark.skipif(not default_weights_path().is_file(), reason="Inception weights not installed")
def test_eval_commands_end_to_end(tmp_path, capsys):
    from vco.cli import main
    small = ["--set", "batch_size=8", "synthetic_size=40", "image_size=16", "hidden_size=32",
             "depth=2", "num_heads=2", "bottleneck_dim=8", "in_context_len=2",
             "in_context_start=1", "precision=fp32"]
    run = tmp_path / "run"
    assert main(["train", "--preset", "jit-tiny", "--data", "synthetic", "--steps", "2",
                 "--out", str(run), "--quiet", *small]) == 0
    ref = tmp_path / "ref.npz"
    assert main(["eval", "ref", "--data", "synthetic", "--num", "20", "--out", str(ref), *small]) == 0
    assert main(["eval", "--run", str(run), "--ref", str(ref), "--num", "10", "--steps", "2",
                 "--cfg", "1.5"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("fid=")
    record = json.loads(next((run / "eval").glob("eval_*.json")).read_text())
    assert record["settings"]["cfg"] == 1.5 and record["settings"]["num"] == 10
    assert 0 <= record["precision"] <= 1 and record["fid"] > 0
    assert (run / "eval" / "samples_cfg1.5.png").is_file()
    # ... and to the run's TensorBoard, at the checkpoint's step, with its sample grid
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = [EventAccumulator(str(p)) for p in sorted((run / "tb").glob("events.*"))]
    for acc in events:
        acc.Reload()
    fid = [(e.step, e.value) for acc in events if "eval/fid" in acc.Tags()["scalars"] for e in acc.Scalars("eval/fid")]
    assert fid == [(2, pytest.approx(record["fid"], rel=1e-6))]
    assert any("eval/samples_cfg1.5" in acc.Tags()["images"] for acc in events)
    assert main(["eval", "fid", str(ref), str(ref)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("fid=") and abs(float(last[4:])) < 1e-3
    assert main(["eval", "--run", str(run), "--ref", str(ref), "--num", "10", "--steps", "1",
                 "--cfg-sweep", "1.0:2.0:1.0"]) == 0
    assert (run / "eval" / "sweep_n10_s1.png").is_file()
    assert main(["eval", "--run", str(run), "--ref", str(ref), "--num", "15"]) == 2
