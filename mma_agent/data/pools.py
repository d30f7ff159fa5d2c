"""Candidate pools (protocol v2): each user's top-`size` over the whole catalogue, retrieved for
the user under the task family's mask.

For every task family and split, a first-stage retriever that sees only the family's surviving
modalities is queried with the user's history (the request) and returns its top-`size` over the
catalogue, the history itself excluded. Nothing is inserted: the user's held-out positives are
the relevant items, wherever the retriever put them, and Recall@size is the ceiling every
reranker shares. Construction never reads a held-out item (``tests/test_pools.py`` replaces every
user's held-out positives and checks that candidates and scores stay identical).

The retrievers (`HistoryRetrievers`), one per modality, all queried with the history only:

- **text**: BM25 over the items' text, the query being the text of the last `history_window`
  history items;
- **image**: cosine to the centroid of the history's poster embeddings (items without a poster
  cannot be retrieved by it);
- **behaviour**: LightGCN item vectors (trained on the train split), the user folded in as the
  mean of the history's vectors, so that a training episode's history before its target and an
  app's unknown user are queried the same way as an evaluation user.

A family with several surviving modalities uses the combination (one retriever alone, or the
reciprocal-rank fusion of several) with the best validation Recall@size among those its mask
allows; `select_first_stage` makes that choice and records every candidate's recall.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mma_agent.data.masks import ModalityView
from mma_agent.metrics import topk_indices
from mma_agent.util import atomic_write, digest

log = logging.getLogger(__name__)
PROTOCOL = "retrieval-v2"
SOURCES = ("text", "image", "behaviour")  # first-stage retrievers, one per modality
BEHAVIOUR_FEATURE = "lightgcn"  # the view feature (behaviour modality) holding LightGCN item vectors


class NoFirstStageError(ValueError):
    """No first-stage retriever can read what a family's mask leaves of this data set (say, image-only
    where no item has a poster): the family's pools are skipped, with this message as the reason."""


@dataclass(frozen=True, eq=False)
class PoolSet:
    """One family's pools on one split: `candidates[p]` in first-stage order with their scores,
    and the relevant (held-out) items of pool p, `relevant(p)`, which the pool may not contain."""

    family: str
    split: str
    users: np.ndarray  # (n,) user indices
    candidates: np.ndarray  # (n, size) item indices, best first-stage score first
    scores: np.ndarray  # (n, size) first-stage scores, aligned with candidates
    rel_indptr: np.ndarray  # relevant items of pool p: rel_indices[rel_indptr[p]:rel_indptr[p+1]]
    rel_indices: np.ndarray
    meta: dict = field(default_factory=dict)

    protocol = PROTOCOL

    def __len__(self) -> int:
        return len(self.users)

    def relevant(self, p: int) -> np.ndarray:
        return self.rel_indices[self.rel_indptr[p] : self.rel_indptr[p + 1]]

    def target(self, p: int) -> int:
        """The held-out item a simulated user (MMA-Interactive) answers about: the first relevant
        item the pool holds, else the first relevant item."""
        rel = self.relevant(p)
        inside = rel[np.isin(rel, self.candidates[p])]
        return int(inside[0] if len(inside) else rel[0])

    def content_hash(self) -> str:
        arrays = (
            np.ascontiguousarray(a).tobytes()
            for a in (self.users, self.candidates, self.scores, self.rel_indptr, self.rel_indices)
        )
        return digest([*arrays, json.dumps(self.meta, sort_keys=True)])

    def recall(self) -> np.ndarray:
        """(n,) fraction of each pool's relevant items that the pool holds."""
        return np.array(
            [np.isin(self.relevant(p), self.candidates[p]).mean() if len(self.relevant(p)) else 0.0 for p in range(len(self))]
        )

    def recall_ceiling(self) -> float:
        """Mean Recall@size: the ceiling, identical for every reranker of these pools."""
        return float(self.recall().mean()) if len(self) else 0.0

    def save(self, path: Path) -> Path:
        arrays = {k: getattr(self, k) for k in ("users", "candidates", "scores", "rel_indptr", "rel_indices")}
        header = {
            "protocol": PROTOCOL,
            "family": self.family,
            "split": self.split,
            "meta": self.meta,
            "hash": self.content_hash(),
        }
        return atomic_write(
            path, lambda tmp: np.savez_compressed(tmp, header=np.array(json.dumps(header)), **arrays), suffix=".tmp.npz"
        )

    @classmethod
    def load(cls, path: Path) -> PoolSet:
        with np.load(path) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k] for k in z.files if k != "header"}
        if header.get("protocol") != PROTOCOL:
            msg = f"{path}: pools of protocol {header.get('protocol', 'v1 (target-centred)')!r}, not {PROTOCOL!r}; rebuild them with `mma pools`"
            raise ValueError(msg)
        pools = cls(header["family"], header["split"], meta=header["meta"], **arrays)
        if pools.content_hash() != header["hash"]:
            msg = f"{path}: content hash mismatch (file changed or corrupt); rebuild it with `mma pools`"
            raise ValueError(msg)
        return pools


