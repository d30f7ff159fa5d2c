"""The generic on-disk data set format, its loader and its validation.

A data set is a folder (see docs/dataset-format.md):

- ``items.csv`` or ``items.parquet``: one row per item. ``item_id`` and ``title`` are required;
  ``genres``, ``overview``, ``tagline``, ``keywords`` and ``image`` are optional. List fields are
  ``|``-separated; ``image`` is a path relative to the folder (empty: no image).
- ``interactions.csv`` or ``.parquet``: ``user_id``, ``item_id``, ``timestamp`` (integer seconds),
  ``rating`` (optional; 1.0 when absent, i.e. already implicit).
- ``tags.csv`` or ``.parquet`` (optional): user-applied tags ``user_id``, ``item_id``, ``tag``.
  They are item text, but a tag tells that its user met the item, so tags a user put on their own
  held-out items are dropped when the split is made (:mod:`mma_agent.splits`).
- ``dataset.json`` (optional): ``{"name": ..., "format_version": 1}``.

Ids are strings everywhere in this format, so Amazon ASINs and MovieLens integers fit alike.
Every check raises :class:`DatasetError` naming the file, the row and the fix.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ITEM_COLUMNS = ("item_id", "title", "genres", "overview", "tagline", "keywords", "image")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating")
TAG_COLUMNS = ("user_id", "item_id", "tag")
_REQUIRED = {
    "items": ("item_id", "title"),
    "interactions": ("user_id", "item_id", "timestamp"),
    "tags": ("user_id", "item_id", "tag"),
}


class DatasetError(ValueError):
    """A data set file is missing, malformed or inconsistent; the message says where and how to fix it."""


@dataclass(frozen=True)
class Dataset:
    """A loaded data set: items with their text fields and image path, interactions, user tags."""

    name: str
    root: Path
    items: pd.DataFrame  # ITEM_COLUMNS, one row per item, string fields ("" = absent)
    interactions: pd.DataFrame  # INTERACTION_COLUMNS, unique (user_id, item_id)
    tags: pd.DataFrame  # TAG_COLUMNS, possibly empty

    def image_path(self, image: str) -> Path | None:
        return (self.root / image) if image else None


def read_table(path: Path, *, what: str, **csv_kwargs) -> pd.DataFrame:
    """Read a CSV or Parquet file, turning parser failures into a DatasetError that names the file."""
    if not path.is_file():
        msg = f"{what}: file {path} does not exist; check the data set path (--data) and the format in docs/dataset-format.md"
        raise DatasetError(msg)
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, keep_default_na=False, na_values=[""], **csv_kwargs)
    except Exception as err:  # pandas raises many types; the caller needs the file name
        msg = f"{what}: could not parse {path}: {err}"
        raise DatasetError(msg) from err


def _find(root: Path, stem: str, *, required: bool) -> Path | None:
    for ext in (".parquet", ".csv"):
        if (root / f"{stem}{ext}").is_file():
            return root / f"{stem}{ext}"
    if required:
        msg = f"data set folder {root} has no {stem}.csv or {stem}.parquet; see docs/dataset-format.md"
        raise DatasetError(msg)
    return None


def _require_columns(df: pd.DataFrame, kind: str, source: str) -> None:
    missing = [c for c in _REQUIRED[kind] if c not in df.columns]
    if missing:
        msg = f"{source}: missing column(s) {missing}; found {list(df.columns)}. Required: {list(_REQUIRED[kind])}"
        raise DatasetError(msg)


def _row_refs(index: pd.Index, limit: int = 5) -> str:
    # file line = frame index + 2 (one header line, 1-based lines)
    lines = [str(int(i) + 2) for i in index[:limit]]
    more = f" and {len(index) - limit} more" if len(index) > limit else ""
    return ", ".join(lines) + more


def normalize_items(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check and normalise an items table: string ids, no duplicates, every column present."""
    _require_columns(df, "items", source)
    df = df.copy()
    df["item_id"] = df["item_id"].astype(str).str.strip()
    empty = df.index[df["item_id"].isin(["", "nan"])]
    if len(empty):
        msg = f"{source}: empty item_id on line(s) {_row_refs(empty)}; every item needs an id"
        raise DatasetError(msg)
    dup = df.index[df["item_id"].duplicated(keep="first")]
    if len(dup):
        msg = (
            f"{source}: duplicate item_id {df.loc[dup[0], 'item_id']!r} on line(s) {_row_refs(dup)}; "
            "item ids must be unique: merge or drop the repeated rows"
        )
        raise DatasetError(msg)
    for col in ITEM_COLUMNS:
        if col not in df.columns:
            df[col] = ""
        df[col] = df[col].fillna("").astype(str).str.strip()
    return df.loc[:, list(ITEM_COLUMNS)].reset_index(drop=True)


