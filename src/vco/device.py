"""Where and in which precision vco computes: device names, bf16 autocast, the CPU allocator."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' is the GPU when there is one, else the CPU; any other name is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX); without it bf16 is emulated and
    far slower than fp32 (measured 50x on an AVX2-only EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform says of it elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return model or platform.processor() or platform.machine()


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 on GPUs and on CPUs with native bf16, fp32 elsewhere."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16 or fp32, got '{precision}'")
    if precision == "auto":
        return "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """bf16 autocast when ``precision`` (resolved) is bf16; a no-op context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# glibc's mallopt parameters (malloc.h) and the values set: blocks up to 32 MiB (glibc's own ceiling
# for the threshold) come from the heap, and up to 2 GiB of free heap top stays mapped.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 2 ** 31 - 1
ALLOCATOR_ENV = "VCO_CPU_ALLOCATOR"      # "default" leaves the process's allocator as it is


def reuse_freed_memory() -> bool:
    """Let glibc keep freed large blocks for reuse instead of returning each to the OS.

    By default glibc gives every block over its mmap threshold (128 KiB, rising only as far as
    blocks are freed) fresh pages and unmaps them on free, so each training step page-faults its
    activations, weight casts and gradients in again: 50-60k faults a step for vco-b16 at batch 2,
    a quarter of its bf16 step time on a 2-core CPU. The numbers computed do not change, nor does the
    peak memory (the same blocks are reused). A no-op off glibc, or with VCO_CPU_ALLOCATOR=default
    (e.g. under a preloaded jemalloc/tcmalloc). Returns whether the setting was applied.
    """
    choice = os.environ.get(ALLOCATOR_ENV, "reuse")
    if choice not in ("reuse", "default"):
        raise ValueError(f"{ALLOCATOR_ENV} must be 'reuse' (keep freed memory for reuse) or 'default' "
                         f"(leave the allocator alone), got {choice!r}")
    if choice == "default":
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):   # not glibc (musl, macOS): nothing to tune
        mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
