"""Shared test helpers: the velocity-only objective around a stub or tiny model."""
from vco.config import DiffusionConfig, ModelConfig
from vco.diffusion.flow import SameTime
from vco.losses.base import BuildContext, WeightOnly
from vco.losses.velocity import PixelVLoss, SemanticVLoss
from vco.train.objective import Objective


def velocity_loss(model, x, y, cfg: DiffusionConfig, num_classes, generator, semantic=None,
                  semantic_weight=0.1, semantic_time=SameTime()):
    """The objective's terms for L_pix (+ semantic_weight * L_sem when ``semantic`` is given)."""
    ctx = BuildContext(ModelConfig(), cfg)
    terms = {"pix": PixelVLoss(WeightOnly(1.0), ctx)}
    if semantic is not None:
        terms["sem"] = SemanticVLoss(WeightOnly(semantic_weight), ctx)
    return Objective(model, terms, cfg, num_classes, semantic_time)(x, y, semantic, generator)


def hub_cache(root, repo_id: str, files: dict, revision: str = "main", commit: str | None = None):
    """A Hugging Face Hub cache folder in the library's documented layout, built by hand:
    models--OWNER--REPO/{blobs/<sha256>, snapshots/<commit>/<path> -> blob, refs/<revision>}.
    ``files``: path in repo -> bytes or a local file to copy. Returns the snapshot folder."""
    import hashlib
    import os
    from pathlib import Path
    commit = commit or hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo = Path(root) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for path, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot
