"""The patch-seam ratio against hand-computed images."""
import pytest
import torch

from vco.eval.seams import patch_seam_ratio, seam_differences


def ramp(size: int = 8) -> torch.Tensor:
    """x[i, j] = i + j: every neighbour differs by exactly 1, borders or not."""
    i = torch.arange(size).double()
    return (i[:, None] + i[None, :]).expand(1, 1, size, size)


def test_a_seamless_ramp_reads_one():
    assert patch_seam_ratio(ramp(), 4) == 1.0


def test_a_checkerboard_of_patch_offsets_reads_two():
    # offsets +1 / -1 on a checkerboard of 4 x 4 patches: a border step is 1 - 2 = -1 where the
    # left (upper) patch is +1 and 1 + 2 = 3 where it is -1, half each: mean |.| 2; inside 1.
    b = torch.arange(8) // 4
    offsets = torch.where((b[:, None] + b[None, :]) % 2 == 0, 1.0, -1.0).double()
    assert patch_seam_ratio(ramp() + offsets, 4) == pytest.approx(2.0, abs=1e-12)
    across, inside = seam_differences(ramp() + offsets, 4)
    assert across.numel() == 2 * 8 * 1 and inside.numel() == 2 * 8 * 6    # 1 border, 6 inner pairs


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="N, C, H, W"):
        patch_seam_ratio(torch.zeros(8, 8), 4)
    with pytest.raises(ValueError, match="divide the image size"):
        patch_seam_ratio(ramp(), 3)
    with pytest.raises(ValueError, match="constant inside every patch"):
        patch_seam_ratio(torch.ones(1, 1, 8, 8), 4)
