"""Pixel-level poster features: a small RGB thumbnail per item, centred over the catalogue.

A real but weak image signal that needs no model: it makes image-only pools until a trained
CLIP-style tower (issue: image encoder) is configured, and serves as that tower's floor. Results
are cached in one ``.npy`` per (data set, thumbnail size), written atomically; rows of items with
no poster, or a poster that cannot be decoded, are NaN (counted and logged, never a crash).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mma_agent.dataset import Dataset

log = logging.getLogger(__name__)


def load_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image to (H, W, 3) uint8 RGB; grayscale/CMYK/palette images are converted.
    Raises ValueError naming the file when it is missing, truncated or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                im = im.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        msg = f"cannot decode image {path}: {err}; replace or remove the file"
        raise ValueError(msg) from err


def thumbnail_features(ds: Dataset, cache_dir: Path, *, width: int = 12, height: int = 16) -> np.ndarray:
    """(n_items, 3*width*height) float32 thumbnails in [-1, 1], centred by the catalogue mean."""
    key = hashlib.sha256(("\x00".join(ds.items["item_id"]) + "\x01" + "\x00".join(ds.items["image"])).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"thumbnails-{width}x{height}-{key}.npy"
    if path.is_file():
        return np.load(path)
    feats = np.full((len(ds.items), 3 * width * height), np.nan, dtype=np.float32)
    failed = 0
    for i, image in enumerate(tqdm(ds.items["image"], desc="poster thumbnails", unit="img")):
        if not image:
            continue
        try:
            feats[i] = load_rgb(ds.image_path(image), (width, height)).reshape(-1) / 127.5 - 1.0
        except ValueError as err:
            failed += 1
            log.warning("%s", err)
    if failed:
        log.warning("%d poster(s) could not be decoded; those items have no image features", failed)
    ok = ~np.isnan(feats[:, 0])
    feats[ok] -= feats[ok].mean(axis=0, keepdims=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)
    return feats
