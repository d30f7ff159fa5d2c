"""Learned per-modality relevance: the channel each evidence toolkit adds beside its zero-shot ones.

A zero-shot channel (MiniLM or poster-CLIP cosine to the history, truncated PageRank) says how
alike two items are, not how likely this user is to like a candidate. The learned channels are
trained once on the train split's positives (never on validation or test positives) and chosen on
the validation pools of the modality's own task family, so each tool scores a pool with what its
modality alone can tell:

- text and image, :class:`TwoTower`: a user/item projection of the frozen MiniLM / poster-CLIP
  features trained with BPR (as the MARGO-style branches are), the user side the mean of the
  projected history. Trained with modality dropout at the item level: each training history
  keeps a random fraction of its items (short and cold histories are what the masks leave), and
  items without the feature (a missing poster) are left out of the history and never scored up.
- behaviour, the better on validation of :class:`ItemItem` EASE (Steck 2019, closed form,
  sparsified to each item's strongest weights) and LightGCN's item vectors as a :class:`TwoTower`.

A tool call stays a vector operation: a gather, a mean and one (n_candidates, k) product, or a
sparse row slice. Models save as one ``.npz`` each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mma_agent.util import atomic_write, l2_normalize

log = logging.getLogger(__name__)

Validator = Callable[["Relevance"], float]


def relevance_feature(modality: str) -> str:
    """The catalogue feature a modality's learned channel is stored under (masked with the modality)."""
    return f"{modality}_relevance"


class Relevance:
    """Scores a pool's candidates for a history; None when the history gives it nothing to go on."""

    kind: str

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def covered(self, items: np.ndarray) -> np.ndarray:
        """Which of `items` this model knows something about (a feature, an interaction)."""
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: np.savez(tmp, kind=np.array(self.kind), **self.arrays()), suffix=".tmp.npz")


@dataclass(frozen=True)
class TwoTower(Relevance):
    """score(c) = <item_vecs[c], normalize(mean of history_vecs over the history items that have one)>."""

    history_vecs: np.ndarray  # (n_items, k); NaN rows: items without the feature (left out of the user side)
    item_vecs: np.ndarray  # (n_items, k) unit rows; zero rows: items without the feature (no evidence either way)
    kind = "two-tower"

    def score(self, history, candidates):
        h = self.history_vecs[np.asarray(history[-100:], dtype=np.int64)]
        h = h[~np.isnan(h).any(axis=1)]
        if len(h) == 0:
            return None
        u = h.mean(axis=0)
        u /= np.linalg.norm(u) + 1e-12
        return (self.item_vecs[np.asarray(candidates, dtype=np.int64)] @ u).astype(np.float64)

    def covered(self, items):
        return ~np.isnan(self.history_vecs[np.asarray(items, dtype=np.int64)]).any(axis=1)

    def arrays(self):
        return {"history_vecs": self.history_vecs, "item_vecs": self.item_vecs}


@dataclass(frozen=True)
class ItemItem(Relevance):
    """score(c) = sum over history items h of weights[h, c] (EASE's B, sparsified)."""

    weights: sp.csr_matrix  # (n_items, n_items)
    known: np.ndarray  # (n_items,) bool: items with a train interaction
    kind = "item-item"

    def score(self, history, candidates):
        h = np.asarray(history[-100:], dtype=np.int64)
        h = h[self.known[h]]
        if len(h) == 0:
            return None
        return np.asarray(self.weights[h][:, np.asarray(candidates, dtype=np.int64)].sum(axis=0), dtype=np.float64).ravel()

    def covered(self, items):
        return self.known[np.asarray(items, dtype=np.int64)]

    def arrays(self):
        w = self.weights.tocsr()
        return {"data": w.data, "indices": w.indices, "indptr": w.indptr, "shape": np.array(w.shape), "known": self.known}


