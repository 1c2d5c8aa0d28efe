"""vco's Frechet distance against an independent implementation and exact references.

The independent implementation is torchmetrics' ``_compute_fid(mu1, sigma1, mu2, sigma2)`` (the
function behind ``torchmetrics.image.fid.FrechetInceptionDistance``): ``tr sqrt(S1 S2)`` as the
sum of the real parts of the complex square roots of ``eigvals(S1 @ S2)``, a different route from
both of vco's (symmetric eigendecompositions, ``method="eigh"``; scipy's Schur ``sqrtm``,
``method="sqrtm"``). Exact references are computed in 30-digit arithmetic with mpmath (covariances
built from the features in mpmath, so a rank-deficient one is exactly rank-deficient), or in closed
form for diagonal covariances: ``FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2``.
"""
import functools

import mpmath
import numpy as np
import pytest
import torch
from torchmetrics.image.fid import _compute_fid

from vco.eval.metrics import frechet_distance, stats

METHODS = ["eigh", "sqrtm"]
REL = 1e-6


def torchmetrics_fd(mu1, sigma1, mu2, sigma2) -> float:
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    return float(_compute_fid(as_t(mu1), as_t(sigma1), as_t(mu2), as_t(sigma2)))


def rel(a, b):
    return abs(a - b) / abs(b)


def mp_stats(feats):
    """Mean and unbiased covariance of (N, D) features, exactly (mpmath, no float rounding)."""
    f = mpmath.matrix(feats.tolist())
    n, d = f.rows, f.cols
    mu = [mpmath.fsum(f[i, j] for i in range(n)) / n for j in range(d)]
    a = mpmath.matrix(n, d)
    for i in range(n):
        for j in range(d):
            a[i, j] = f[i, j] - mu[j]
    return mu, (a.T * a) / (n - 1)


def mp_fd(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 sum Re sqrt(eig(S1 S2)), in 30 digits."""
    d = s1.rows
    tr_root = mpmath.fsum(mpmath.re(mpmath.sqrt(e)) for e in mpmath.eig(s1 * s2, left=False, right=False))
    return float(mpmath.fsum((mu1[j] - mu2[j]) ** 2 for j in range(d))
                 + mpmath.fsum(s1[i, i] + s2[i, i] for i in range(d)) - 2 * tr_root)


def exact_fd_of_features(f1, f2) -> float:
    with mpmath.workdps(30):
        return mp_fd(*mp_stats(f1), *mp_stats(f2))


def exact_fd_of_matrices(mu1, s1, mu2, s2) -> float:
    """Exact FD of the given float64 matrices themselves (taken as exact numbers)."""
    with mpmath.workdps(30):
        m = lambda a: mpmath.matrix(np.asarray(a).tolist())
        return mp_fd(list(mu1), m(s1), list(mu2), m(s2))


def spd(d, condition, rng):
    """A random symmetric positive definite matrix with eigenvalues from 1 down to 1/condition."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = (q * np.logspace(0, -np.log10(condition), d)) @ q.T
    return (s + s.T) / 2


# ------------------------------------------------------------------------- (a) well-conditioned
@pytest.mark.parametrize("method", METHODS)
def test_well_conditioned_covariances(method):
    rng = np.random.default_rng(0)
    d = 32
    f1 = rng.normal(size=(400, d))
    f2 = rng.normal(size=(400, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)) * 1.5 + 0.5
    mu1, s1 = stats(f1)
    mu2, s2 = stats(f2)
    assert np.linalg.cond(s1) < 100 and np.linalg.cond(s2) < 100
    ours, ref = frechet_distance(mu1, s1, mu2, s2, method=method), torchmetrics_fd(mu1, s1, mu2, s2)
    assert ref > 1.0
    assert rel(ours, ref) <= REL


@pytest.mark.parametrize("method", METHODS)
def test_well_conditioned_small_case_equals_the_exact_value(method):
    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(40, 6)), rng.normal(size=(50, 6)) * 0.7 + 0.3
    exact = exact_fd_of_features(f1, f2)
    assert rel(frechet_distance(*stats(f1), *stats(f2), method=method), exact) <= 1e-9
    assert rel(torchmetrics_fd(*stats(f1), *stats(f2)), exact) <= 1e-9


@pytest.mark.parametrize("method", METHODS)
def test_diagonal_covariances_equal_the_closed_form(method):
    """Diagonal S1, S2 commute: tr sqrt(S1 S2) = sum sqrt(a_i b_i), so FD = |dmu|^2 +
    sum (sqrt a_i - sqrt b_i)^2. Zero and tiny variances included (singular, ill-conditioned)."""
    a = np.array([1.0, 0.25, 4.0, 1e-12, 0.0, 0.0, 2.0, 9.0])
    b = np.array([0.5, 0.25, 1e-10, 1.0, 0.0, 3.0, 2.0, 1e-14])
    mu1, mu2 = np.linspace(-1, 1, 8), np.linspace(1, -0.5, 8)
    closed = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    ours = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert rel(ours, closed) <= 1e-12
    assert rel(torchmetrics_fd(mu1, np.diag(a), mu2, np.diag(b)), closed) <= 1e-12


# ------------------------------------------------------------------------- (b) ill-conditioned
@functools.lru_cache(maxsize=None)
def ill_conditioned_case(condition):
    rng = np.random.default_rng(2)
    d = 10
    s1, s2 = spd(d, condition, rng), spd(d, condition, rng)
    mu1, mu2 = rng.normal(size=d) * 0.1, rng.normal(size=d) * 0.1
    return (mu1, s1, mu2, s2), exact_fd_of_matrices(mu1, s1, mu2, s2)


@pytest.mark.parametrize("condition", [1e8, 1e14, 1e18])
@pytest.mark.parametrize("method", METHODS)
def test_ill_conditioned_covariances(method, condition):
    """Near-singular SPD matrices (eigenvalues down to 1/condition, below float64's resolution
    of the largest one at 1e18): vco and torchmetrics both agree with the exact FD of these very
    matrices to ~1e-8 or better."""
    (mu1, s1, mu2, s2), exact = ill_conditioned_case(condition)
    ours, ref = frechet_distance(mu1, s1, mu2, s2, method=method), torchmetrics_fd(mu1, s1, mu2, s2)
    assert rel(ours, ref) <= REL
    assert rel(ours, exact) <= REL and rel(ref, exact) <= REL


@pytest.mark.parametrize("method", METHODS)
def test_nearly_collinear_features(method):
    """Two feature columns equal up to 1e-7 noise: a covariance with one eigenvalue ~1e-14
    relative to the others, from features as a real extractor could produce them."""
    rng = np.random.default_rng(3)
    d = 24

    def feats(n, shift):
        f = rng.normal(size=(n, d)) + shift
        f[:, -1] = f[:, -2] + 1e-7 * rng.normal(size=n)
        return f

    f1, f2 = feats(300, 0.0), feats(300, 0.2)
    mu1, s1 = stats(f1)
    mu2, s2 = stats(f2)
    assert np.linalg.cond(s1) > 1e12
    assert rel(frechet_distance(mu1, s1, mu2, s2, method=method), torchmetrics_fd(mu1, s1, mu2, s2)) <= REL


# ------------------------------------------------------------------- (c) fewer samples than dims
@pytest.mark.parametrize("n1,n2", [(20, 30), (30, 20), (15, 200), (200, 15)])
@pytest.mark.parametrize("method", METHODS)
def test_rank_deficient_covariances(method, n1, n2):
    """N < D: the covariance has rank N - 1, S1 S2 has D - rank zero eigenvalues that float
    arithmetic turns into tiny values of either sign (so their square roots go complex), and
    scipy's sqrtm meets a singular matrix."""
    rng = np.random.default_rng(4)
    d = 64
    f1, f2 = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) * 1.5 + 0.2
    mu1, s1 = stats(f1)
    mu2, s2 = stats(f2)
    assert np.linalg.matrix_rank(s1) == min(n1 - 1, d) and np.linalg.matrix_rank(s2) == min(n2 - 1, d)
    ours, ref = frechet_distance(mu1, s1, mu2, s2, method=method), torchmetrics_fd(mu1, s1, mu2, s2)
    assert rel(ours, ref) <= REL


@functools.lru_cache(maxsize=None)
def rank_deficient_case(n1, n2, d=10):
    rng = np.random.default_rng(5)
    f1, f2 = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) * 1.5 + 0.2
    return f1, f2, exact_fd_of_features(f1, f2)


@pytest.mark.parametrize("n1,n2", [(4, 6), (6, 4), (5, 30)])
@pytest.mark.parametrize("method", METHODS)
def test_rank_deficient_small_case_equals_the_exact_value(method, n1, n2):
    """Exact reference (30 digits, exactly rank-deficient covariances): every route, torchmetrics'
    too, is within ~1e-8 of it. vco's default eigh route zeroes the null eigenvalues of S1, so it
    is exact to rounding when S1 is the covariance of lower rank (n1 <= n2)."""
    f1, f2, exact = rank_deficient_case(n1, n2)
    ours, ref = frechet_distance(*stats(f1), *stats(f2), method=method), torchmetrics_fd(*stats(f1), *stats(f2))
    assert rel(ours, exact) <= REL and rel(ref, exact) <= REL
    if method == "eigh" and n1 <= n2:
        assert rel(ours, exact) <= 1e-12


def test_identical_rank_deficient_statistics_give_zero():
    """FD(P, P) = 0 exactly. vco's eigh route gives 0 to rounding; torchmetrics gives a small
    *negative* number (about -4e-6 here, for a trace of ~64): the square roots of the ~1e-16
    round-off eigenvalues of the null space of S S add up to ~1e-6. A relative comparison is
    meaningless at 0, so each is checked against the exact 0 on the scale of the traces: vco is
    the more accurate one here, and neither is off by more than 1e-6 of tr S."""
    rng = np.random.default_rng(6)
    mu, s = stats(rng.normal(size=(10, 64)))
    scale = np.trace(s)
    assert abs(frechet_distance(mu, s, mu, s)) <= 1e-12 * scale
    assert abs(torchmetrics_fd(mu, s, mu, s)) <= 1e-6 * scale
    assert abs(frechet_distance(mu, s, mu, s, method="sqrtm")) <= 1e-6 * scale


def test_eigh_route_is_exact_whichever_covariance_has_the_lower_rank():
    """FD is symmetric, so exactness should not depend on the argument order."""
    f1, f2, exact = rank_deficient_case(6, 4)             # S1 rank 5, S2 rank 3
    assert rel(frechet_distance(*stats(f1), *stats(f2)), exact) <= 1e-12
