"""benchmarks/loss_gradients.py: the per-term gradients it reports add up to the trainer's own."""
import importlib.util
from pathlib import Path

import torch

from vco.config import build_config
from vco.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("loss_gradients", ROOT / "benchmarks" / "loss_gradients.py")
loss_gradients = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loss_gradients)


def test_per_term_weight_gradients_sum_to_the_training_steps_gradient(tmp_path):
    cfg = build_config("vco-tiny", overrides=[
        "image_size=16", "hidden_size=32", "depth=2", "num_heads=2", "bottleneck_dim=8", "in_context_len=2",
        "in_context_start=1", "semantic_dim=32", "semantic.stats_images=16", "data.name=synthetic",
        "data.synthetic_size=32", "data.classes_per_batch=2", "train.batch_size=8", "train.precision=fp32"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.objective.train()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    with torch.no_grad():                      # non-zero heads: every term has a gradient
        for p in params:
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    rows, flat = loss_gradients.term_gradients(trainer)
    assert set(rows) == {"pix", "sem", "aux"} and rows["pix"]["cos_with_pix"] > 0.999
    # the same batch through the trainer's objective: its loss and gradient are the terms' sum
    images, labels = next(iter(trainer.loader(trainer.step, trainer.step + 1)))
    rng = trainer.streams(0)
    x, y, flipped = trainer.batch(images, labels, rng)
    f = trainer.semantic.targets(x, trainer.indices(0), flipped)
    total = trainer.objective(x, y, f, rng)
    assert abs(float(total["loss"]) - sum(r["weighted"] for r in rows.values())) < 1e-5
    grad = torch.cat([g.flatten() for g in torch.autograd.grad(total["loss"], params)])
    assert torch.allclose(sum(flat.values()), grad, atol=1e-6)
    assert all(abs(float(flat[k].norm()) - rows[k]["param_grad_norm"]) < 1e-9 for k in rows)
    assert all(r["x_pred_grad_rms"] > 0 for r in (rows["pix"], rows["aux"]))
