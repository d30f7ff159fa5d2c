"""Baselines beside the agents: CF retrievers re-scoring the pool, late fusion with completed
modalities, trained multimodal fusion, a listwise LLM, and the user's own rerankers (`UserMethod`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from mma_agent.evals.environment import Method
from mma_agent.modalities import Mask
from mma_agent.util import atomic_write, json_digest, l2_normalize, minmax

log = logging.getLogger(__name__)


class RetrieverMethod(Method):
    """A CF retriever re-scoring the pool; needs behaviour (it is learned from interactions)."""

    group = "first stage"

    def __init__(self, retriever: str) -> None:
        self.retriever, self.name = (
            retriever,
            {"popularity": "Popularity", "itemknn": "ItemKNN", "bprmf": "BPR-MF", "lightgcn": "LightGCN"}[retriever],
        )

    def setup(self, env):
        super().setup(env)
        self.model, _ = env.pipeline.retriever(self.retriever)

    def score(self, ep):
        if not ep["mask"]["behaviour"]:
            return None, {"reason": "behaviour is masked"}
        return self.model.score(np.array([ep["user"]]))[0][ep["cand_idx"]].astype(float), {}


class CompletionFusion(Method):
    """Late fusion of per-modality similarity to the history, masked modalities completed from a bank."""

    group = "completion"
    MODALITIES = ("text", "image", "behaviour")

    def __init__(self, imputation: str, k: int = 10, iterations: int = 10) -> None:
        if imputation not in ("zero", "mean", "neighbour-mean", "feature-propagation"):
            raise ValueError(f"unknown imputation {imputation!r}")
        self.imputation, self.k, self.iterations = imputation, k, iterations
        self.uses_pool_structure = imputation == "feature-propagation"  # edges between the episode's items
        self.name = {
            "zero": "Completion: zero",
            "mean": "Completion: mean",
            "neighbour-mean": "Completion: neighbour-mean",
            "feature-propagation": "Completion: feature propagation",
        }[imputation]

    def setup(self, env):
        super().setup(env)
        self.features = env.item_features
        # the bank: the catalogue items whose features an offline imputer may read, i.e. every item
        # but the episode's own (chosen without reading which items are held out, which would tell
        # the imputed features apart)
        self.bank = np.arange(env.pipeline.split.n_items, dtype=np.int64)

    def score(self, ep):
        visible = [m for m in self.MODALITIES if ep["mask"][m] and m in self.features]
        missing = [m for m in self.MODALITIES if not ep["mask"][m] and m in self.features]
        items = np.concatenate([ep["cand_idx"], ep["hist_idx"]])
        n_c = len(ep["cand_idx"])
        bank = self.bank[~np.isin(self.bank, items)]
        channels = []
        for m in visible:
            channels.append(_history_cosine(self.features[m][items], n_c))
        if missing and self.imputation != "zero" and visible:
            anchor = self.features[visible[0]]
            for m in missing:
                channels.append(_history_cosine(self._impute(anchor, self.features[m], items, bank), n_c))
        channels = [c for c in channels if np.ptp(c) > 0]
        if not channels:
            return None, {"reason": "no modality to score with"}
        return np.mean([minmax(c) for c in channels], axis=0), {"imputed": missing if self.imputation != "zero" else []}

    def _impute(self, anchor: np.ndarray, target: np.ndarray, items: np.ndarray, bank: np.ndarray) -> np.ndarray:
        if self.imputation == "mean":
            return np.repeat(target[bank].mean(axis=0, keepdims=True), len(items), axis=0)
        sims = anchor[items] @ anchor[bank].T  # episode items x bank, in a visible modality
        k = min(self.k, len(bank) - 1)
        nn = np.argpartition(-sims, k, axis=1)[:, :k]
        if self.imputation == "neighbour-mean":
            return l2_normalize(target[bank[nn]].mean(axis=1))
        # feature propagation (Rossi et al.; Malitesta et al. for missing modalities): each episode
        # item repeatedly takes the mean of its k nearest nodes among the episode items and the
        # bank, bank features clamped. Only unknown rows change, so only their kNN rows are needed.
        n = len(items)
        s_ii = anchor[items] @ anchor[items].T
        np.fill_diagonal(s_ii, -np.inf)
        s_all = np.concatenate([s_ii, sims], axis=1)
        k = min(self.k, s_all.shape[1] - 1)
        knn = np.argpartition(-s_all, k, axis=1)[:, :k]
        inner = knn < n
        from_bank = np.where(inner, 0, knn - n)
        const = (target[bank[from_bank]] * (~inner)[..., None]).sum(axis=1) / k  # the clamped neighbours' share
        x = np.zeros((n, target.shape[1]), dtype=np.float32)
        for _ in range(self.iterations):
            x = const + (x[np.where(inner, knn, 0)] * inner[..., None]).sum(axis=1) / k
        return l2_normalize(x)


class TrainedFusion(Method):
    """A scaled-down MARGO- or MAGNET-style model (see `fusion_models.py`), trained once on the
    train split and cached under the workdir."""

    group = "trained multimodal"
    stochastic = True

    def __init__(self, kind: str, seed: int = 0) -> None:
        self.kind, self.seed = kind, seed
        self.name = {"margo": "MARGO-style (reliability-weighted fusion)", "magnet": "MAGNET-style (dual view, role experts)"}[
            kind
        ]

    def setup(self, env, seed: int | None = None):
        import torch

        from .fusion_models import content_view, load_fusion, train_fusion

        super().setup(env)
        self.seed = self.seed if seed is None else seed
        if not hasattr(self, "features"):  # the same for every seed
            self.features = content_view(env.item_features) if self.kind == "magnet" else env.item_features
        full = env.catalogue.view(Mask())
        split = env.pipeline.split
        key = json_digest([split.fingerprint(), self.kind, {m: list(f.shape) for m, f in self.features.items()}, self.seed])
        path = env.pipeline.root / "evals" / f"{self.kind}-{key}.pt"
        dims = {m: f.shape[1] for m, f in self.features.items()}
        if path.is_file():
            self.model = load_fusion(self.kind, dims, torch.load(path))
        else:
            self.model = train_fusion(self.kind, self.features, [full.history(u) for u in range(split.n_users)], seed=self.seed)
            log.info("%s: loss per epoch %s, stages %s", self.name, [round(c, 4) for c in self.model.curve], self.model.stages)
            atomic_write(path, lambda tmp: torch.save(self.model.state_dict(), tmp))

    def score(self, ep):
        from .fusion_models import score_pool

        out = score_pool(self.model, self.features, ep["mask"], np.asarray(ep["hist_idx"]), np.asarray(ep["cand_idx"]))
        return out, {} if out is not None else {"reason": "no visible modality"}


class UserMethod(Method):
    """A reranker of the user's own, named `package.module:attr`: a callable, a compiled LangGraph
    graph (anything with `.invoke`), or an uncompiled `StateGraph`, taking the request that
    `create_mma_reranker` takes ({user_id, history, candidates, first_stage_scores, mask}) and
    returning per-candidate scores (a list aligned with the candidates, or {item_id: score}), a
    ranking (a list of item ids), or a dict holding one of them ("mma_scores", "scores",
    "ranking"; `fallback: True` means it could not help). It is fused with the first stage at its
    validation alpha like every method."""

    group = "user method"

    def __init__(self, spec: str, *, uses_llm: bool = False) -> None:
        self.spec, self.name, self.uses_llm = spec, spec, uses_llm
        self.target = load_object(spec)  # fail early, before any episode runs
        if hasattr(self.target, "compile") and not hasattr(self.target, "invoke"):
            self.target = self.target.compile()
        if not (callable(self.target) or hasattr(self.target, "invoke")):
            msg = f"--method {spec}: {type(self.target).__name__} is neither callable nor a graph with .invoke"
            raise ValueError(msg)

    def score(self, ep):
        request = {k: ep[k] for k in ("user_id", "history", "candidates", "first_stage_scores", "mask")}
        out = self.target.invoke(request) if hasattr(self.target, "invoke") else self.target(request)
        return scores_from_output(out, ep["candidates"]), {}


def load_object(spec: str) -> Any:
    """`package.module:attr` (attr may be dotted) -> the object; a ValueError says what is wrong."""
    import importlib

    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        msg = f"--method {spec!r}: expected package.module:attr, e.g. my_app.rerank:reranker"
        raise ValueError(msg)
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        msg = f"--method {spec!r}: cannot import {module!r} ({err}); is it on PYTHONPATH?"
        raise ValueError(msg) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            msg = f"--method {spec!r}: {module} has no attribute {attr!r}"
            raise ValueError(msg)
        obj = getattr(obj, part)
    return obj


def scores_from_output(out: Any, candidates: list[str]) -> np.ndarray | None:
    """Per-candidate scores from what a reranker returned (see `UserMethod`); None for a fallback.
    Candidates a score map or ranking leaves out come below every item it scored."""
    if isinstance(out, dict) and out.keys() & {"fallback", "mma_scores", "scores", "ranking"}:
        if out.get("fallback"):
            return None
        for key in ("mma_scores", "scores", "ranking"):
            if out.get(key) is not None:
                return scores_from_output(out[key], candidates)
        msg = f"the method returned a dict without mma_scores, scores or ranking (keys: {sorted(out)[:8]})"
        raise ValueError(msg)
    if isinstance(out, dict):  # {item_id: score}
        given = [float(v) for v in out.values()]
        floor = min(given, default=0.0) - 1.0
        return np.array([float(out[c]) if c in out else floor for c in candidates])
    if isinstance(out, list | tuple) and out and all(isinstance(x, str) for x in out):  # a ranking, best first
        pos = {c: r for r, c in enumerate(out)}
        return np.array([float(len(out) - pos[c]) if c in pos else 0.0 for c in candidates])
    arr = np.asarray(out, dtype=float).reshape(-1)
    if len(arr) != len(candidates):
        msg = f"the method returned {len(arr)} scores for {len(candidates)} candidates"
        raise ValueError(msg)
    return arr


class ListwiseLLM(Method):
    """RankGPT-style listwise reranking of the first-stage top window by the backend model."""

    group = "LLM"
    uses_llm = True

    def __init__(self, model: str, window: int = 20, history: int = 10) -> None:
        self.model_spec, self.window, self.history_len = model, window, history
        self.name = "LLM listwise (RankGPT-style)"

    def setup(self, env):
        super().setup(env)
        self.model = env.chat_model(self.model_spec, max_new_tokens=6 * self.window)

    def score(self, ep):
        if not ep["mask"]["text"]:
            return None, {"reason": "text is masked: no titles to rank by", "fallback": True}
        from langchain_core.messages import HumanMessage, SystemMessage

        view = self.env.catalogue.view(Mask(**ep["mask"]))
        first = np.asarray(ep["first_stage_scores"], dtype=float)
        top = np.argsort(-first, kind="stable")[: self.window]
        liked = "; ".join(view.item_field(int(i), "title") or "?" for i in ep["hist_idx"][-self.history_len :])
        listing = "\n".join(f"[{j + 1}] {view.item_field(int(ep['cand_idx'][i]), 'title')}" for j, i in enumerate(top))
        prompt = (
            f"The user recently liked: {liked}.\nRank these {len(top)} movies by how likely the user is to like them next.\n"
            f"{listing}\nAnswer only with the identifiers, best first, like [3] > [1] > [2]."
        )
        out = self.model.invoke([SystemMessage("You rank movies for a user."), HumanMessage(prompt)])
        order = []
        for m in re.findall(r"\[(\d+)\]", str(out.content)):
            j = int(m) - 1
            if 0 <= j < len(top) and j not in order:
                order.append(j)
        if not order:
            return None, {"reason": "no identifiers in the reply", "fallback": True}
        scores = minmax(first) * 0.5  # unranked: below every ranked one, first-stage order kept
        for rank, j in enumerate(order):
            scores[top[j]] = 2.0 - rank / len(top)
        return scores, {"ranked": len(order), "fallback": False}


def _history_cosine(feats: np.ndarray, n_candidates: int) -> np.ndarray:
    """Each candidate's mean cosine to the last 100 history items (rows after the candidates)."""
    cands, hist = feats[:n_candidates], feats[n_candidates:][-100:]
    if len(hist) == 0:
        return np.zeros(n_candidates)
    return (cands @ hist.T).mean(axis=1).astype(float)