def normalize_interactions(df: pd.DataFrame, source: str, known_items: pd.Series) -> pd.DataFrame:
    """Check and normalise interactions: numeric timestamps/ratings, known items, one row per pair."""
    _require_columns(df, "interactions", source)
    df = df.copy()
    if "rating" not in df.columns:
        df["rating"] = 1.0
    for col in ("timestamp", "rating"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = df.index[num.isna()]
        if len(bad):
            msg = f"{source}: non-numeric or empty {col} {df.loc[bad[0], col]!r} on line(s) {_row_refs(bad)}"
            raise DatasetError(msg)
        df[col] = num
    df["timestamp"] = df["timestamp"].astype("int64")
    df["rating"] = df["rating"].astype("float64")
    for col in ("user_id", "item_id"):
        df[col] = df[col].astype(str).str.strip()
    unknown = df.index[~df["item_id"].isin(set(known_items))]
    if len(unknown):
        msg = (
            f"{source}: {len(unknown)} interaction(s) name an item_id missing from the items table, "
            f"first {df.loc[unknown[0], 'item_id']!r} on line(s) {_row_refs(unknown)}; add those items or drop the rows"
        )
        raise DatasetError(msg)
    dup = df.duplicated(["user_id", "item_id"], keep="last")
    if dup.any():
        # Repeated (user, item) pairs: keep the latest, and say how many were merged.
        log.warning("%s: %d repeated (user_id, item_id) rows merged, keeping the latest", source, int(dup.sum()))
        df = df.sort_values("timestamp", kind="stable").drop_duplicates(["user_id", "item_id"], keep="last")
    return df.loc[:, list(INTERACTION_COLUMNS)].reset_index(drop=True)


def normalize_tags(df: pd.DataFrame | None, source: str, known_items: pd.Series) -> pd.DataFrame:
    if df is None or df.empty:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in TAG_COLUMNS})
    _require_columns(df, "tags", source)
    df = df.loc[:, list(TAG_COLUMNS)].copy()
    for col in TAG_COLUMNS:
        df[col] = df[col].fillna("").astype(str).str.strip()
    keep = df["tag"].ne("") & df["item_id"].isin(set(known_items))
    if (~keep).any():
        log.warning("%s: %d tag row(s) skipped (empty tag or unknown item_id)", source, int((~keep).sum()))
    return df[keep].reset_index(drop=True)


def load_dataset(path: Path | str) -> Dataset:
    """Load a data set folder: the generic format, or the MovieLens-posters folder (auto-detected)."""
    root = Path(path)
    if not root.is_dir():
        msg = f"data set path {root} is not a folder; pass --data pointing at a data set folder"
        raise DatasetError(msg)
    if (root / "ml-latest-small" / "ratings.csv").is_file():
        from mma_agent.movielens import load_movielens_posters

        return load_movielens_posters(root)
    meta = {}
    if (root / "dataset.json").is_file():
        meta = json.loads((root / "dataset.json").read_text())
        if meta.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            msg = f"{root / 'dataset.json'}: format_version {meta['format_version']} is not supported (expected {FORMAT_VERSION})"
            raise DatasetError(msg)
    ip = _find(root, "items", required=True)
    items = normalize_items(read_table(ip, what="items", dtype=str), str(ip))
    xp = _find(root, "interactions", required=True)
    inter = normalize_interactions(read_table(xp, what="interactions", dtype={"user_id": str, "item_id": str}), str(xp), items["item_id"])
    tp = _find(root, "tags", required=False)
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
