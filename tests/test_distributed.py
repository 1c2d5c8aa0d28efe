"""torchrun training: 2 CPU processes (gloo) reach the same weights as 1 process accumulating
the same global batch, and only rank 0 writes the run."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from vco.train.checkpoint import load_tensors

SMALL = ["--set", "image_size=16", "hidden_size=32", "depth=3", "num_heads=2", "bottleneck_dim=8",
         "in_context_len=2", "in_context_start=1", "precision=fp32", "synthetic_size=64",
         "semantic_dim=32", "stats_images=16", "classes_per_batch=2", "batch_size=8", "log_every=1",
         "warmup_steps=0", "ckpt_every=100", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(out, nproc, *extra):
    args = ["-m", "vco.cli", "train", "--preset", "vco-tiny", "--data", "synthetic", "--steps", "3",
            "--out", str(out), *SMALL, *extra]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
                *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_two_ranks_equal_one_rank_with_accumulation(tmp_path):
    # V-Co with CFG drops, flips, class-balanced micro-batches and the hybrid loss (per micro-batch)
    out2 = train(tmp_path / "two", 2)
    train(tmp_path / "one", 1, "--set", "grad_accum=2")
    assert out2.count("trained 3 steps") == 1                       # rank 0 alone reports
    a, b = load_tensors(tmp_path / "two"), load_tensors(tmp_path / "one")
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        if k.startswith(("model/", "ema1/", "ema2/")):
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
            moved += 1
    assert moved > 0
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3                                           # one writer


def test_fsdp_equals_one_process_and_resumes_exactly(tmp_path):
    """FSDP2 (sharded parameters, EMAs and optimizer state): same weights as one process, and a
    run stopped at step 2 and resumed to 3 equals the uninterrupted run bitwise."""
    fsdp = ["--set", "parallel=fsdp"]
    train(tmp_path / "fsdp", 2, *fsdp)
    train(tmp_path / "one", 1, "--set", "grad_accum=2")
    a, b = load_tensors(tmp_path / "fsdp"), load_tensors(tmp_path / "one")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k
    args = ["-m", "vco.cli", "train", "--preset", "vco-tiny", "--data", "synthetic", "--steps", "2",
            "--out", str(tmp_path / "part"), *SMALL, *fsdp]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    r = subprocess.run([sys.executable, *launcher, f"--master_port={free_port()}", *args],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, *launcher, f"--master_port={free_port()}", "-m", "vco.cli", "train",
                        "--resume", str(tmp_path / "part"), "--steps", "3", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    c = load_tensors(tmp_path / "part")
    for k in a:
        assert torch.equal(a[k], c[k]), k
