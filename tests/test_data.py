"""Data: deterministic batches, ADM crop, image folders, Fashion-MNIST, synthetic shapes."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vco.config import DataConfig
from vco.data import BatchSchedule, DataError, ImageFolderDataset, build_dataset, make_synthetic
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