@dataclass(frozen=True)
class Queries:
    """Who the pools are for: per query a user, the history the retriever is queried with (also
    excluded from the pool), and the relevant items, which construction never reads."""

    users: np.ndarray
    histories: list[np.ndarray]
    relevant: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.users)


def heldout_queries(view: ModalityView, split, name: str) -> Queries:
    """One query per user with positives in split `name` ('valid' or 'test'): the history is the
    user's positives before it (train, plus validation for test), the relevant items all of the
    user's positives in `name`."""
    if name not in ("valid", "test"):
        msg = f"held-out queries come from 'valid' or 'test', not {name!r}; training episodes pass their own Queries"
        raise ValueError(msg)
    df = split.frame(name).sort_values(["user", "timestamp", "item"], kind="stable")
    users, rel = [], []
    for u, g in df.groupby("user", sort=True):
        users.append(int(u))
        rel.append(g["item"].to_numpy())
    hists = [view.history(u, include_valid=name == "test") for u in users]
    return Queries(np.array(users, dtype=np.int64), hists, rel)


class HistoryRetrievers:
    """The per-modality first-stage retrievers of one view, queried with a history only.

    `sources` lists the modalities this view lets them read (a masked modality has no retriever,
    and a modality with no data at all, e.g. no item has a poster, is reported and left out)."""

    def __init__(self, view: ModalityView, *, history_window: int = 50) -> None:
        self.view, self.window = view, history_window
        self.sources: list[str] = []
        self.missing: dict[str, str] = {}
        texts = view.item_texts()
        if texts is not None and any(t.strip() for t in texts):
            import bm25s

            self.tokens = bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
            self.bm25 = bm25s.BM25()
            self.bm25.index(self.tokens, show_progress=False)
            self.sources.append("text")
        elif texts is not None:
            self.missing["text"] = "no item has any text"
        emb = view.image_embeddings()
        if emb is not None:
            self.img_ok = np.isfinite(emb).all(axis=1) & (np.abs(np.nan_to_num(emb)).sum(axis=1) > 0)
            if self.img_ok.any():
                e = np.nan_to_num(emb.astype(np.float32))
                self.img = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
                self.sources.append("image")
            else:
                self.missing["image"] = "no item has a usable image embedding"
        elif view.mask.image:
            self.missing["image"] = "no image embeddings were given"
        vecs = view.feature(BEHAVIOUR_FEATURE)
        if vecs is not None:
            self.item_vecs = np.asarray(vecs, dtype=np.float32)
            self.sources.append("behaviour")
        elif view.mask.behaviour:
            self.missing["behaviour"] = f"no {BEHAVIOUR_FEATURE} item vectors were given"

    def score(self, source: str, history: np.ndarray) -> np.ndarray | None:
        """(n_items,) scores over the catalogue, -inf where this retriever cannot score an item;
        None when the history gives it no query (no history item with a poster, say)."""
        if source not in self.sources:
            msg = f"no {source!r} retriever in this view (available: {self.sources})"
            raise ValueError(msg)
        history = np.asarray(history, dtype=np.int64)
        if source == "text":
            query = [t for h in history[-self.window :] for t in self.tokens[h]]
            if not query:
                return None
            s = np.asarray(self.bm25.get_scores(query), dtype=np.float64)
            return np.where(s > 0, s, -np.inf)
        if source == "image":
            h = history[self.img_ok[history]] if len(history) else history
            if len(h) == 0:
                return None
            s = (self.img @ self.img[h].mean(axis=0)).astype(np.float64)
            return np.where(self.img_ok, s, -np.inf)
        if len(history) == 0:
            return None
        return (self.item_vecs @ self.item_vecs[history].mean(axis=0)).astype(np.float64)


def rrf(scores: Sequence[np.ndarray], k: float = 60.0) -> np.ndarray:
    """Reciprocal-rank fusion (Cormack et al. 2009): sum over retrievers of 1 / (k + rank), ranks
    from 1 over the items each retriever can score (-inf: not ranked by it)."""
    out = np.zeros(len(scores[0]))
    for s in scores:
        ok = np.isfinite(s)
        order = np.argsort(-np.where(ok, s, -np.inf), kind="stable")
        rank = np.empty(len(s))
        rank[order] = np.arange(1, len(s) + 1)
        out += np.where(ok, 1.0 / (k + rank), 0.0)
    return np.where(out > 0, out, -np.inf)


def combinations(sources: Sequence[str]) -> list[tuple[str, ...]]:
    """Every first-stage combination of the given sources: each alone, and every fusion of two or more."""
    return [c for n in range(1, len(sources) + 1) for c in itertools.combinations(sources, n)]


def combo_name(combo: Sequence[str]) -> str:
    names = {"text": "BM25 (text)", "image": "poster-CLIP centroid (image)", "behaviour": "LightGCN (behaviour)"}
    return names[combo[0]] if len(combo) == 1 else "RRF(" + " + ".join(combo) + ")"


