"""Are the semantic targets informative? Linear probes of the encoder's patch features on the labels.

    python benchmarks/probe.py [--train 10000] [--test 5000] [--layers 7 14]

For each MobileNetV2 stage (``semantic.encoder_layer``) with its ImageNet weights and with random
weights, and for the raw pixels: a ridge-regression classifier (one-hot targets, closed form,
lambda picked on a held-out fifth of the training images) on the flattened patch tokens of
Fashion-MNIST at the CPU presets' 28 px, scored on the test images. Features the model is asked to
co-denoise are only worth it if they say more about the image than its pixels do. Prints a table;
last line ``probe <name>=<accuracy> ...``; writes docs/results/probe.{md,json}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vco.config import build_config
from vco.data import build_dataset, to_model_range
from vco.eval.evaluate import write_json
from vco.semantic import MobileNetV2Encoder

ROOT = Path(__file__).resolve().parents[1]
LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def images_of(split: str, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = build_config("vco-tiny", overrides=[f"data.name={'fashion-mnist-test' if split == 'test' else 'fashion-mnist'}"])
    data = build_dataset(cfg.data, cfg.model.image_size, cfg.model.num_classes)
    idx = torch.linspace(0, len(data) - 1, min(num, len(data))).long()
    x = to_model_range(data.images[idx]).expand(-1, 3, -1, -1)          # (N, 3, 28, 28) in [-1, 1]
    return x, data.labels[idx]


@torch.no_grad()
def features(encoder, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([encoder.patch_features(x[i:i + 256]).flatten(1) for i in range(0, len(x), 256)])


def ridge_accuracy(f_train, y_train, f_test, y_test) -> tuple[float, float]:
    """Test accuracy of the ridge classifier whose lambda is best on a held-out fifth; (acc, lambda)."""
    mu, sd = f_train.mean(0), f_train.std(0).clamp(min=1e-6)
    a, b = ((f_train - mu) / sd).double(), ((f_test - mu) / sd).double()
    onehot = torch.nn.functional.one_hot(y_train, 10).double()
    cut = len(a) * 4 // 5

    def fit(x, t, lam):
        x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        if x1.shape[1] <= len(x1):        # primal: (X'X + lam I) w = X't
            return torch.linalg.solve(x1.T @ x1 + lam * torch.eye(x1.shape[1], dtype=x.dtype), x1.T @ t)
        return x1.T @ torch.linalg.solve(x1 @ x1.T + lam * torch.eye(len(x1), dtype=x.dtype), t)   # dual

    acc = lambda w, x, y: (torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ w).argmax(1).eq(y).double().mean().item()
    best = max(LAMBDAS, key=lambda lam: acc(fit(a[:cut], onehot[:cut], lam), a[cut:], y_train[cut:]))
    return acc(fit(a, onehot, best), b, y_test), best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=5_000)
    ap.add_argument("--layers", type=int, nargs="+", default=[7, 14])
    ap.add_argument("--results", default=str(ROOT / "docs" / "results"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    x_train, y_train = images_of("train", args.train)
    x_test, y_test = images_of("test", args.test)
    rows = [{"features": "pixels (28x28, one channel)", "dim": 784,
             "accuracy": ridge_accuracy(x_train[:, 0].flatten(1), y_train, x_test[:, 0].flatten(1), y_test)}]
    for layer in args.layers:
        for weights in ("imagenet", None):
            enc = MobileNetV2Encoder(grid=7, layer=layer, weights=weights)
            f_train, f_test = features(enc, x_train), features(enc, x_test)
            rows.append({"features": f"mobilenet_v2[{weights or 'random'}] features[:{layer}] "
                                     f"({enc.input_size} px input, 7x7 x {enc.feature_dim})",
                         "dim": f_train.shape[1], "accuracy": ridge_accuracy(f_train, y_train, f_test, y_test)})
    lines = ["# Linear probes of the semantic features (Fashion-MNIST, 28 px)", "",
             f"Ridge classifier on the flattened tokens, {args.train} training / {args.test} test images, "
             "lambda picked on a held-out fifth.", "", "| features | dim | test accuracy | lambda |", "|---|---|---|---|"]
    for r in rows:
        acc, lam = r["accuracy"]
        lines.append(f"| {r['features']} | {r['dim']} | {acc:.4f} | {lam:g} |")
        print(f"{r['features']:70s} dim {r['dim']:5d}  accuracy {acc:.4f}  (lambda {lam:g})")
    results = Path(args.results)
    (results / "probe.md").write_text("\n".join(lines) + "\n")
    write_json(results / "probe.json", {"train": args.train, "test": args.test, "rows": rows})
    print("probe " + " ".join(f"{r['features'].split(' (')[0].replace(' ', '_')}={r['accuracy'][0]:.4f}" for r in rows))


if __name__ == "__main__":
    main()
