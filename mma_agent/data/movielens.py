"""Adapter for the MovieLens-posters folder (MovieLens ml-latest-small + TMDB 5000 + posters).

Reads the folder in place (its licences forbid copying it into this repository):
titles and genres from ``movies.csv``, user tags from ``tags.csv``, overview, tagline and
keywords from the TMDB table joined through ``links.csv``, and ``posters/<movieId>.jpg``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from mma_agent.data.schema import (
    Dataset,
    DatasetError,
    normalize_interactions,
    normalize_items,
    normalize_tags,
    read_table,
)

log = logging.getLogger(__name__)

NO_GENRES = "(no genres listed)"


def _json_names(cell: str, source: str, line: int) -> str:
    """TMDB stores keywords as a JSON list of {"id", "name"}; return the names joined by '|'."""
    if not cell:
        return ""
    try:
        return "|".join(d["name"] for d in json.loads(cell))
    except (ValueError, TypeError, KeyError) as err:
        msg = f"{source}: line {line}: keywords is not a JSON list of {{'name': ...}} objects: {err}"
        raise DatasetError(msg) from err


def load_tmdb(path: Path) -> pd.DataFrame:
    """TMDB 5000 movies: tmdb id -> overview, tagline, keywords."""
    df = read_table(path, what="TMDB movies", dtype=str, compression="infer")
    missing = [c for c in ("id", "overview", "tagline", "keywords") if c not in df.columns]
    if missing:
        msg = f"{path}: missing column(s) {missing}; expected the TMDB 5000 movies table"
        raise DatasetError(msg)
    df = df.fillna("")
    df["keywords"] = [_json_names(k, str(path), i + 2) for i, k in enumerate(df["keywords"])]
    return df.loc[:, ["id", "overview", "tagline", "keywords"]].rename(columns={"id": "tmdbId"})


def load_movielens_posters(root: Path | str) -> Dataset:
    root = Path(root)
    ml = root / "ml-latest-small"
    movies = read_table(ml / "movies.csv", what="MovieLens movies", dtype=str)
    if not {"movieId", "title", "genres"} <= set(movies.columns):
        msg = f"{ml / 'movies.csv'}: expected columns movieId,title,genres; found {list(movies.columns)}"
        raise DatasetError(msg)
    links = read_table(ml / "links.csv", what="MovieLens links", dtype=str).fillna("")
    tmdb_path = root / "tmdb_5000_movies.csv.gz"
    tmdb = load_tmdb(tmdb_path) if tmdb_path.is_file() else None
    if tmdb is None:
        log.warning("%s not found: items get no overview, tagline or keywords", tmdb_path)

    items = movies.rename(columns={"movieId": "item_id"})
    items["genres"] = items["genres"].fillna("").replace(NO_GENRES, "")
    if tmdb is not None:
        joined = links.loc[:, ["movieId", "tmdbId"]].merge(tmdb, on="tmdbId", how="inner")
        # A few TMDB ids appear twice in links.csv; one text per movie is enough.
        joined = joined.drop_duplicates("movieId").rename(columns={"movieId": "item_id"}).drop(columns="tmdbId")
        items = items.merge(joined, on="item_id", how="left")
    poster_dir = root / "posters"
    items["image"] = [f"posters/{mid}.jpg" if (poster_dir / f"{mid}.jpg").is_file() else "" for mid in items["item_id"]]
    items = normalize_items(items, str(ml / "movies.csv"))

    ratings = read_table(ml / "ratings.csv", what="MovieLens ratings", dtype={"userId": str, "movieId": str})
    ratings = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})
    inter = normalize_interactions(ratings, str(ml / "ratings.csv"), items["item_id"])

    tag_path = ml / "tags.csv"
    tags = None
    if tag_path.is_file():
        tags = read_table(tag_path, what="MovieLens tags", dtype=str).rename(columns={"userId": "user_id", "movieId": "item_id"})
        tags["tag"] = tags["tag"].fillna("").str.lower()
    tags = normalize_tags(tags, str(tag_path), items["item_id"])
    return Dataset(name="movielens-posters", root=root, items=items, interactions=inter, tags=tags)
