"""Post-hoc EMA: the power-function profiles, their tracking, the least-squares reconstruction
(against an exactly derived error bound), and the run-level snapshots, resume and `vco ema`."""
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vco.train.posthoc_ema import (PowerEMA, gamma_to_sigma_rel, list_snapshots, profile_dot,
                                   reconstruct, residual_norm, save_snapshot, sigma_rel_to_gamma,
                                   solve_coefficients)


def test_sigma_rel_is_the_profiles_relative_standard_deviation():
    """gamma(sigma_rel) against the profile's moments integrated numerically, and EDM2's two
    default widths (0.05 -> 16.97, 0.10 -> 6.94)."""
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for sr in (0.02, 0.05, 0.1, 0.2, 0.28):
        g = sigma_rel_to_gamma(sr)
        tau = np.linspace(0, 1, 200_001)
        p = (g + 1) * tau ** g                        # the profile at t = 1
        mean = np.trapezoid(tau * p, tau)
        var = np.trapezoid((tau - mean) ** 2 * p, tau)
        assert math.sqrt(var) == pytest.approx(sr, rel=1e-5)
        assert gamma_to_sigma_rel(g) == pytest.approx(sr, rel=1e-12)
    with pytest.raises(ValueError, match="sigma_rel must be in"):
        sigma_rel_to_gamma(0.3)


@pytest.mark.parametrize("t_a, g_a, t_b, g_b", [(300, 6.9, 500, 17.0), (500, 17.0, 300, 6.9), (400, 3.0, 400, 9.0)])
def test_profile_inner_product_equals_quadrature(t_a, g_a, t_b, g_b):
    tau = np.linspace(0, min(t_a, t_b), 400_001)      # the product is 0 past the shorter profile
    p = lambda t, g: (g + 1) * tau ** g / t ** (g + 1)
    assert profile_dot(t_a, g_a, t_b, g_b) == pytest.approx(np.trapezoid(p(t_a, g_a) * p(t_b, g_b), tau), rel=1e-6)


class Weights(torch.nn.Module):
    """A 'model' whose parameter we set to a given trajectory, in float64."""
    def __init__(self, n):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))


def trajectory(steps, n=64, seed=0):
    """theta_k (k = 1..steps): a drift, a slow oscillation and step-to-step noise, per element."""
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(1, steps + 1, dtype=torch.float64)[:, None] / steps
    a, b, c = (torch.randn(3, n, generator=g, dtype=torch.float64))
    return a + b * k + 0.5 * torch.sin(7 * k + c) + 0.2 * torch.randn(steps, n, generator=g, dtype=torch.float64)


def track(thetas, sigma_rels, every):
    """Run power EMAs over the trajectory; snapshots {step: {sigma_rel: tensor}} every ``every``."""
    model = Weights(thetas.shape[1])
    emas = [PowerEMA(model, sr) for sr in sigma_rels]
    snaps = {}
    for k, theta in enumerate(thetas, 1):
        model.w.data.copy_(theta)
        for e in emas:
            e.update(model, k)
        if k % every == 0:
            snaps[k] = {e.sigma_rel: e.shadow["w"].clone() for e in emas}
    return snaps, emas


def test_power_ema_tracks_the_closed_form_average():
    """ema_k = sum_j theta_j (j^(g+1) - (j-1)^(g+1)) / k^(g+1): the profile's integral over the
    piecewise-constant trajectory."""
    thetas = trajectory(120, n=8)
    _, (ema,) = track(thetas, [0.1], every=1000)
    g = ema.gamma
    j = torch.arange(1, 121, dtype=torch.float64)
    weights = (j ** (g + 1) - (j - 1) ** (g + 1)) / 120 ** (g + 1)
    assert torch.allclose(ema.shadow["w"], (weights[:, None] * thetas).sum(0), rtol=1e-12, atol=1e-12)


