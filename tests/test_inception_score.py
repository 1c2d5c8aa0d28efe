"""Inception Score from local weights: the pt_inception-2015-12-05 layout, checked against the
offline FID graph (same TF network, other names) and against wrong files."""
import numpy as np
import pytest
import torch

from vco.eval.inception import InceptionFeatures, default_weights_path
from vco.eval.inception_score import InceptionClassifier
from vco.eval.metrics import inception_score

pytestmark = pytest.mark.skipif(not default_weights_path().is_file(), reason="Inception weights not installed")

# The FID graph's TF names -> the torchvision / pytorch-fid names of the same convolutions.
TOP = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
       "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
BLOCKS = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
          "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
          "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
          "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}
BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
          **{f"tower_1.conv{'' if k == 0 else f'_{k}'}": f"branch7x7dbl_{k + 1}" for k in range(5)}},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          **{f"tower_1.conv{'' if k == 0 else f'_{k}'}": f"branch7x7x3_{k + 1}" for k in range(4)}},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
PARTS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def pt_inception_state(fid_graph) -> dict:
    """The FID graph's weights under the pt_inception-2015-12-05 names, BatchNorm scale 1 (TF's
    batch norm had none), and a random 1008-way head."""
    state = {}
    for name, p in fid_graph.named_parameters():
        *path, part = name.split(".")[2:]             # drop "net.layers."
        if path[0] in TOP:
            torch_name = TOP[path[0]]
        else:
            block, kind = BLOCKS[path[0]]
            torch_name = f"{block}.{BRANCHES[kind]['.'.join(path[1:])]}"
        state[f"{torch_name}.{PARTS[part]}"] = p.detach().clone()
        if part == "beta":
            state[f"{torch_name}.bn.weight"] = torch.ones_like(p)
    g = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.05
    state["fc.bias"] = torch.randn(1008, generator=g) * 0.1
    return state


@pytest.fixture(scope="module")
def fid_graph():
    return InceptionFeatures("cpu")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, fid_graph):
    path = tmp_path_factory.mktemp("is") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(pt_inception_state(fid_graph.net), path)
    return path


def test_the_layout_loads_and_its_pool_features_are_the_fid_graphs(weights_file, fid_graph):
    """94 convolutions of the FID graph under their pytorch-fid names: the network built here
    gives the graph's own pool3 features, and logits = fc(pool3)."""
    clf = InceptionClassifier.from_file(weights_file)
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    from vco.eval.inception import preprocess
    with torch.inference_mode():
        pool, logits = clf.net(preprocess(images))
    ref = fid_graph.features(images)
    assert torch.allclose(pool, ref, rtol=1e-4, atol=1e-4)
    state = torch.load(weights_file, weights_only=True)
    assert torch.allclose(logits, pool @ state["fc.weight"].T + state["fc.bias"], atol=1e-4)
    assert clf.extract_logits(images, batch_size=2).shape == (3, 1008)


def test_inception_score_of_the_logits_is_reported_with_ten_splits(weights_file):
    clf = InceptionClassifier.from_file(weights_file)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    logits = clf.extract_logits(images, batch_size=10)
    mean, std = inception_score(logits, splits=10, from_logits=True)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    by_hand = [np.exp(np.mean(np.sum(s * (np.log(s) - np.log(s.mean(0, keepdims=True))), 1)))
               for s in np.split(p, 10)]
    assert mean == pytest.approx(np.mean(by_hand), rel=1e-9) and std == pytest.approx(np.std(by_hand), rel=1e-6)


def test_a_wrong_file_names_the_mismatched_keys(tmp_path, weights_file):
    state = torch.load(weights_file, weights_only=True)
    state["Mixed_6b.branch7x7_2.conv.weight"] = torch.zeros(128, 128, 7, 1)      # transposed kernel
    del state["fc.bias"]
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError) as err:
        InceptionClassifier.from_file(bad)
    message = str(err.value)
    assert "fc.bias" in message and "AuxLogits.fc.weight" in message and "Mixed_6b.branch7x7_2.conv.weight" in message
    with pytest.raises(FileNotFoundError, match="--inception-weights"):
        InceptionClassifier.from_file(tmp_path / "absent.pth")


def test_a_pickled_object_is_refused_by_weights_only(tmp_path):
    import pickle
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": object()}, f)
    with pytest.raises(ValueError, match="weights_only=True"):
        InceptionClassifier.from_file(path)


def test_vco_eval_reports_the_inception_score(tmp_path, capsys, weights_file):
    import json
    from vco.cli import main
    small = ["--set", "batch_size=8", "synthetic_size=40", "image_size=16", "hidden_size=32", "depth=2",
             "num_heads=2", "bottleneck_dim=8", "in_context_len=2", "in_context_start=1", "precision=fp32"]
    run, ref = tmp_path / "run", tmp_path / "ref.npz"
    assert main(["train", "--preset", "jit-tiny", "--data", "synthetic", "--steps", "2", "--out", str(run),
                 "--quiet", *small]) == 0
    assert main(["eval", "ref", "--data", "synthetic", "--num", "20", "--out", str(ref), *small]) == 0
    assert main(["eval", "--run", str(run), "--ref", str(ref), "--num", "10", "--steps", "1",
                 "--inception-weights", str(weights_file)]) == 0
    assert "inception_score=" in capsys.readouterr().out
    record = json.loads(next((run / "eval").glob("eval_*.json")).read_text())
    assert record["inception_score"] >= 1.0 and record["inception_score_std"] >= 0
    assert "inception_score_note" not in record
