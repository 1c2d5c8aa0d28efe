"""Tests for vco.eval metrics, reference I/O and the FID Inception wrapper.

The Inception tests run the real TF-2015 graph on CPU (~3-11 img/s on 2 cores), so they use
small real Fashion-MNIST sets (24 images each, 7 sets) and skip when the weights or data are
absent.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vco.eval import metrics as M
from vco.eval.metrics import (
    frechet_distance,
    frechet_distance_from_feats,
    inception_score,
    kid,
    precision_recall,
    stats,
)
from vco.eval.reference import load_images_source, load_reference, save_reference

FMNIST_TRAIN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


# ------------------------------------------------------------------------------------------------
# Fréchet distance


def _random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_diagonal_closed_form(method):
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_commuting_closed_form(method):
    rng = np.random.default_rng(1)
    d = 24
    q = _random_rotation(d, rng)
    l1, l2 = rng.uniform(0.05, 3.0, d), rng.uniform(0.05, 3.0, d)
    sigma1, sigma2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(l1 + l2 - 2 * np.sqrt(l1 * l2))
    assert frechet_distance(mu1, sigma1, mu2, sigma2, method=method) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_identical_stats_is_zero(method):
    rng = np.random.default_rng(2)
    mu, sigma = stats(rng.normal(size=(500, 32)) * rng.uniform(0.2, 2.0, 32))
    assert abs(frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-8


def test_frechet_distance_rank_deficient_is_stable():
    """N=20 < D=96: singular covariances; both methods finite and agreeing, self ~ 0."""
    rng = np.random.default_rng(3)
    f1 = rng.normal(size=(20, 96)) * rng.uniform(0.1, 3.0, 96)
    f2 = rng.normal(size=(20, 96)) + 0.5
    (mu1, s1), (mu2, s2) = stats(f1), stats(f2)
    assert np.linalg.matrix_rank(s1) < 96
    by_eigh = frechet_distance(mu1, s1, mu2, s2, method="eigh")
    by_sqrtm = frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
    by_feats = frechet_distance_from_feats(f1, f2)
    assert np.isfinite(by_eigh) and by_eigh > 0
    assert by_sqrtm == pytest.approx(by_eigh, rel=1e-5)
    assert by_feats == pytest.approx(by_eigh, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1, method="eigh") == pytest.approx(0.0, abs=1e-9)
    assert abs(frechet_distance(mu1, s1, mu1, s1, method="sqrtm")) < 1e-4
    assert frechet_distance_from_feats(f1, f1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_bad_shapes_and_method():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="unknown method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


def test_stats_matches_numpy():
    feats = np.random.default_rng(4).normal(size=(50, 6))
    mu, sigma = stats(feats)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(sigma, np.cov(feats.T))
    with pytest.raises(ValueError, match="at least 2"):
        stats(feats[:1])


# ------------------------------------------------------------------------------------------------
# Inception score


def test_inception_score_uniform_is_one():
    mean, std = inception_score(np.full((40, 10), 0.1), splits=4)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_one_hot_equals_num_classes():
    probs = np.eye(8)[np.arange(40) % 8]  # 40 confident predictions cycling through 8 classes
    mean, std = inception_score(probs, splits=5)  # each split of 8 rows holds every class once
    assert mean == pytest.approx(8.0) and std == pytest.approx(0.0, abs=1e-9)
    mean_logits, _ = inception_score(probs * 50.0, splits=5)  # logits, auto-detected
    assert mean_logits == pytest.approx(8.0, rel=1e-6)


def test_inception_score_hand_computed_two_class():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    py = probs.mean(0)
    expected = np.exp(np.mean(np.sum(probs * np.log(probs / py), axis=1)))
    assert inception_score(probs, splits=1)[0] == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------
# Precision / recall


def _brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def dists(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    r_real = np.sort(dists(real, real), axis=1)[:, k]
    r_fake = np.sort(dists(fake, fake), axis=1)[:, k]
    precision = (dists(fake, real) <= r_real[None]).any(1).mean()
    recall = (dists(real, fake) <= r_fake[None]).any(1).mean()
    return precision, recall


def test_precision_recall_identical_and_shifted():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(400, 32))
    p, r = precision_recall(real, real.copy(), k=3, chunk=128)
    assert p == 1.0 and r == 1.0
    other = rng.normal(size=(400, 32))
    p_same, r_same = precision_recall(real, other, k=3)
    assert p_same > 0.5 and r_same > 0.5  # ~0.7 for k=3 in 32 dims
    p_shift, r_shift = precision_recall(real, other + 1.5, k=3)
    assert p_shift < 0.1 and r_shift < 0.1


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(120, 8))
    fake = rng.normal(size=(90, 8)) * 1.3 + 0.4
    got = precision_recall(real, fake, k=4, chunk=32)  # several chunks per set
    assert got == pytest.approx(_brute_force_pr(real, fake, 4), abs=1e-12)


# ------------------------------------------------------------------------------------------------
# KID


def test_mmd2_unbiased_matches_double_loop():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 5
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert M._mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy)


def test_kid_same_vs_shifted():
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(300, 64)), rng.normal(size=(300, 64))
    same_mean, same_std = kid(real, fake, subsets=20, subset_size=1000)  # clipped to 300
    shift_mean, _ = kid(real, fake + 0.5, subsets=20, subset_size=200)
    assert abs(same_mean) < 0.01
    assert shift_mean > 10 * max(abs(same_mean), same_std)


# ------------------------------------------------------------------------------------------------
# Reference statistics and image sources


def test_save_load_reference_roundtrip(tmp_path):
    feats = np.random.default_rng(9).normal(size=(10, 4))
    mu, sigma = stats(feats)
    path = save_reference(tmp_path / "ref", mu, sigma, feats=feats)
    assert path.suffix == ".npz"
    ref = load_reference(path)
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma, sigma)
    np.testing.assert_array_equal(ref.feats, feats)
    assert ref.images is None


def test_load_reference_adm_and_jit_layouts(tmp_path):
    rng = np.random.default_rng(10)
    mu, sigma = rng.normal(size=4), np.eye(4)
    images = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    adm = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(adm, arr_0=images, mu=mu, sigma=sigma, mu_s=mu[:2], sigma_s=np.eye(2))
    ref = load_reference(adm, load_images=True)
    np.testing.assert_array_equal(ref.mu, mu)
    assert ref.images.shape == (3, 3, 8, 8) and ref.images.dtype == np.uint8
    np.testing.assert_array_equal(ref.images, images.transpose(0, 3, 1, 2))
    assert set(ref.extras) == {"mu_s", "sigma_s"}
    assert load_reference(adm).images is None

    jit = tmp_path / "jit_in256_stats.npz"
    np.savez(jit, mu=mu, sigma=sigma)
    ref = load_reference(jit)
    assert ref.feats is None and ref.images is None
    np.testing.assert_array_equal(ref.sigma, sigma)


def test_load_reference_from_features_only(tmp_path):
    feats = np.random.default_rng(11).normal(size=(20, 3))
    np.savez(tmp_path / "f.npz", features=feats)
    ref = load_reference(tmp_path / "f.npz")
    np.testing.assert_allclose(ref.mu, feats.mean(0))


def test_load_reference_unusable_file_names_keys(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(2))
    with pytest.raises(ValueError, match=r"bad\.npz.*keys found: \['arr_0', 'labels'\]"):
        load_reference(bad)


def test_load_images_source_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(12)
    (tmp_path / "sub").mkdir()
    a = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a[..., 0]).save(tmp_path / "sub" / "b.PNG")  # grayscale -> RGB
    Image.fromarray(a).save(tmp_path / "sub" / "c.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    images = load_images_source(tmp_path)
    assert images.shape == (3, 3, 6, 5) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], a.transpose(2, 0, 1))
    np.testing.assert_array_equal(images[1], np.repeat(a[None, ..., 0], 3, 0))

    Image.fromarray(np.zeros((7, 5, 3), np.uint8)).save(tmp_path / "d.webp")
    with pytest.raises(ValueError, match="same size"):
        load_images_source(tmp_path)


def test_load_images_source_npz_layouts(tmp_path):
    rng = np.random.default_rng(13)
    nhwc = rng.integers(0, 256, size=(4, 9, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "nhwc.npz", arr_0=nhwc)
    np.savez(tmp_path / "nchw.npz", images=nhwc.transpose(0, 3, 1, 2))
    for name in ("nhwc.npz", "nchw.npz"):
        np.testing.assert_array_equal(load_images_source(tmp_path / name), nhwc.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "float.npz", arr_0=nhwc.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_images_source(tmp_path / "float.npz")
    np.savez(tmp_path / "none.npz", x=nhwc)
    with pytest.raises(ValueError, match="no image array"):
        load_images_source(tmp_path / "none.npz")


# ------------------------------------------------------------------------------------------------
# Inception (real weights)


def test_nv_bilinear_resize_is_tf_legacy_convention():
    """Output pixel i samples source coordinate i * W / size (border-clamped)."""
    from vco.eval.inception import nv_bilinear_resize

    ramp = torch.arange(4, dtype=torch.float32).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    out = nv_bilinear_resize(ramp, size=8)
    expected = torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3])  # 3.5 clamps to the border (3)
    torch.testing.assert_close(out[0, 0, 0], expected)


def test_preprocess_range_and_no_resize_at_299():
    from vco.eval.inception import preprocess

    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8)
    torch.testing.assert_close(preprocess(x), (x.float() - 128) / 128)
    y = preprocess(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
    assert y.shape == (1, 3, 299, 299)
    assert y.min().item() == -1.0 and y.max().item() == 0.9921875
    with pytest.raises(TypeError, match="uint8"):
        preprocess(x.float())


def test_batched_rebatches_iterables():
    from vco.eval.inception import batched

    singles = [np.full((1, 4, 4), i, np.uint8) for i in range(7)]
    sizes = [b.shape for b in batched(singles, batch_size=3, progress=False)]
    assert sizes == [(3, 3, 4, 4), (3, 3, 4, 4), (1, 3, 4, 4)]
    chunks = [np.zeros((5, 3, 4, 4), np.uint8), np.zeros((2, 3, 4, 4), np.uint8)]
    assert [b.shape[0] for b in batched(iter(chunks), batch_size=4, progress=False)] == [4, 3]


@pytest.fixture(scope="module")
def inception():
    from vco.eval.inception import InceptionFeatures

    try:
        return InceptionFeatures("cpu")
    except FileNotFoundError as err:
        pytest.skip(f"FID Inception weights unavailable: {err}")


def _read_idx_images(path: Path) -> np.ndarray:
    """Fashion-MNIST IDX3 gz -> uint8 (N, 28, 28)."""
    with gzip.open(path) as f:
        data = f.read()
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)


def _noisy(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).round().astype(np.uint8)


def _blurred(images: np.ndarray, radius: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    blur = ImageFilter.GaussianBlur(radius)
    return np.stack([np.asarray(Image.fromarray(im).filter(blur)) for im in images])


@pytest.fixture(scope="module")
def fmnist_feats(inception):
    """Inception features (24, 2048) of real Fashion-MNIST sets A, B and degraded copies of B."""
    if not FMNIST_TRAIN.is_file():
        pytest.skip(f"Fashion-MNIST not found at {FMNIST_TRAIN} (apt-get install dataset-fashion-mnist)")
    n = 24  # FID at n=24 is heavily biased (~170 for real vs real) but the ordering holds
    images = _read_idx_images(FMNIST_TRAIN)
    a, b = images[:n], images[n : 2 * n]
    rng = np.random.default_rng(0)
    sets = {"A": a, "B": b}
    sets.update({f"noise{s}": _noisy(b, s, rng) for s in (15, 40, 80)})
    sets.update({f"blur{r}": _blurred(b, r) for r in (1, 2)})
    # grayscale (N, 1, 28, 28) input: replicated to 3 channels inside InceptionFeatures
    return {k: inception.extract(v[:, None], batch_size=32, progress=False) for k, v in sets.items()}


def test_inception_features_shape_and_gray_replication(inception):
    gray = np.random.default_rng(14).integers(0, 256, (2, 1, 20, 20), dtype=np.uint8)
    feats = inception.features(gray)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, inception.features(np.repeat(gray, 3, axis=1)))
    assert (feats >= 0).all()  # pool of ReLU outputs


def test_inception_logits_unavailable(inception):
    from vco.eval.inception import InceptionScoreUnavailable

    with pytest.raises(InceptionScoreUnavailable, match="classifier head"):
        inception.logits(np.zeros((1, 3, 8, 8), np.uint8))


def test_fid_self_is_zero_and_routes_agree(fmnist_feats):
    a, b = fmnist_feats["A"], fmnist_feats["B"]
    assert abs(frechet_distance_from_feats(a, a)) < 1e-3
    # stats route on the first 256 channels: LAPACK eigh at D=2048 takes seconds to a minute on a
    # busy 2-core box (BLAS threads oversubscribed); the rank-deficient (N=24 < D) case is the same
    a, b = a[:, :256], b[:, :256]
    (mu_a, s_a), (mu_b, s_b) = stats(a), stats(b)
    assert abs(frechet_distance(mu_a, s_a, mu_a, s_a)) < 1e-3
    full = frechet_distance(mu_a, s_a, mu_b, s_b)
    assert full > 1.0
    assert full == pytest.approx(frechet_distance_from_feats(a, b), rel=1e-6)


def test_fid_orders_noise_and_blur(fmnist_feats):
    fid = {k: frechet_distance_from_feats(fmnist_feats["A"], f) for k, f in fmnist_feats.items() if k != "A"}
    assert fid["B"] < fid["noise15"] < fid["noise40"] < fid["noise80"], fid
    assert fid["B"] < fid["blur1"] < fid["blur2"], fid


def test_kid_and_precision_recall_on_inception_features(fmnist_feats):
    a, b, noisy = fmnist_feats["A"], fmnist_feats["B"], fmnist_feats["noise80"]
    assert kid(a, b, subsets=10)[0] < kid(a, noisy, subsets=10)[0]
    p_real, _ = precision_recall(a, b, k=3)
    p_noisy, _ = precision_recall(a, noisy, k=3)
    assert p_noisy < p_real
