"""The generic on-disk data set format, its loader and its validation.

A data set is a folder (see docs/dataset-format.md):

- ``items.csv`` or ``items.parquet``: one row per item. ``item_id`` and ``title`` are required;
  ``genres``, ``overview``, ``tagline``, ``keywords`` and ``image`` are optional. List fields are
  ``|``-separated; ``image`` is a path relative to the folder (empty: no image).
- ``interactions.csv`` or ``.parquet``: ``user_id``, ``item_id``, ``timestamp`` (integer seconds),
  ``rating`` (optional; 1.0 when absent, i.e. already implicit).
- ``tags.csv`` or ``.parquet`` (optional): user-applied tags ``user_id``, ``item_id``, ``tag``.
  They are item text, but a tag tells that its user met the item, so tags a user put on their own
  held-out items are dropped when the split is made (:mod:`mma_agent.data.splits`).
- ``dataset.json`` (optional): ``{"name": ..., "format_version": 1}``.

Ids are strings everywhere in this format, so Amazon ASINs and MovieLens integers fit alike.
Every check raises :class:`DatasetError` naming the file, the row and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mma_agent.data.movielens import load_movielens_posters
from mma_agent.data.schema import (
    FORMAT_VERSION,
    Dataset,
    DatasetError,
    find_table,
    normalize_interactions,
    normalize_items,
    normalize_tags,
    read_table,
)

__all__ = ["Dataset", "DatasetError", "load_dataset", "save_dataset"]


def load_dataset(path: Path | str) -> Dataset:
    """Load a data set folder: the generic format, or the MovieLens-posters folder (auto-detected)."""
    root = Path(path)
    if not root.is_dir():
        msg = f"data set path {root} is not a folder; pass --data pointing at a data set folder"
        raise DatasetError(msg)
    if (root / "ml-latest-small" / "ratings.csv").is_file():
        return load_movielens_posters(root)
    meta = {}
    if (root / "dataset.json").is_file():
        meta = json.loads((root / "dataset.json").read_text())
        if meta.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            msg = f"{root / 'dataset.json'}: format_version {meta['format_version']} is not supported (expected {FORMAT_VERSION})"
            raise DatasetError(msg)
    ip = find_table(root, "items", required=True)
    items = normalize_items(read_table(ip, what="items", dtype=str), str(ip))
    xp = find_table(root, "interactions", required=True)
    inter = normalize_interactions(
        read_table(xp, what="interactions", dtype={"user_id": str, "item_id": str}), str(xp), items["item_id"]
    )
    tp = find_table(root, "tags", required=False)
    tags = normalize_tags(read_table(tp, what="tags", dtype=str) if tp else None, str(tp), items["item_id"])
    return Dataset(name=meta.get("name", root.name), root=root, items=items, interactions=inter, tags=tags)


def save_dataset(ds: Dataset, out: Path | str, *, image_root: Path | None = None) -> Path:
    """Write a data set in the generic format (Parquet). Image paths are written absolute unless
    `image_root` is given, so the converted folder can live anywhere without copying images."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = ds.items.copy()
    base = image_root or ds.root
    items["image"] = [str((base / p).resolve()) if p else "" for p in items["image"]]
    items.to_parquet(out / "items.parquet", index=False)
    ds.interactions.to_parquet(out / "interactions.parquet", index=False)
    if not ds.tags.empty:
        ds.tags.to_parquet(out / "tags.parquet", index=False)
    (out / "dataset.json").write_text(json.dumps({"name": ds.name, "format_version": FORMAT_VERSION}, indent=2))
    return out


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
