"""Where and in which precision vco computes: device names and bf16 autocast."""
from __future__ import annotations

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
