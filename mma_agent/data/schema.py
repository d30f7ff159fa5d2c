"""The data set type and the validation of its tables: what every loader produces.

:class:`Dataset` holds the normalised items, interactions and tags; `read_table` and the
`normalize_*` functions check a table and say what is wrong, naming the file, the row and the fix
(:class:`DatasetError`). The loaders (`mma_agent.data.dataset` for the generic folder format, and
`mma_agent.data.movielens` for the MovieLens-posters folder) build on them.
"""

from __future__ import annotations

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


def find_table(root: Path, stem: str, *, required: bool) -> Path | None:
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
