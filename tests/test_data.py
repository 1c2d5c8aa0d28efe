"""Data: deterministic batches, ADM crop, image folders, Fashion-MNIST, synthetic shapes."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vco.config import DataConfig
from vco.data import (BatchSchedule, DataError, ImageFolderDataset, build_dataset, make_synthetic,
                      to_model_range, to_uint8)
from vco.data.fashion_mnist import fashion_mnist_dir
from vco.data.folder import center_crop_arr


def test_schedule_covers_each_epoch_once_and_is_deterministic():
    s = BatchSchedule(20, 4, seed=3)
    epoch0 = torch.cat([s.global_indices(k) for k in range(5)])
    assert sorted(epoch0.tolist()) == list(range(20))
    epoch1 = torch.cat([s.global_indices(k) for k in range(5, 10)])
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(BatchSchedule(20, 4, seed=3).global_indices(7), s.global_indices(7))
    # micro-batches of all ranks tile the global batch
    parts = [s.micro_batch(2, m, 2, r, 2) for m in range(2) for r in range(2)]
    assert sum(parts, []) == s.global_indices(2).tolist()


def test_schedule_rejects_tiny_dataset():
    with pytest.raises(DataError, match="fewer than one global batch"):
        BatchSchedule(3, 8)  # 3 images, global batch 8


def test_adm_center_crop_size_and_content():
    arr = np.zeros((300, 500, 3), np.uint8)
    arr[:, 250:] = 255                                    # right half white
    out = np.asarray(center_crop_arr(Image.fromarray(arr), 64))
    assert out.shape == (64, 64, 3)
    assert out[:, :28].max() < 30 and out[:, 36:].min() > 225


def test_synthetic_classes_are_distinct():
    ds = make_synthetic(40, 16, num_classes=10)
    means = torch.stack([torch.stack([ds[i][0].float().mean((1, 2)) for i in range(len(ds))
                                      if ds[i][1] == k]).mean(0) for k in range(10)])
    assert torch.cdist(means, means).add(torch.eye(10) * 1e3).min() > 1.0
    assert len(set(ds.class_names)) == 10


@pytest.mark.skipif(not fashion_mnist_dir().is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist():
    ds = build_dataset(DataConfig(name="fashion-mnist-test"), 32, 10)
    img, label = ds[0]
    assert len(ds) == 10_000 and img.shape == (3, 32, 32) and img.dtype == torch.uint8
    assert torch.equal(img[0], img[1]) and 0 <= label < 10
    assert ds.class_names[9] == "Ankle boot"


def test_fashion_mnist_missing_path(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_dataset(DataConfig(name="fashion-mnist", path=str(tmp_path / "x")), 32, 10)


def test_pixel_range_round_trip():
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_model_range(images)
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1
    assert torch.equal(x, images.float() / 127.5 - 1)
    assert torch.equal(to_uint8(x), images)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))
    floats = torch.zeros(2)
    to_model_range(floats)
    assert torch.equal(floats, torch.zeros(2))                     # the input is never changed