def test_reconstruction_at_a_stored_width_and_step_is_that_snapshot(tmp_path):
    thetas = trajectory(600)
    snaps, _ = track(thetas, [0.05, 0.10], every=50)
    model = Weights(64)
    emas = [PowerEMA(model, sr) for sr in (0.05, 0.10)]
    for step, by_width in snaps.items():
        for e in emas:
            e.shadow["w"] = by_width[e.sigma_rel]
        save_snapshot(tmp_path, step, emas)
    for sr in (0.05, 0.10):
        weights, info = reconstruct(tmp_path, [sr])
        assert info["step"] == 600 and info["widths"][f"{sr:g}"]["residual_norm"] < 1e-6
        assert torch.allclose(weights[sr]["w"].double(), snaps[600][sr], rtol=1e-5, atol=1e-5)
    weights, _ = reconstruct(tmp_path, [0.05], step=300)
    assert torch.allclose(weights[0.05]["w"].double(), snaps[300][0.05], rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="no snapshot at step 320"):
        reconstruct(tmp_path, [0.05], step=320)


def step_weights(t, gamma, steps):
    """The weight of theta_k (k = 1..steps) in the power EMA at time t: the profile's mass on
    (k - 1, k], (min(k, t)^(g+1) - min(k-1, t)^(g+1)) / t^(g+1)."""
    k = torch.arange(1, steps + 1, dtype=torch.float64)
    return (k.clamp(max=t) ** (gamma + 1) - (k - 1).clamp(max=t) ** (gamma + 1)) / t ** (gamma + 1)


@pytest.mark.parametrize("target", [0.03, 0.07, 0.15])
def test_reconstruction_matches_a_directly_tracked_ema_within_the_derived_bound(target):
    """The error of every weight is exactly -sum_k R_k theta_k, R_k the residual profile
    p_target - sum_i c_i p_i integrated over step k; so |error| <= sum_k |R_k| |theta_k|. Both
    are checked against an EMA of the target width tracked directly, and the fit is checked to
    mean something: its residual mass sum |R_k| is far below that of the nearest stored width."""
    steps, every = 2000, 100
    thetas = trajectory(steps)
    snaps, _ = track(thetas, [0.05, 0.10], every)
    _, (direct,) = track(thetas, [target], every=10 ** 9)
    pairs = [(k, sr) for k in snaps for sr in (0.05, 0.10)]
    times, gammas = [k for k, _ in pairs], [sigma_rel_to_gamma(sr) for _, sr in pairs]
    stored = torch.stack([snaps[k][sr] for k, sr in pairs])
    gamma = sigma_rel_to_gamma(target)
    c = solve_coefficients(times, gammas, steps, gamma)
    rec = (torch.from_numpy(c)[:, None] * stored).sum(0)
    residual = step_weights(steps, gamma, steps) - sum(
        float(ci) * step_weights(t, g, steps) for ci, t, g in zip(c, times, gammas))
    err = rec - direct.shadow["w"]
    assert torch.allclose(err, -(residual @ thetas), atol=1e-9)
    assert bool((err.abs() <= residual.abs() @ thetas.abs() + 1e-9).all())
    nearest = 0.05 if abs(target - 0.05) < abs(target - 0.10) else 0.10
    naive = step_weights(steps, gamma, steps) - step_weights(steps, sigma_rel_to_gamma(nearest), steps)
    assert float(residual.abs().sum()) < 0.1 * float(naive.abs().sum())
    assert float(err.abs().max()) < 0.5 * float((snaps[steps][nearest] - direct.shadow["w"]).abs().max())


def tiny_posthoc_args(steps):
    return ["--set", "batch_size=4", "synthetic_size=32", "image_size=8", "hidden_size=32", "depth=2",
            "num_heads=2", "bottleneck_dim=8", "in_context_len=2", "in_context_start=1", "precision=fp32",
            "posthoc_ema=true", "posthoc_ema_every=2", "ckpt_every=3", "log_every=1", f"train.steps={steps}"]


