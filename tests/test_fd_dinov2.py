"""FD-DINOv2: the features against HF DINOv2 run on PIL-resized images, and the eval commands
with a tiny random DINOv2 saved like a user's local weights."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from vco.eval.dinov2_features import DINOv2Features  # noqa: E402


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, patch_size=14, image_size=224)
    folder = tmp_path_factory.mktemp("dinov2")
    transformers.Dinov2Model(config).save_pretrained(folder)
    return str(folder)


def test_features_are_the_normed_cls_token_of_pil_bicubic_224px_images(dinov2_folder):
    images = torch.randint(0, 256, (3, 3, 28, 28), dtype=torch.uint8)
    ours = DINOv2Features(dinov2_folder).extract(images, batch_size=2)
    # by hand: PIL bicubic to 224, [0, 1], ImageNet mean/std, HF model, CLS after the final LayerNorm
    pil = np.stack([np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).resize((224, 224), Image.BICUBIC))
                    for im in images])
    x = torch.from_numpy(pil).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    model = transformers.Dinov2Model.from_pretrained(dinov2_folder).eval()
    with torch.no_grad():
        hidden = model(pixel_values=(x - mean) / std).last_hidden_state
        cls = torch.nn.functional.layer_norm(hidden[:, 0], (32,), model.layernorm.weight, model.layernorm.bias,
                                             model.config.layer_norm_eps)
    assert ours.shape == (3, 32)
    # PIL rounds its output to 8 bits: agreement to that rounding (max 1.4e-3 here), not to float
    # precision; torch's plain bicubic (another kernel) would differ by 2e-2
    assert np.abs(ours - cls.double().numpy()).max() < 5e-3


def test_eval_reports_fd_dinov2_against_a_reference_that_holds_it(tmp_path, capsys, dinov2_folder):
    from vco.cli import main
    from vco.eval.inception import default_weights_path
    if not default_weights_path().is_file():
        pytest.skip("Inception weights not installed")
    small = ["--set", "batch_size=8", "synthetic_size=40", "image_size=16", "hidden_size=32", "depth=2",
             "num_heads=2", "bottleneck_dim=8", "in_context_len=2", "in_context_start=1", "precision=fp32"]
    run, ref, plain = tmp_path / "run", tmp_path / "ref.npz", tmp_path / "plain.npz"
    assert main(["train", "--preset", "jit-tiny", "--data", "synthetic", "--steps", "2", "--out", str(run),
                 "--quiet", *small]) == 0
    assert main(["eval", "ref", "--data", "synthetic", "--num", "20", "--out", str(ref),
                 "--fd-dinov2", dinov2_folder, *small]) == 0
    assert main(["eval", "ref", "--data", "synthetic", "--num", "20", "--out", str(plain), *small]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--ref", str(plain), "--num", "10", "--steps", "1",
                 "--fd-dinov2", dinov2_folder]) == 2
    assert "holds no FD-DINOv2 statistics" in capsys.readouterr().err
    assert main(["eval", "--run", str(run), "--ref", str(ref), "--num", "10", "--steps", "1",
                 "--fd-dinov2", dinov2_folder]) == 0
    assert "fd_dinov2=" in capsys.readouterr().out
    record = json.loads(next((run / "eval").glob("eval_*.json")).read_text())
    assert record["fd_dinov2"] > 0 and record["fd_dinov2_model"] == dinov2_folder
    from vco.eval import load_reference
    stored = load_reference(ref)
    assert stored.dinov2[0].shape == (32,) and stored.dinov2[1].shape == (32, 32)
    assert stored.dinov2_model == dinov2_folder


def test_fd_of_a_set_with_itself_is_zero(dinov2_folder):
    from vco.eval.metrics import frechet_distance, stats
    feats = DINOv2Features(dinov2_folder).extract(torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8))
    assert abs(frechet_distance(*stats(feats), *stats(feats))) < 1e-6
