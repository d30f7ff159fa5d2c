"""First-stage retrievers trained on the train split: Popularity, ItemKNN, BPR-MF, LightGCN.

Each reads interactions through a :class:`ModalityView` (they are the behaviour modality), scores
every catalogue item for a batch of users, and saves its parameters as one ``.npz``. BPR-MF and
LightGCN train with torch on the CPU (imported inside `fit`), BPR loss, uniform negative
sampling and early stopping on validation Recall@20.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from mma_agent.config import RetrieverConfig
from mma_agent.data.masks import ModalityView
from mma_agent.data.splits import Split
from mma_agent.metrics import batch_metrics, topk_indices
from mma_agent.util import atomic_write

log = logging.getLogger(__name__)

Validator = Callable[["Retriever"], float]


def _interactions(view: ModalityView, who: str) -> sp.csr_matrix:
    m = view.interactions()
    if m is None:
        msg = f"{who} needs the behaviour modality, which this view masks; use a mask with behaviour=True"
        raise ValueError(msg)
    return m


class Retriever:
    """Scores (n_users_batch, n_items); higher is better."""

    name: ClassVar[str]

    def fit(self, view: ModalityView, config: RetrieverConfig, validate: Validator | None = None) -> Retriever:
        raise NotImplementedError

    def score(self, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: np.savez(tmp, retriever=np.array(self.name), **self.arrays()), suffix=".tmp.npz")


class Popularity(Retriever):
    name = "popularity"

    def fit(self, view, config, validate=None):
        self.pop = np.asarray(_interactions(view, "popularity").sum(axis=0), dtype=np.float32).ravel()
        return self

    def score(self, users):
        return np.broadcast_to(self.pop, (len(users), len(self.pop))).copy()

    def arrays(self):
        return {"pop": self.pop}


class ItemKNN(Retriever):
    """Item-based CF: shrunk cosine item-item similarity, top-k neighbours per item."""

    name = "itemknn"

    def fit(self, view, config, validate=None):
        r = _interactions(view, "itemknn").astype(np.float32)
        self.r = r.tocsr()
        co = (r.T @ r).tocsr()  # (n_items, n_items) co-interaction counts
        co.setdiag(0)
        co.eliminate_zeros()
        norms = np.sqrt(np.asarray(r.sum(axis=0)).ravel())
        co = co.tocoo()
        vals = co.data / (norms[co.row] * norms[co.col] + config.knn_shrink)
        sim = sp.csr_matrix((vals.astype(np.float32), (co.row, co.col)), shape=co.shape)
        self.sim = keep_topk_per_row(sim, config.knn_neighbours)
        return self

    def score(self, users):
        return np.asarray((self.r[users] @ self.sim.T).todense(), dtype=np.float32)

    def arrays(self):
        s, r = self.sim.tocsr(), self.r.tocsr()
        return {
            "sim_data": s.data,
            "sim_indices": s.indices,
            "sim_indptr": s.indptr,
            "sim_shape": np.array(s.shape),
            "r_data": r.data,
            "r_indices": r.indices,
            "r_indptr": r.indptr,
            "r_shape": np.array(r.shape),
        }


def keep_topk_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's k largest entries (a sparse k-nearest-neighbour matrix)."""
    rows, cols, vals = [], [], []
    for i in range(m.shape[0]):
        lo, hi = m.indptr[i], m.indptr[i + 1]
        if hi == lo:
            continue
        d, c = m.data[lo:hi], m.indices[lo:hi]
        if len(d) > k:
            keep = np.argpartition(-d, k - 1)[:k]
            d, c = d[keep], c[keep]
        rows.append(np.full(len(d), i))
        cols.append(c)
        vals.append(d)
    if not rows:
        return sp.csr_matrix(m.shape, dtype=np.float32)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape)


class _Embedding(Retriever):
    """Shared BPR training loop for embedding models; subclasses define `propagate`."""

    def _init(self, view: ModalityView, config: RetrieverConfig):
        import torch

        torch.manual_seed(config.seed)
        self.r = _interactions(view, self.name).tocsr()
        n_u, n_i = self.r.shape
        self.user_emb0 = torch.nn.Parameter(torch.randn(n_u, config.dim) * 0.1)
        self.item_emb0 = torch.nn.Parameter(torch.randn(n_i, config.dim) * 0.1)

    def propagate(self):
        return self.user_emb0, self.item_emb0

    def fit(self, view, config, validate=None):
        import torch

        self._init(view, config)
        coo = self.r.tocoo()
        pos_u, pos_i = coo.row.astype(np.int64), coo.col.astype(np.int64)
        n_items = self.r.shape[1]
        known = np.sort(pos_u * n_items + pos_i)  # sorted keys for O(log n) membership tests
        rng = np.random.default_rng(config.seed)
        opt = torch.optim.Adam([self.user_emb0, self.item_emb0], lr=config.lr)
        best, best_state, bad, curve = -1.0, None, 0, []
        start = time.perf_counter()
        bar = tqdm(range(1, config.epochs + 1), desc=f"train {self.name}", unit="epoch")
        for epoch in bar:
            perm = rng.permutation(len(pos_u))
            losses = []
            for lo in range(0, len(perm), config.batch_size):
                b = perm[lo : lo + config.batch_size]
                u, i = pos_u[b], pos_i[b]
                j = _sample_negatives(u, n_items, known, rng)
                users, items = self.propagate()
                eu, ei, ej = users[u], items[i], items[j]
                loss = -torch.nn.functional.logsigmoid((eu * ei).sum(1) - (eu * ej).sum(1)).mean()
                ego = self.user_emb0[u].pow(2).sum() + self.item_emb0[i].pow(2).sum() + self.item_emb0[j].pow(2).sum()
                loss = loss + config.weight_decay * ego / (2 * len(b))
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            if validate is not None and epoch % config.eval_every == 0:
                self._freeze()
                metric = validate(self)
                curve.append((epoch, float(np.mean(losses)), metric))
                bar.set_postfix(loss=f"{np.mean(losses):.4f}", val_recall20=f"{metric:.4f}")
                if metric > best:
                    best, bad, best_state = metric, 0, (self.user_vecs.copy(), self.item_vecs.copy())
                else:
                    bad += 1
                    if bad >= config.patience:
                        log.info("%s: early stop at epoch %d (best val Recall@20 %.4f)", self.name, epoch, best)
                        break
        self._freeze()
        if best_state is not None:
            self.user_vecs, self.item_vecs = best_state
        self.curve = np.array(curve, dtype=np.float64).reshape(-1, 3)
        self.train_seconds = time.perf_counter() - start
        return self

    def _freeze(self):
        import torch

        with torch.no_grad():
            users, items = self.propagate()
            self.user_vecs, self.item_vecs = users.numpy().copy(), items.numpy().copy()

    def score(self, users):
        return self.user_vecs[users] @ self.item_vecs.T

    def arrays(self):
        return {"user_vecs": self.user_vecs, "item_vecs": self.item_vecs, "curve": self.curve}