def test_resume_keeps_the_snapshot_sequence_exact_and_vco_ema_reads_it(tmp_path, capsys):
    from vco.cli import main
    from vco.train import load_run_model
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert main(["train", "--preset", "jit-tiny", "--data", "synthetic", "--out", str(full), "--quiet",
                 *tiny_posthoc_args(8)]) == 0
    assert "post-hoc EMA: widths 0.05, 0.1 saved every 2 steps" in capsys.readouterr().out
    assert main(["train", "--preset", "jit-tiny", "--data", "synthetic", "--out", str(parts), "--quiet",
                 *tiny_posthoc_args(5)]) == 0
    assert main(["train", "--resume", str(parts), "--quiet", "--set", "train.steps=8"]) == 0
    steps = [s.step for s in list_snapshots(full)]
    assert steps == [2, 4, 6, 8] == [s.step for s in list_snapshots(parts)]
    for s in steps:
        a = load_file(str(full / "posthoc_ema" / f"snapshot-{s:07d}.safetensors"))
        b = load_file(str(parts / "posthoc_ema" / f"snapshot-{s:07d}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # vco ema: a stored width at the last snapshot gives back that power EMA
    out = tmp_path / "ema"
    assert main(["ema", "--run", str(full), "--sigma-rel", "0.1", "0.07", "--out", str(out)]) == 0
    model, cfg, meta = load_run_model(out / "sigma_rel-0.100")
    last = load_file(str(full / "posthoc_ema" / "snapshot-0000008.safetensors"))
    for n, p in model.named_parameters():
        assert torch.allclose(p, last[f"sigma_rel=0.1000/{n}"], rtol=1e-4, atol=1e-5)
    assert meta["posthoc_ema"]["sigma_rel"] == 0.1 and meta["step"] == 8
    assert main(["sample", "--run", str(out / "sigma_rel-0.070"), "--num", "4", "--steps", "2",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert main(["sample", "--run", str(out / "sigma_rel-0.070"), "--weights", "model", "--num", "4",
                 "--out", str(tmp_path / "grid2.png")]) == 2
    assert "holds only the ema1 weights" in capsys.readouterr().err


def test_a_run_without_snapshots_says_how_to_get_them(tmp_path):
    with pytest.raises(Exception, match="train.posthoc_ema=true"):
        reconstruct(tmp_path, [0.1])


def test_eval_ema_sweep_scores_every_width_and_scale(tmp_path, capsys):
    import json
    from vco.cli import main
    from vco.eval.inception import default_weights_path
    if not default_weights_path().is_file():
        pytest.skip("Inception weights not installed")
    run, ref = tmp_path / "run", tmp_path / "ref.npz"
    small = tiny_posthoc_args(4)
    assert main(["train", "--preset", "jit-tiny", "--data", "synthetic", "--out", str(run), "--quiet", *small]) == 0
    assert main(["eval", "ref", "--data", "synthetic", "--num", "20", "--out", str(ref), *small[:-6]]) == 0
    assert main(["eval", "--run", str(run), "--ref", str(ref), "--num", "10", "--steps", "1",
                 "--ema-sweep", "0.05:0.1:0.05", "--cfg-sweep", "1.0:2.0:1.0"]) == 0
    results = json.loads((run / "eval" / "ema_sweep_n10_s1.json").read_text())
    assert sorted((r["posthoc_ema"]["sigma_rel"], r["settings"]["cfg"]) for r in results) == \
        [(0.05, 1.0), (0.05, 2.0), (0.1, 1.0), (0.1, 2.0)]
    table = (run / "eval" / "ema_sweep_n10_s1.md").read_text()
    assert "| 0.05 |" in table and "FID (w = 2)" in table
    assert (run / "eval" / "ema_sweep_n10_s1.png").is_file()
    assert (run / "eval" / "samples_sigma_rel0.05_cfg2.png").is_file()        # a grid per width and w
    assert (run / "eval" / "samples_sigma_rel0.1_cfg1.png").is_file()