def _first_stage(per_source: dict[str, np.ndarray | None], combo: Sequence[str], rrf_k: float) -> np.ndarray | None:
    parts = [per_source[s] for s in combo if per_source[s] is not None]
    if not parts:
        return None
    return parts[0] if len(combo) == 1 else rrf(parts, rrf_k)


def retrieve_pools(
    retrievers: HistoryRetrievers,
    combo: Sequence[str],
    queries: Queries,
    *,
    family: str,
    split: str,
    size: int,
    rrf_k: float = 60.0,
    meta: dict | None = None,
    progress: bool = True,
) -> PoolSet:
    """Each query's top-`size` of the `combo` first stage over the catalogue, its history excluded.
    A query the retrievers cannot serve (no usable history in the surviving modalities, fewer
    than `size` retrievable items) is skipped and counted in `meta["skipped"]`, never an error."""
    from tqdm.auto import tqdm

    bad = [s for s in combo if s not in retrievers.sources]
    if bad:
        msg = f"family {family!r}: first stage {list(combo)} needs {bad}, which this view cannot read (available: {retrievers.sources})"
        raise ValueError(msg)
    keep, cands, scores, skipped = [], [], [], Counter()
    for q in tqdm(range(len(queries)), desc=f"pools {family}/{split}", unit="pool", disable=not progress, mininterval=5):
        hist = np.asarray(queries.histories[q], dtype=np.int64)
        if len(hist) == 0:
            skipped["empty history"] += 1
            continue
        s = _first_stage({src: retrievers.score(src, hist) for src in combo}, combo, rrf_k)
        if s is None:
            skipped["no history item usable by " + "/".join(combo)] += 1
            continue
        s = s.copy()
        s[hist] = -np.inf  # known positives: never a candidate
        if np.isfinite(s).sum() < size:
            skipped[f"fewer than {size} retrievable items"] += 1
            continue
        top = topk_indices(s[None], size)[0]  # best first, ties by item index
        keep.append(q)
        cands.append(top)
        scores.append(s[top])
    if skipped:
        log.warning(
            "pools %s/%s: skipped %d of %d queries: %s", family, split, sum(skipped.values()), len(queries), dict(skipped)
        )
    rel = [np.asarray(queries.relevant[q], dtype=np.int64) for q in keep]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rel])]).astype(np.int64)
    meta = {
        **(meta or {}),
        "first_stage": list(combo),
        "first_stage_name": combo_name(combo),
        "size": size,
        "rrf_k": rrf_k,
        "queries": len(queries),
        "skipped": dict(skipped),
    }
    return PoolSet(
        family,
        split,
        queries.users[keep].astype(np.int64),
        np.array(cands, dtype=np.int64).reshape(-1, size),
        np.array(scores, dtype=np.float32).reshape(-1, size),
        indptr,
        np.concatenate(rel).astype(np.int64) if rel else np.empty(0, dtype=np.int64),
        meta,
    )


def select_first_stage(retrievers: HistoryRetrievers, queries: Queries, *, size: int, rrf_k: float = 60.0) -> dict[str, float]:
    """Validation Recall@size of every combination of `retrievers.sources` on `queries` (model
    selection: it reads the validation positives, as choosing any hyperparameter on validation does)."""
    from tqdm.auto import tqdm

    combos = combinations(retrievers.sources)
    hits = {c: [] for c in combos}
    for q in tqdm(range(len(queries)), desc="first-stage selection", unit="query", mininterval=5):
        hist = np.asarray(queries.histories[q], dtype=np.int64)
        rel = np.asarray(queries.relevant[q], dtype=np.int64)
        if len(hist) == 0 or len(rel) == 0:
            continue
        per_source = {s: retrievers.score(s, hist) for s in retrievers.sources}
        for c in combos:
            s = _first_stage(per_source, c, rrf_k)
            if s is None:
                hits[c].append(0.0)
                continue
            s = s.copy()
            s[hist] = -np.inf
            top = topk_indices(s[None], size)[0]
            top = top[np.isfinite(s[top])]
            hits[c].append(float(np.isin(rel, top).mean()))
    return {"+".join(c): float(np.mean(h)) if h else 0.0 for c, h in hits.items()}


def pool_metrics(pools: PoolSet, scores: np.ndarray | None = None, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Rank each pool by `scores` (default: its first-stage scores) and average the metrics
    (relevant items outside the pool count as misses). Ties keep the first-stage order."""
    from mma_agent.metrics import batch_metrics

    scores = pools.scores if scores is None else scores
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(pools.candidates, order, axis=1)
    hits = (
        np.stack([np.isin(ranked[p], pools.relevant(p)) for p in range(len(pools))])
        if len(pools)
        else np.zeros((0, pools.candidates.shape[1]), bool)
    )
    return batch_metrics(hits, np.diff(pools.rel_indptr), ks)
