import pytest
import torch

# Denormal floats make CPU kernels crawl; tiny random models produce them.
torch.set_flush_denormal(True)


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
