"""Implicit feedback and the chronological per-user train/validation/test split.

Ratings at or above ``DataConfig.positive_threshold`` become positives; each user's positives,
ordered by (timestamp, item_id), are cut 80/10/10. Held-out items that never occur in train
are kept: they are the cold items this project exists for, and `cold_targets` counts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mma_agent.config import DataConfig
from mma_agent.data.schema import Dataset, DatasetError
from mma_agent.util import digest

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, eq=False)
class Split:
    """A data set cut into train/valid/test positives, with contiguous user and item indices.

    Frames hold ``user`` and ``item`` (int indices into `user_ids` / `item_ids`) and ``timestamp``.
    """

    dataset: Dataset
    config: DataConfig
    user_ids: np.ndarray  # (n_users,) str
    item_ids: np.ndarray  # (n_items,) str, the whole catalogue in items-table order
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    item_tags: list[str]  # (n_items,) '|'-joined user tags, most used first, held-out pairs removed
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {iid: i for i, iid in enumerate(self.item_ids)}

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {uid: u for u, uid in enumerate(self.user_ids)}

    def frame(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            msg = f"unknown split {name!r}; choose one of {SPLITS}"
            raise ValueError(msg)
        return getattr(self, name)

    def matrix(self, name: str = "train") -> sp.csr_matrix:
        """(n_users, n_items) binary CSR matrix of one split's positives."""
        df = self.frame(name)
        data = np.ones(len(df), dtype=np.float32)
        return sp.csr_matrix((data, (df["user"].to_numpy(), df["item"].to_numpy())), shape=(self.n_users, self.n_items))

    @cached_property
    def train_items(self) -> np.ndarray:
        """(n_items,) bool: the item occurs in train (a warm item)."""
        seen = np.zeros(self.n_items, dtype=bool)
        seen[self.train["item"].to_numpy()] = True
        return seen

    def cold_targets(self, name: str) -> int:
        df = self.frame(name)
        return int((~self.train_items[df["item"].to_numpy()]).sum())

    def fingerprint(self) -> str:
        """Content hash of the split (ids, positives, config): keys caches and pools."""
        frames = (np.ascontiguousarray(self.frame(name)[["user", "item", "timestamp"]].to_numpy()).tobytes() for name in SPLITS)
        return digest([self.config.model_dump_json(), "\x00".join(self.item_ids), "\x00".join(self.user_ids), *frames])


def _cut_sizes(n: np.ndarray, ratios: tuple[float, float, float], min_positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (n_valid, n_test). Users below `min_positives` keep everything in train."""
    _, r_valid, r_test = ratios
    n_test = np.where(r_test > 0, np.maximum(1, np.rint(n * r_test)), 0).astype(int)
    n_valid = np.where(r_valid > 0, np.maximum(1, np.rint(n * r_valid)), 0).astype(int)
    small = n < min_positives
    return np.where(small, 0, n_valid), np.where(small, 0, n_test)


def split_dataset(ds: Dataset, config: DataConfig | None = None) -> Split:
    config = config or DataConfig()
    inter = ds.interactions
    pos = inter[inter["rating"] >= config.positive_threshold].copy()
    all_users = inter["user_id"].unique()
    empty_users = len(all_users) - pos["user_id"].nunique()
    if empty_users:
        log.warning(
            "%d user(s) have no rating >= %.1f and are skipped (no positives to train or evaluate on)",
            empty_users,
            config.positive_threshold,
        )
    if pos.empty:
        msg = f"no interaction has rating >= {config.positive_threshold}; lower data.positive_threshold"
        raise DatasetError(msg)

    item_ids = ds.items["item_id"].to_numpy(dtype=str)
    item_index = pd.Series(np.arange(len(item_ids)), index=item_ids)
    user_ids = np.array(sorted(pos["user_id"].unique(), key=lambda u: (len(u), u)), dtype=str)
    user_index = pd.Series(np.arange(len(user_ids)), index=user_ids)

    pos["user"] = user_index.loc[pos["user_id"]].to_numpy()
    pos["item"] = item_index.loc[pos["item_id"]].to_numpy()
    pos = pos.sort_values(["user", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    rank = pos.groupby("user").cumcount().to_numpy()
    n = pos.groupby("user")["item"].transform("size").to_numpy()
    n_valid, n_test = _cut_sizes(n, config.split_ratios, config.min_positives)
    n_train = n - n_valid - n_test
    part = np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2))
    cols = ["user", "item", "timestamp"]
    train, valid, test = (pos.loc[part == k, cols].reset_index(drop=True) for k in range(3))

    per_user = pos.groupby("user").size()
    small = int((per_user < config.min_positives).sum())
    if small:
        log.warning(
            "%d user(s) have fewer than %d positives: all kept in train, no evaluation target", small, config.min_positives
        )

    # User tags are item text, but a tag a user put on one of their held-out items reveals the
    # interaction; drop those applications before they can reach any text feature.
    tags = ds.tags
    held_out = set(zip(pos.loc[part > 0, "user_id"], pos.loc[part > 0, "item_id"], strict=True))
    leak = np.array([(u, i) in held_out for u, i in zip(tags["user_id"], tags["item_id"], strict=True)], dtype=bool)
    if leak.any():
        log.info("dropped %d tag application(s) that users put on their own held-out items", int(leak.sum()))
    kept = tags[~leak] if len(tags) else tags
    item_tags = [""] * len(item_ids)
    if len(kept):
        counts = (
            kept.groupby(["item_id", "tag"])
            .size()
            .reset_index(name="n")
            .sort_values(["item_id", "n", "tag"], ascending=[True, False, True])
        )
        for iid, group in counts.groupby("item_id", sort=False):
            item_tags[int(item_index[iid])] = "|".join(group["tag"])

    stats = {
        "users": len(user_ids),
        "users_without_positives": int(empty_users),
        "users_below_min_positives": small,
        "items": len(item_ids),
        "interactions": len(inter),
        "positives": len(pos),
        "train": len(train),
        "valid": len(valid),
        "test": len(test),
        "tags_dropped_as_leaks": int(leak.sum()),
    }
    return Split(ds, config, user_ids, item_ids, train, valid, test, item_tags, stats)
