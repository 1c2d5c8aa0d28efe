"""`vco data check DIR`: decode every image of a class-per-folder dataset in parallel, list the
unreadable, truncated, bomb-sized and non-image files, and write a manifest of the readable ones
that training reads instead of walking the folder (``--set data.manifest=FILE``)."""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from ..files import atomic_write_text
from .base import DataError
from .folder import DEFAULT_MAX_IMAGE_PIXELS, class_files, decode_image, is_image_file

MANIFEST_FORMAT = "vco-image-manifest-1"


def _check_one(args: tuple[str, int]) -> str | None:
    path, max_pixels = args
    try:
        decode_image(Path(path), None, max_pixels)
    except DataError as e:
        return str(e)
    return None


def check_folder(root: str | Path, workers: int = 0, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 progress: bool = True) -> dict:
    """{"classes", "good": [(relative path, label)], "bad": [(relative path, why)]} of ``root``.
    Files without an image extension are listed as bad (training never reads them)."""
    root = Path(root)
    classes, everything = class_files(root)
    files = [(p, k) for p, k in everything if is_image_file(p)]
    bad = [(str(p.relative_to(root)), f"{p}: not an image file (extension {p.suffix or 'none'})")
           for p, _ in everything if not is_image_file(p)]
    good = []
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(_check_one, [(str(p), max_pixels) for p, _ in files], chunksize=64)
        for (p, k), why in tqdm(zip(files, results), total=len(files), desc="check", unit="img",
                                disable=not progress):
            if why:
                bad.append((str(p.relative_to(root)), why))
            else:
                good.append((str(p.relative_to(root)), k))
    return {"classes": classes, "good": good, "bad": bad}


def write_manifest(report: dict, path: str | Path, root: str | Path) -> Path:
    body = {"format": MANIFEST_FORMAT, "root": str(Path(root).resolve()), "classes": report["classes"],
            "files": report["good"], "excluded": report["bad"]}
    atomic_write_text(path, json.dumps(body))
    return Path(path)


def read_manifest(path: str | Path, root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, (file, label) pairs) listed by a manifest of ``root``."""
    path = Path(path)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the data manifest {path} ({e}): rerun `vco data check`") from None
    if not isinstance(body, dict) or body.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path} is not a `vco data check` manifest")
    if Path(body["root"]) != root.resolve():
        raise DataError(f"the manifest {path} lists {body['root']}, not {root.resolve()}: "
                        f"run `vco data check {root} --manifest FILE` for this folder")
    return body["classes"], [(root / rel, int(k)) for rel, k in body["files"]]