def load_relevance(path: Path) -> Relevance:
    with np.load(path) as z:
        kind = str(z["kind"])
        if kind == TwoTower.kind:
            return TwoTower(z["history_vecs"], z["item_vecs"])
        if kind == ItemItem.kind:
            return ItemItem(sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"])), z["known"])
    msg = f"{path}: unknown relevance model kind {kind!r}; delete it and rerun `mma relevance`"
    raise ValueError(msg)


def two_tower_of(vecs: np.ndarray) -> TwoTower:
    """A fixed embedding (e.g. LightGCN's item vectors) as a two-tower scorer: cosine to the history mean."""
    v = l2_normalize(np.nan_to_num(np.asarray(vecs, dtype=np.float32)))
    return TwoTower(v, v)


def train_two_tower(
    features: np.ndarray,
    train: sp.csr_matrix,
    validate: Validator,
    *,
    dim: int = 64,
    epochs: int = 30,
    batch: int = 1024,
    lr: float = 3e-3,
    tau: float = 0.1,
    keep: tuple[float, float] = (0.3, 1.0),
    patience: int = 4,
    seed: int = 0,
    desc: str = "two-tower",
) -> tuple[TwoTower, list[tuple[int, float, float]]]:
    """BPR on (user, train positive, random negative) with the user side the mean of a random
    fraction (uniform in `keep`) of the user's other train positives that have the feature; the
    epoch with the best `validate` score is kept. Returns the model and (epoch, loss, validation) rows."""
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    has = ~np.isnan(features).any(axis=1)
    x = torch.from_numpy(np.nan_to_num(features).astype(np.float32))
    r = train.tocsr().astype(np.float32)
    r = sp.csr_matrix(r.multiply(has[None, :].astype(np.float32)))  # history items without the feature say nothing
    r.eliminate_zeros()
    counts = np.diff(r.indptr)
    users, items = r.nonzero()
    ok = counts[users] >= 2  # a leave-one-out history needs another item
    pairs = np.stack([users[ok], items[ok]], axis=1)
    tower_u, tower_i = nn.Linear(x.shape[1], dim, bias=False), nn.Linear(x.shape[1], dim, bias=False)
    opt = torch.optim.Adam([*tower_u.parameters(), *tower_i.parameters()], lr=lr)
    candidates = np.flatnonzero(has)

    def snapshot() -> TwoTower:
        with torch.no_grad():
            hv = tower_u(x).numpy()
            iv = l2_normalize(tower_i(x).numpy())
        hv[~has], iv[~has] = np.nan, 0.0
        return TwoTower(hv.astype(np.float32), iv.astype(np.float32))

    curve, best, best_score, since = [], None, -np.inf, 0
    bar = tqdm(range(1, epochs + 1), desc=f"train {desc}", unit="epoch")
    for epoch in bar:
        order = rng.permutation(len(pairs))
        total = 0.0
        for s in range(0, len(order), batch):
            b = pairs[order[s : s + batch]]
            rows = r[b[:, 0]].tocoo()  # the batch users' histories, one row per pair
            frac = rng.uniform(*keep, size=len(b))
            kept = (rng.random(rows.nnz) < frac[rows.row]) & (rows.col != b[rows.row, 1])  # dropout; leave the positive out
            fallback = np.bincount(rows.row[kept], minlength=len(b)) == 0  # dropout left nothing: the full leave-one-out history
            kept |= fallback[rows.row] & (rows.col != b[rows.row, 1])
            hist = sp.csr_matrix((np.ones(kept.sum(), np.float32), (rows.row[kept], rows.col[kept])), shape=(len(b), x.shape[0]))
            hist = sp.diags(1.0 / np.maximum(np.asarray(hist.sum(axis=1)).ravel(), 1)) @ hist
            hc = hist.tocoo()
            mean = (
                torch.sparse_coo_tensor(np.vstack([hc.row, hc.col]), hc.data.astype(np.float32), hc.shape, check_invariants=False)
                @ x
            )
            u = nn.functional.normalize(tower_u(mean), dim=-1)
            pos = torch.from_numpy(b[:, 1])
            neg = torch.from_numpy(candidates[rng.integers(0, len(candidates), len(b))])
            sp_ = (u * nn.functional.normalize(tower_i(x[pos]), dim=-1)).sum(-1)
            sn = (u * nn.functional.normalize(tower_i(x[neg]), dim=-1)).sum(-1)
            loss = -nn.functional.logsigmoid((sp_ - sn) / tau).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        model = snapshot()
        score = validate(model)
        curve.append((epoch, total / len(pairs), score))
        bar.set_postfix(loss=f"{total / len(pairs):.4f}", valid=f"{score:.4f}", refresh=False)
        if score > best_score:
            best, best_score, since = model, score, 0
        else:
            since += 1
            if since >= patience:
                break
    return best, curve


def fit_ease(
    train: sp.csr_matrix,
    validate: Validator,
    *,
    lambdas: tuple[float, ...] = (50.0, 200.0, 500.0, 1000.0, 3000.0),
    topk: int = 200,
) -> tuple[ItemItem, list[tuple[float, float]]]:
    """EASE (B = I - P diagDiv(-1/diag P), P = (X^T X + lambda I)^-1, diag B = 0) for each lambda,
    each row of B kept to its `topk` largest weights; the lambda with the best `validate` score
    is kept. Returns the model and (lambda, validation) rows."""
    from tqdm.auto import tqdm

    x = train.tocsr().astype(np.float64)
    known = np.asarray(x.sum(axis=0)).ravel() > 0
    idx = np.flatnonzero(known)
    g = (x[:, idx].T @ x[:, idx]).toarray()
    curve, best, best_score = [], None, -np.inf
    for lam in tqdm(lambdas, desc="fit EASE", unit="lambda"):
        p = np.linalg.inv(g + lam * np.eye(len(idx)))
        b = p / -np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        k = min(topk, len(idx) - 1)
        cols = np.argpartition(-b, k - 1, axis=1)[:, :k]  # each row's k largest weights
        vals = np.take_along_axis(b, cols, axis=1).astype(np.float32)
        full = sp.csr_matrix((vals.ravel(), idx[cols.ravel()], np.arange(0, cols.size + 1, k)), shape=(len(idx), x.shape[1]))
        rows = sp.csr_matrix((np.ones(len(idx), np.float32), (idx, np.arange(len(idx)))), shape=(x.shape[1], len(idx)))
        model = ItemItem(sp.csr_matrix(rows @ full), known)
        score = validate(model)
        curve.append((lam, score))
        if score > best_score:
            best, best_score = model, score
    return best, curve


def pool_validator(pools, histories: list[np.ndarray]):
    """Validation NDCG@10 of a relevance model alone on a family's validation pools (each pool's
    candidates ranked by the model's score from its user's history; no score: first-stage order)."""
    from mma_agent.metrics import ndcg_at_k

    def validate(model: Relevance) -> float:
        out = []
        for p, hist in enumerate(histories):
            cands = pools.candidates[p]
            s = model.score(hist, cands)
            ranking = cands if s is None else cands[np.argsort(-s, kind="stable")]
            out.append(ndcg_at_k(ranking.tolist(), set(pools.relevant(p).tolist()), 10))
        return float(np.mean(out))

    return validate


def fit_channel(modality: str, train, validate, config, *, features=None, lightgcn_item_vecs=None) -> tuple[Relevance, dict]:
    """One modality's learned channel and its report: for behaviour, EASE over the lambdas of the
    config or LightGCN's item vectors, whichever validates better; for text and image, the two-tower
    model over `features` (`config`: the pipeline's RelevanceConfig)."""
    import time

    start = time.perf_counter()
    if str(modality) == "behaviour":
        ease, curve = fit_ease(train, validate, lambdas=config.ease_lambdas, topk=config.ease_topk)
        lightgcn = two_tower_of(lightgcn_item_vecs)
        lightgcn_valid = validate(lightgcn)
        use_ease = max(s for _, s in curve) >= lightgcn_valid
        model = ease if use_ease else lightgcn
        report = {
            "model": "EASE" if use_ease else "LightGCN item vectors",
            "curve": {"EASE lambda": curve},
            "LightGCN": lightgcn_valid,
        }
    else:
        model, curve = train_two_tower(
            features,
            train,
            validate,
            dim=config.dim,
            epochs=config.epochs,
            batch=config.batch_size,
            lr=config.lr,
            tau=config.tau,
            keep=config.keep,
            patience=config.patience,
            seed=config.seed,
            desc=f"{modality} relevance",
        )
        report = {
            "model": "two-tower BPR",
            "curve": {"epoch": [(e, v) for e, _, v in curve]},
            "loss": [(e, loss) for e, loss, _ in curve],
        }
    report.update(seconds=time.perf_counter() - start, valid=validate(model))
    return model, report