def _sample_negatives(u: np.ndarray, n_items: int, known: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniform negative per row, resampled until it is not a train positive of that user."""
    j = rng.integers(0, n_items, size=len(u))
    for _ in range(100):
        keys = u * n_items + j
        pos = np.searchsorted(known, keys)
        clash = (pos < len(known)) & (known[np.minimum(pos, len(known) - 1)] == keys)
        if not clash.any():
            break
        j[clash] = rng.integers(0, n_items, size=int(clash.sum()))
    return j


class BPRMF(_Embedding):
    name = "bprmf"


class LightGCN(_Embedding):
    """He et al. 2020: embeddings smoothed over the normalised user-item graph, layers averaged."""

    name = "lightgcn"

    def _init(self, view, config):
        import torch

        super()._init(view, config)
        n_u, n_i = self.r.shape
        a = sp.bmat([[None, self.r], [self.r.T, None]]).tocsr().astype(np.float32)  # (n_u+n_i)^2
        deg = np.asarray(a.sum(axis=1)).ravel()
        d = np.power(deg, -0.5, out=np.zeros_like(deg), where=deg > 0).astype(np.float32)
        a = sp.diags(d) @ a @ sp.diags(d)
        a = a.tocoo()
        idx = torch.tensor(np.vstack([a.row, a.col]), dtype=torch.long)
        self.adj = torch.sparse_coo_tensor(idx, torch.tensor(a.data), a.shape, check_invariants=True).coalesce()
        self.layers = config.layers

    def propagate(self):
        import torch

        e = torch.cat([self.user_emb0, self.item_emb0])
        out = [e]
        for _ in range(self.layers):
            e = torch.sparse.mm(self.adj, e)
            out.append(e)
        e = torch.stack(out).mean(0)
        return e[: self.user_emb0.shape[0]], e[self.user_emb0.shape[0] :]


RETRIEVERS: dict[str, type[Retriever]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "bprmf": BPRMF,
    "lightgcn": LightGCN,
}


def create_retriever(name: str) -> Retriever:
    try:
        return RETRIEVERS[name]()
    except KeyError:
        msg = f"unknown retriever {name!r}; choose one of {sorted(RETRIEVERS)}"
        raise ValueError(msg) from None


def load_retriever(path: Path) -> Retriever:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    r = create_retriever(str(arrays.pop("retriever")))
    if isinstance(r, Popularity):
        r.pop = arrays["pop"]
    elif isinstance(r, ItemKNN):
        r.sim = sp.csr_matrix((arrays["sim_data"], arrays["sim_indices"], arrays["sim_indptr"]), shape=tuple(arrays["sim_shape"]))
        r.r = sp.csr_matrix((arrays["r_data"], arrays["r_indices"], arrays["r_indptr"]), shape=tuple(arrays["r_shape"]))
    else:
        r.user_vecs, r.item_vecs, r.curve = arrays["user_vecs"], arrays["item_vecs"], arrays["curve"]
    return r


def full_sort_metrics(retriever: Retriever, split: Split, target: str = "valid", ks: tuple[int, ...] = (20,)) -> dict[str, float]:
    """Rank the whole catalogue per user, train items (and validation items when `target` is test)
    excluded, against the user's positives in `target`."""
    df = split.frame(target)
    users = np.unique(df["user"].to_numpy())
    excluded = split.matrix("train")
    if target == "test":
        excluded = excluded + split.matrix("valid")
    relevant = split.matrix(target)
    kmax = max(ks)
    hits = np.zeros((len(users), kmax), dtype=bool)
    for lo in range(0, len(users), 512):
        b = users[lo : lo + 512]
        s = retriever.score(b).astype(np.float32)
        s[excluded[b].nonzero()] = -np.inf
        top = topk_indices(s, kmax)
        hits[lo : lo + len(b)] = np.asarray(relevant[b[:, None], top].todense(), dtype=bool)
    n_rel = np.asarray(relevant[users].sum(axis=1)).ravel()
    return {"users": len(users), **batch_metrics(hits, n_rel, ks)}
