"""Candidate pools, identical for every method, written to disk with a content hash.

- **Family pools** (OOMA and the other masked families): the held-out target plus ``size - 1``
  hard negatives mined from the surviving modalities only: BM25 neighbours of the target's text,
  nearest neighbours of its image embedding, its co-interaction neighbours in the train graph.
  With several modalities available, their neighbour lists are interleaved. Negatives never include
  a known positive of the user. When a modality runs out of neighbours (a cold target has no
  co-interactions, an item may have no poster), the rest are uniform random items, counted in
  ``n_filled``. The first-stage score of each candidate comes from the *user's history* in the
  same surviving modalities (BM25 against the history's text, cosine to the history's mean image,
  ItemKNN over the train graph), min-max normalised and averaged; candidate order is shuffled so
  position never reveals the target.
- **Fixed pools**: a first-stage retriever's top-``size`` over all items the user has not met in
  train (nor in validation, for test pools). The target may be absent; Recall@size is the ceiling.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mma_agent.config import PoolConfig, RetrieverConfig
from mma_agent.masks import ModalityView, family_mask
from mma_agent.retrievers import ItemKNN, Retriever
from mma_agent.splits import Split


@dataclass(frozen=True, eq=False)
class PoolSet:
    protocol: str  # "family" or "fixed"
    family: str
    split: str
    users: np.ndarray  # (n,) user indices
    targets: np.ndarray  # (n,) target item per pool; -1 for fixed pools (see `relevant`)
    candidates: np.ndarray  # (n, size) item indices
    scores: np.ndarray  # (n, size) first-stage scores, aligned with candidates
    n_filled: np.ndarray  # (n,) negatives filled at random because the modality ran out
    rel_indptr: np.ndarray  # relevant items of pool p: rel_indices[rel_indptr[p]:rel_indptr[p+1]]
    rel_indices: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def relevant(self, p: int) -> np.ndarray:
        return self.rel_indices[self.rel_indptr[p] : self.rel_indptr[p + 1]]

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for a in (self.users, self.targets, self.candidates, self.scores, self.rel_indptr, self.rel_indices):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(json.dumps(self.meta, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def recall_ceiling(self) -> float:
        """Mean fraction of each pool's relevant items that the pool contains."""
        return float(np.mean([np.isin(self.relevant(p), self.candidates[p]).mean() for p in range(len(self))]))

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        arrays = {k: getattr(self, k) for k in ("users", "targets", "candidates", "scores", "n_filled", "rel_indptr", "rel_indices")}
        header = {"protocol": self.protocol, "family": self.family, "split": self.split, "meta": self.meta, "hash": self.content_hash()}
        np.savez_compressed(tmp, header=np.array(json.dumps(header)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> PoolSet:
        with np.load(path) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k] for k in z.files if k != "header"}
        pools = cls(header["protocol"], header["family"], header["split"], meta=header["meta"], **arrays)
        if pools.content_hash() != header["hash"]:
            msg = f"{path}: content hash mismatch (file changed or corrupt); rebuild it with `mma pools`"
            raise ValueError(msg)
        return pools


