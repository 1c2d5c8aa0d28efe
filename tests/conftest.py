import os

# Nothing in the suite touches the network: the Hub library reads only its cache (tests build one
# by hand), W&B logs to local files. Set before any test module imports huggingface_hub or wandb.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

import pytest  # noqa: E402
import torch  # noqa: E402

# Denormal floats make CPU kernels crawl; tiny random models produce them.
torch.set_flush_denormal(True)

# VCO_TEST_DEVICE=cuda runs the tests marked `device` (tests/test_device.py) on the GPU; the rest
# of the suite is unaffected. cuBLAS reads this before its first handle: set it here, before any
# test touches CUDA, so that tests may switch on deterministic algorithms.
TEST_DEVICE = os.environ.get("VCO_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cuda":
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture
def device() -> torch.device:
    """The device of the tests marked `device`: the CPU, or the GPU when VCO_TEST_DEVICE=cuda
    (skipped without CUDA). On the GPU, fp32 means fp32: TF32 is off for matmuls and cuDNN."""
    if TEST_DEVICE not in ("cpu", "cuda"):
        raise pytest.UsageError(f"VCO_TEST_DEVICE must be cpu or cuda, got {TEST_DEVICE!r}")
    if TEST_DEVICE == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("VCO_TEST_DEVICE=cuda but CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.device(TEST_DEVICE)


@pytest.fixture
def tiny_cfg():
    """A very small JiT config for fast CPU tests (16x16 images, 4x4 token grid)."""
    from vco.config import build_config
    return build_config("jit-tiny", overrides=[
        "image_size=16", "hidden_size=64", "depth=3", "num_heads=4", "bottleneck_dim=16",
        "in_context_len=4", "in_context_start=1", "num_classes=10", "precision=fp32"])

# The test models are tiny: one thread is as fast, and immune to OpenMP spin-waiting when
# another process shares the two cores.
torch.set_num_threads(1)
