"""Pixel-level poster features: a small RGB thumbnail per item, centred over the catalogue.

A real but weak image signal that needs no model: it makes image-only pools until a trained
CLIP-style tower (issue: image encoder) is configured, and serves as that tower's floor. Results
are cached in one ``.npy`` per (data set, thumbnail size), written atomically; rows of items with
no poster, or a poster that cannot be decoded, are NaN (counted and logged, never a crash).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mma_agent.data.dataset import load_rgb
from mma_agent.data.schema import Dataset
from mma_agent.util import atomic_save_npy, digest, joined_digest

log = logging.getLogger(__name__)


def thumbnail_features(ds: Dataset, cache_dir: Path, *, width: int = 12, height: int = 16) -> np.ndarray:
    """(n_items, 3*width*height) float32 thumbnails in [-1, 1], centred by the catalogue mean."""
    key = digest("\x00".join(ds.items["item_id"]) + "\x01" + "\x00".join(ds.items["image"]), 12)
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
    atomic_save_npy(path, feats)
    return feats


def poster_fingerprint(ds: Dataset) -> list[str]:
    """Content key of the poster set: each item's image path with a digest of the file's bytes
    (not its mtime: a data set copied or re-mounted unchanged keeps its caches; hashing the
    MovieLens posters, 166 MB, takes about a second)."""
    out = []
    for iid, image in zip(ds.items["item_id"], ds.items["image"], strict=True):
        p = ds.image_path(image)
        out.append(f"{iid}:{image}:{digest([p.read_bytes()])}" if p is not None and p.is_file() else f"{iid}:-")
    return out


def embed_posters(
    ds: Dataset, encode, preprocess, cache_dir: Path, *, name: str, encoder_identity: str, batch_size: int = 32, chunk: int = 512
) -> np.ndarray:
    """(n_items, d) float32 = encode(preprocess(poster)) for every poster; NaN rows for items with no
    poster or an unreadable one (reported by file). Written in chunks, so a killed run resumes where
    it stopped; the result is cached under a key of poster content and encoder identity."""
    import torch
    from PIL import Image

    key = joined_digest([name, encoder_identity, repr(preprocess), *poster_fingerprint(ds)], 12)
    final = Path(cache_dir) / f"{name}-{key}.npy"
    if final.is_file():
        return np.load(final)
    parts = Path(cache_dir) / f"{name}-{key}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    images = ds.items["image"].tolist()
    n = len(images)
    bar = tqdm(total=n, desc=f"poster {name}", unit="img")
    failed = 0
    for lo in range(0, n, chunk):
        part = parts / f"{lo:06d}.npy"
        idx = range(lo, min(lo + chunk, n))
        if part.is_file():  # finished before a crash
            bar.update(len(idx))
            continue
        out = np.full((len(idx), 1), np.nan, dtype=np.float32)
        for b in range(0, len(idx), batch_size):
            rows, tensors = [], []
            for i in idx[b : b + batch_size]:
                if not images[i]:
                    continue
                try:
                    tensors.append(preprocess(Image.fromarray(load_rgb(ds.image_path(images[i])))))
                    rows.append(i - lo)
                except ValueError as err:
                    failed += 1
                    log.warning("%s", err)
            if tensors:
                with torch.no_grad():
                    f = encode(torch.stack(tensors)).float().numpy()
                if out.shape[1] != f.shape[1]:
                    out = np.full((len(idx), f.shape[1]), np.nan, dtype=np.float32)
                out[rows] = f
            bar.update(len(idx[b : b + batch_size]))
        atomic_save_npy(part, out)
    bar.close()
    chunks = [np.load(parts / f"{lo:06d}.npy") for lo in range(0, n, chunk)]
    dim = max(c.shape[1] for c in chunks)
    feats = np.concatenate([c if c.shape[1] == dim else np.full((len(c), dim), np.nan, np.float32) for c in chunks])
    if failed:
        log.warning("%d poster(s) could not be decoded; those items have no %s features", failed, name)
    atomic_save_npy(final, feats)
    return feats


def trunk_features(ds: Dataset, model, preprocess, cache_dir: Path, *, batch_size: int = 32, chunk: int = 512) -> np.ndarray:
    """(n_items, d) pooled trunk features of the frozen image tower; NaN rows for items with no
    usable poster. Cached by poster content and trunk identity; resumable."""
    identity = (
        f"{type(model.visual.trunk).__name__}:{model.visual.trunk.default_cfg.get('architecture', '')}:{trunk_weights_file()}"
    )
    return embed_posters(
        ds, model.visual.trunk, preprocess, cache_dir, name="trunk", encoder_identity=identity, batch_size=batch_size, chunk=chunk
    )


def trunk_weights_file() -> str:
    from mma_agent.models.poster_clip import trunk_weights_path

    return Path(trunk_weights_path()).name