def pick_targets(split: Split, name: str, per_user: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The earliest `per_user` held-out positives of every user in split `name`: (users, items)."""
    df = split.frame(name).sort_values(["user", "timestamp", "item"], kind="stable")
    if per_user is not None:
        df = df.groupby("user", sort=True).head(per_user)
    return df["user"].to_numpy(), df["item"].to_numpy()


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(x.astype(np.float64), nan=np.nanmin(x) if np.isfinite(x).any() else 0.0)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


class _ModalitySignals:
    """Per-modality neighbour lists for mining negatives, and history scores for ranking, computed
    from a view only (so a masked modality contributes nothing)."""

    def __init__(self, view: ModalityView, retriever_config: RetrieverConfig):
        self.view = view
        self.sources: list[str] = []
        texts = view.item_texts()
        if texts is not None:
            import bm25s

            self.tokens = bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
            self.bm25 = bm25s.BM25()
            self.bm25.index(self.tokens, show_progress=False)
            self.sources.append("text")
        emb = view.image_embeddings()
        if emb is not None:
            self.img_ok = ~np.isnan(emb).any(axis=1)
            e = np.nan_to_num(emb)
            self.img = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            self.sources.append("image")
        inter = view.interactions()
        if inter is not None:
            self.co = (inter.T @ inter).tocsr()  # (n_items, n_items) co-interaction counts
            self.knn = ItemKNN().fit(view, retriever_config)
            self.sources.append("behaviour")
        if not self.sources:
            msg = "the view's mask hides every modality; a pool needs at least one"
            raise ValueError(msg)

    def neighbours(self, source: str, target: int) -> np.ndarray:
        """Items most similar to the target in one modality, best first (may be short)."""
        if source == "text":
            s = self.bm25.get_scores(self.tokens[target])
            order = np.argsort(-s, kind="stable")
            return order[s[order] > 0]
        if source == "image":
            if not self.img_ok[target]:
                return np.empty(0, dtype=np.int64)
            s = self.img @ self.img[target]
            s[~self.img_ok] = -np.inf
            order = np.argsort(-s, kind="stable")
            return order[np.isfinite(s[order])]
        row = self.co[target]
        order = np.argsort(-row.data, kind="stable")
        return row.indices[order]

    def history_scores(self, source: str, history: np.ndarray, cands: np.ndarray, user: int) -> np.ndarray:
        if len(history) == 0:
            return np.zeros(len(cands))
        if source == "text":
            query = [t for h in history[-50:] for t in self.tokens[h]]
            return self.bm25.get_scores(query)[cands]
        if source == "image":
            h = history[self.img_ok[history]]
            if len(h) == 0:
                return np.zeros(len(cands))
            s = self.img[cands] @ self.img[h].mean(axis=0)
            return np.where(self.img_ok[cands], s, np.nan)
        return self.knn.score(np.array([user]))[0, cands]


def build_family_pools(
    view: ModalityView,
    split: Split,
    family: str,
    target_split: str,
    config: PoolConfig,
    retriever_config: RetrieverConfig,
    *,
    targets: tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None = None,
) -> PoolSet:
    """Pools for the held-out targets of `target_split`, or for explicit `targets` =
    (users, items, histories), e.g. train-split targets with the history before them."""
    if view.mask != family_mask(family):
        msg = f"view mask {view.mask} does not match family {family!r} ({family_mask(family)})"
        raise ValueError(msg)
    from tqdm.auto import tqdm

    signals = _ModalitySignals(view, retriever_config)
    if targets is None:
        users, items = pick_targets(split, target_split, config.targets_per_user)
        histories = None
    else:
        users, items, histories = targets
    targets = items
    n, size = len(users), config.size
    cands = np.zeros((n, size), dtype=np.int64)
    scores = np.zeros((n, size), dtype=np.float32)
    filled = np.zeros(n, dtype=np.int64)
    for p in tqdm(range(n), desc=f"pools {family}/{target_split}", unit="pool"):
        u, t = int(users[p]), int(targets[p])
        rng = np.random.default_rng([config.seed, u, t])
        banned = set(view.known_positives(u).tolist()) | {t}
        lists = [signals.neighbours(s, t) for s in signals.sources]
        chosen: list[int] = []
        seen = set(banned)
        for rank in range(max(len(lst) for lst in lists) if lists else 0):
            for lst in lists:
                if rank < len(lst) and lst[rank] not in seen:
                    seen.add(int(lst[rank]))
                    chosen.append(int(lst[rank]))
            if len(chosen) >= size - 1:
                break
        chosen = chosen[: size - 1]
        need = size - 1 - len(chosen)
        if need:
            pool = np.setdiff1d(np.arange(view.n_items), np.fromiter(seen, dtype=np.int64))
            chosen += rng.choice(pool, size=need, replace=False).tolist()
        row = np.array([t, *chosen], dtype=np.int64)
        rng.shuffle(row)
        history = histories[p] if histories is not None else view.history(u, include_valid=target_split == "test")
        per_source = [_minmax(signals.history_scores(s, history, row, u)) for s in signals.sources]
        cands[p], scores[p], filled[p] = row, np.mean(per_source, axis=0), need
    meta = {"family": family, "mask": view.mask.to_dict(), "sources": signals.sources, "size": size, "seed": config.seed, "split_fingerprint": split.fingerprint()}
    indptr = np.arange(n + 1, dtype=np.int64)
    return PoolSet("family", family, target_split, users, targets, cands, scores, filled, indptr, targets.copy(), meta)


def build_fixed_pools(retriever: Retriever, retriever_name: str, split: Split, target_split: str, config: PoolConfig) -> PoolSet:
    """Top-`size` of a first-stage retriever over items unseen in train (and valid, for test)."""
    from mma_agent.metrics import topk_indices

    df = split.frame(target_split)
    users = np.unique(df["user"].to_numpy())
    excluded = split.matrix("train")
    if target_split == "test":
        excluded = excluded + split.matrix("valid")
    cands = np.zeros((len(users), config.size), dtype=np.int64)
    scores = np.zeros((len(users), config.size), dtype=np.float32)
    for lo in range(0, len(users), 256):
        b = users[lo : lo + 256]
        s = retriever.score(b).astype(np.float32)
        s[excluded[b].nonzero()] = -np.inf
        top = topk_indices(s, config.size)
        cands[lo : lo + len(b)] = top
        scores[lo : lo + len(b)] = np.take_along_axis(s, top, axis=1)
    rel = df.sort_values(["user", "timestamp", "item"], kind="stable").groupby("user")["item"].apply(np.asarray)
    rel_lists = [rel[u] for u in users]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rel_lists])]).astype(np.int64)
    meta = {"retriever": retriever_name, "size": config.size, "split_fingerprint": split.fingerprint()}
    return PoolSet(
        "fixed", "full", target_split, users, np.full(len(users), -1), cands, scores,
        np.zeros(len(users), dtype=np.int64), indptr, np.concatenate(rel_lists).astype(np.int64), meta,
    )  # fmt: skip


def pool_metrics(pools: PoolSet, scores: np.ndarray | None = None, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Rank each pool by `scores` (default: its first-stage scores) and average the metrics.
    Ties keep the pool's (shuffled) candidate order."""
    from mma_agent.metrics import batch_metrics

    scores = pools.scores if scores is None else scores
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(pools.candidates, order, axis=1)
    hits = np.stack([np.isin(ranked[p], pools.relevant(p)) for p in range(len(pools))])
    return batch_metrics(hits, np.diff(pools.rel_indptr), ks)
