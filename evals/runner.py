"""The evaluation graph: methods over episodes in batch, each result stored as it finishes.

A LangGraph `StateGraph` runs one (method, episode, seed): `score` (the method, with any
exception caught and recorded) -> `measure` (Eq. 2 fusion with the first-stage scores at every
alpha of the grid, and the ranking metrics of each) -> `store` (one committed SQLite row). The
runner feeds it with `.batch(..., max_concurrency=...)`, method by method, skipping the keys the
store already holds, with a progress bar per method.

Episodes are the saved protocol-v2 pools (identical for every method): per task family, each
user's top-100 from the family's first stage, on validation (to choose alpha) and test. The
relevant items are all of the user's held-out positives in the split, in the pool or not, so
Recall@100 (stored with every row) is the ceiling. Methods that call an LLM run on a fixed,
seeded subset of `llm_limit` pools per family and split (an int, or per family; the same nested
subsets for every method; `None` is every pool, and the limit is recorded per method), the
others on every pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from tqdm.auto import tqdm

from mma_agent.data.pools import PROTOCOL, NoFirstStageError
from mma_agent.graphs.fusion import fuse
from mma_agent.graphs.state import Episode
from mma_agent.metrics import hr_at_k, ndcg_at_k, recall_at_k
from mma_agent.modalities import TASK_FAMILIES, family_mask
from mma_agent.toolkits.workspace import Workspace
from mma_agent.util import minmax

from .environment import EvalEnv, Method
from .store import ResultStore, RunMismatchError

log = logging.getLogger(__name__)
ALPHAS = tuple(round(a, 1) for a in np.linspace(0.0, 1.0, 11))
HALVES = ("ndcg@10 half-a", "ndcg@10 half-b")  # NDCG@10 on each half of the relevant items (`relevant_halves`)
METRICS = (
    ("ndcg@10", ndcg_at_k, 10),
    ("hr@10", hr_at_k, 10),
    ("ndcg@20", ndcg_at_k, 20),
    ("hr@20", hr_at_k, 20),
    ("recall@100", recall_at_k, 100),
)
# recall@100 of a 100-item pool is the same for every ranking of it: the ceiling, stored with every row


def build_episodes(
    pipeline: Workspace, split: str, *, families: Sequence[str] | None = None, limit: Limit = None, seed: int = 0
) -> list[Episode]:
    """Episodes from the saved pools; `limit` keeps a seeded subset of pools per family. A family
    that no first-stage retriever can serve on this data set is skipped (its pools say why)."""
    sp = pipeline.split
    view = pipeline.view("full")
    episodes = []
    for family in families or TASK_FAMILIES:
        try:
            pools = pipeline.pools(family, split)
        except NoFirstStageError as err:
            log.warning("%s", err)
            continue
        for p in picked_pools(len(pools), family_limit(limit, family), seed):
            p = int(p)
            user = int(pools.users[p])
            hist = view.history(user, include_valid=split == "test")
            rel = [str(sp.item_ids[i]) for i in pools.relevant(p)]
            cands = [str(sp.item_ids[c]) for c in pools.candidates[p]]
            episodes.append(
                {
                    "split": split,
                    "protocol": PROTOCOL,
                    "family": family,
                    "pool": p,
                    "n_pools": len(pools),
                    "user": user,
                    "user_id": str(sp.user_ids[user]),
                    "cand_idx": pools.candidates[p],
                    "candidates": cands,
                    "first_stage_scores": [float(x) for x in pools.scores[p]],
                    "relevant": rel,
                    "target": str(sp.item_ids[pools.target(p)]),  # what the simulated user of MMA-Interactive is after
                    "mask": family_mask(family).to_dict(),
                    "hist_idx": hist,
                    "history": [str(sp.item_ids[i]) for i in hist],
                }
            )
    return episodes


Limit = int | None | Mapping[str, int | None]


def family_limit(limit: Limit, family: str) -> int | None:
    """The pools per split that `limit` gives `family`: an int for every family, or a mapping with
    an optional "*" default (a family it does not name, with no default: every pool)."""
    if isinstance(limit, Mapping):
        return limit.get(family, limit.get("*"))
    return limit


def _narrowest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def picked_pools(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """The seeded subset of `limit` pool indices out of n (all of them when limit is None)."""
    return np.arange(n) if limit is None else np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def subset(episodes: list[dict], limit: Limit, seed: int = 0) -> list[dict]:
    """`build_episodes(..., limit=limit)` from episodes built with no or a larger limit (the
    seeded subsets are prefixes of one permutation), without building them again."""
    keep = {
        (f, n): set(picked_pools(n, family_limit(limit, f), seed).tolist())
        for f, n in {(ep["family"], ep["n_pools"]) for ep in episodes}
    }
    return [ep for ep in episodes if ep["pool"] in keep[ep["family"], ep["n_pools"]]]


def relevant_halves(relevant: Collection[str]) -> tuple[set[str], set[str]] | None:
    """Two halves of an episode's relevant items, the same for every method (seeded by the set
    itself): the routing ceiling's split-half transfer. None with fewer than two."""
    import zlib

    rel = sorted(relevant)
    if len(rel) < 2:
        return None
    perm = np.random.default_rng(zlib.crc32("\x1f".join(rel).encode())).permutation(len(rel))
    return {rel[i] for i in perm[: len(rel) // 2]}, {rel[i] for i in perm[len(rel) // 2 :]}


def fused_metrics(
    first: np.ndarray, method: np.ndarray | None, candidates: list[str], relevant: list[str]
) -> dict[str, dict[str, float]]:
    """Eq. 2 at every alpha of the grid; `method=None` is the first-stage ranking at every alpha.
    Besides `METRICS`, NDCG@10 on each of the relevant items' two halves (`relevant_halves`)."""
    first = np.asarray(first, dtype=float)
    base = minmax(first) if method is None else None
    rel, halves = set(relevant), relevant_halves(relevant)
    out = {}
    for a in ALPHAS:
        final = base if method is None else fuse(first, np.asarray(method, dtype=float), a)
        ranking = [candidates[i] for i in np.argsort(-final, kind="stable")]
        out[str(a)] = {name: fn(ranking, rel, k) for name, fn, k in METRICS}
        if halves is not None:
            out[str(a)] |= {name: ndcg_at_k(ranking, half, 10) for name, half in zip(HALVES, halves, strict=True)}
    return out


class EvalState(TypedDict, total=False):
    method: str
    seed: int
    episode: dict
    scores: list | None
    info: dict
    error: str | None
    seconds: float
    metrics: dict


def create_eval_graph(methods: dict[str, Method], store: ResultStore, on_done=None):
    """score -> measure -> store, for one (method, episode, seed) per invocation."""
    from langgraph.graph import END, START, StateGraph

    def score(state: EvalState) -> dict:
        start = time.perf_counter()
        try:
            scores, info = methods[state["method"]].score(state["episode"])
            if scores is not None and (len(scores) != len(state["episode"]["candidates"]) or not np.isfinite(scores).all()):
                msg = f"returned {len(scores)} scores (finite: {bool(np.isfinite(scores).all())}) for {len(state['episode']['candidates'])} candidates"
                raise ValueError(msg)
            error = None
        except Exception as err:  # a crashing method is recorded, and the run goes on
            log.warning(
                "%s crashed on %s/%s pool %s: %s",
                state["method"],
                state["episode"]["protocol"],
                state["episode"]["family"],
                state["episode"]["pool"],
                err,
            )
            scores, info, error = None, {}, f"{type(err).__name__}: {err}"
        return {
            "scores": None if scores is None else [float(x) for x in scores],
            "info": info,
            "error": error,
            "seconds": time.perf_counter() - start,
        }

    def measure(state: EvalState) -> dict:
        ep = state["episode"]
        return {"metrics": fused_metrics(ep["first_stage_scores"], state["scores"], ep["candidates"], ep["relevant"])}

    def save(state: EvalState) -> dict:
        ep = state["episode"]
        status = "error" if state["error"] else "fallback" if state["scores"] is None else "ok"
        store.add(
            {
                "method": state["method"],
                "split": ep["split"],
                "protocol": ep["protocol"],
                "family": ep["family"],
                "pool": ep["pool"],
                "seed": state["seed"],
                "status": status,
                "metrics": state["metrics"],
                "info": state["info"],
                "error": state["error"],
                "seconds": state["seconds"],
            }
        )
        if on_done is not None:
            on_done(state)
        return {}

    g = StateGraph(EvalState)
    g.add_node("score", score)
    g.add_node("measure", measure)
    g.add_node("store", save)
    g.add_edge(START, "score")
    g.add_edge("score", "measure")
    g.add_edge("measure", "store")
    g.add_edge("store", END)
    return g.compile()


def _widest(old: int | None, new: int | None) -> int | None:
    return None if new is None or old is None else max(int(old), new)


def _llm_limits(before: dict, now: dict[str, dict[str, int | None]]) -> dict[str, dict[str, int | None]]:
    """Per LLM method and family, the widest subset it has run on (None: every pool). The seeded
    subsets are nested, so a method rerun with a larger limit keeps its rows and adds the rest."""
    out = {m: dict(v) for m, v in before.get("llm_limit", {}).items() if isinstance(v, dict)}
    for m, per_family in now.items():
        mine = out.setdefault(m, {})
        for f, lim in per_family.items():
            mine[f] = _widest(mine[f], lim) if f in mine else lim
    return out


def run_eval(
    pipeline: Workspace,
    store_path: Path,
    methods: list[Method],
    *,
    splits: Sequence[str] = ("valid", "test"),
    families: Sequence[str] | None = None,
    limit: Limit = None,
    llm_limit: Limit = 20,
    seeds: Sequence[int] = (0,),
    concurrency: int = 2,
    env: EvalEnv | None = None,
    notes: list[str] | None = None,
    fresh: bool | Collection[str] = False,
) -> dict[str, Any]:
    """Run every method on every episode (LLM methods on the seeded subset); resumable. `fresh`:
    drop the stored episodes of every method (True) or of the methods named, and run them again."""
    store = ResultStore(store_path)
    before = store.meta()
    if before and before.get("protocol") != PROTOCOL:
        store.close()
        raise RunMismatchError(
            f"{store_path} holds results on the old target-centred pools; protocol {PROTOCOL} needs a new run name"
        )
    families = list(families or TASK_FAMILIES)
    episodes: dict[tuple[str, bool], list[dict]] = {}
    for split in splits:
        episodes[split, False] = build_episodes(pipeline, split, families=families, limit=limit)
    ran = sorted({ep["family"] for eps in episodes.values() for ep in eps}, key=families.index)
    pools = {f"{f}:{s}": pipeline.pools(f, s).content_hash() for s in splits for f in ran}
    # a run may add splits or families to a store; the pools it shares must be the same
    clash = sorted(k for k, v in pools.items() if before.get("pools", {}).get(k, v) != v)
    if clash:
        raise RunMismatchError(
            f"{store_path} holds results on other pools for {clash} (the pools were rebuilt); use another run name"
        )
    small = {f: _narrowest(family_limit(limit, f), family_limit(llm_limit, f)) for f in ran}
    meta = {
        "protocol": PROTOCOL,
        "data": pipeline.split.fingerprint(),
        "limit": limit,
        "alphas": list(ALPHAS),
        "pools": {**before.get("pools", {}), **pools},
        "families": [f for f in TASK_FAMILIES if f in {*before.get("families", []), *ran}],
    }
    meta["groups"] = {**before.get("groups", {}), **{m.name: m.group for m in methods}}
    meta["uses_llm"] = {**before.get("uses_llm", {}), **{m.name: m.uses_llm for m in methods}}
    meta["fused"] = {**before.get("fused", {}), **{m.name: m.fused for m in methods}}
    meta["pool_structure"] = {**before.get("pool_structure", {}), **{m.name: m.uses_pool_structure for m in methods}}
    meta["llm_limit"] = _llm_limits(before, {m.name: small for m in methods if m.uses_llm})
    meta["order"] = [*before.get("order", []), *(m.name for m in methods if m.name not in before.get("order", []))]
    meta["first_stage"] = {
        **before.get("first_stage", {}),
        **{f: pipeline.pools(f, "test" if "test" in splits else splits[0]).meta["first_stage_name"] for f in ran},
    }
    meta["notes"] = notes or before.get("notes", [])
    store.check_meta(meta, compare=("protocol", "data", "limit"))
    if env is None:
        env = EvalEnv(pipeline, *pipeline.toolkits())
    for split in splits:
        episodes[split, True] = subset(episodes[split, False], small)
    lock = threading.Lock()
    summary = {}
    for method in methods:
        if (fresh is True or (fresh and method.name in fresh)) and (n := store.forget(method.name)):
            log.info("%s: dropped %d stored episodes (--fresh)", method.name, n)
        done = store.done(method.name)
        seeds_m = list(seeds) if method.stochastic else [seeds[0]]
        todo = [
            {"method": method.name, "seed": s, "episode": ep}
            for s in seeds_m
            for split in splits
            for ep in episodes[split, method.uses_llm]
            if (ep["split"], ep["protocol"], ep["family"], ep["pool"], s) not in done
        ]
        bar = tqdm(total=len(todo) + len(done), initial=len(done), desc=method.name[:36], unit="ep")

        def tick(_state, bar=bar):
            with lock:
                bar.update(1)

        graph = create_eval_graph({method.name: method}, store, on_done=tick)
        start = time.perf_counter()
        conc = concurrency if method.uses_llm else 1
        for seed in seeds_m:  # a stochastic method is set up once per seed (e.g. trained with it)
            mine = [t for t in todo if t["seed"] == seed]
            if not mine and seed != seeds_m[-1]:
                continue
            method.setup(env, seed=seed) if method.stochastic else method.setup(env)
            for i in range(0, len(mine), 64):
                graph.batch(mine[i : i + 64], config={"max_concurrency": conc})
        bar.close()
        summary[method.name] = {"new": len(todo), "resumed": len(done), "seconds": time.perf_counter() - start}
    store.close()
    return summary
