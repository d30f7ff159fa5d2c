"""`mma bench fuzz`: thousands of malformed and valid requests against the compiled reranker.

Each request starts from a real test pool (full family) and is bent by one seeded mutation from
`MUTATIONS`: a field dropped, set to a wrong type, a NumPy array, an overflowing or non-finite
score, duplicate or unknown ids, a huge pool, a non-mapping request, an odd mask or budget, and
so on (or left valid). The reranker runs with the rule policy (no LLM, so thousands of requests
fit in minutes; the boundary is the same for every policy). Counted: exceptions that reach the
caller, rankings that are not a permutation of the valid part of the pool, fallbacks without a
reason, fallbacks not in the first-stage order of the valid part; and the latency per request.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from mma_agent.toolkits.workspace import Workspace

Mutation = Callable[[dict, np.random.Generator, list[str]], object]


def _set(key: str, value_fn: Callable[[dict, np.random.Generator, list[str]], object]) -> Mutation:
    def mutate(req: dict, rng: np.random.Generator, catalogue_ids: list[str]) -> dict:
        return {**req, key: value_fn(req, rng, catalogue_ids)}

    return mutate


def _drop(key: str) -> Mutation:
    return lambda req, rng, ids: {k: v for k, v in req.items() if k != key}


MUTATIONS: dict[str, Mutation] = {
    "valid": lambda req, rng, ids: req,
    "valid, numpy arrays": lambda req, rng, ids: {
        **req,
        "candidates": np.array(req["candidates"]),
        "first_stage_scores": np.array(req["first_stage_scores"], np.float32),
    },
    "valid, integer scores": _set("first_stage_scores", lambda r, g, i: [int(x * 1000) for x in r["first_stage_scores"]]),
    "valid, history given": lambda req, rng, ids: {**req, "history": list(rng.choice(ids, 20, replace=False))},
    "valid, max_turns 1": _set("max_turns", lambda r, g, i: 1),
    **{f"no {k}": _drop(k) for k in ("user_id", "candidates", "first_stage_scores")},
    **{
        f"{k} None": _set(k, lambda r, g, i: None)
        for k in ("user_id", "candidates", "first_stage_scores", "history", "mask", "max_turns", "target")
    },
    **{
        f"{k} int": _set(k, lambda r, g, i: 7)
        for k in ("user_id", "candidates", "first_stage_scores", "history", "mask", "max_turns", "target")
    },
    **{
        f"{k} string": _set(k, lambda r, g, i: "318")
        for k in ("candidates", "first_stage_scores", "history", "mask", "max_turns")
    },
    **{f"{k} list of dicts": _set(k, lambda r, g, i: [{"a": 1}]) for k in ("user_id", "candidates", "history", "target")},
    "candidates empty": lambda req, rng, ids: {**req, "candidates": [], "first_stage_scores": []},
    "candidate duplicate at the end": lambda req, rng, ids: {
        **req,
        "candidates": [*req["candidates"][:-1], req["candidates"][0]],
    },
    "candidate unknown": lambda req, rng, ids: {**req, "candidates": [*req["candidates"][:-1], "no-such-item"]},
    "candidate dict": lambda req, rng, ids: {**req, "candidates": [{"id": 1}, *req["candidates"][1:]]},
    "candidates bytes": _set("candidates", lambda r, g, i: b"318"),
    "scores short": lambda req, rng, ids: {**req, "first_stage_scores": req["first_stage_scores"][:-3]},
    "scores long": lambda req, rng, ids: {**req, "first_stage_scores": [*req["first_stage_scores"], 1.0, 2.0]},
    "score NaN": lambda req, rng, ids: {**req, "first_stage_scores": [float("nan"), *req["first_stage_scores"][1:]]},
    "score inf": lambda req, rng, ids: {**req, "first_stage_scores": [*req["first_stage_scores"][:-1], float("inf")]},
    "score 10**400": lambda req, rng, ids: {**req, "first_stage_scores": [10**400, *req["first_stage_scores"][1:]]},
    "scores near 1.7e308": _set(
        "first_stage_scores", lambda r, g, i: [1.7e308 - k * 1e292 for k in range(len(r["first_stage_scores"]))]
    ),
    "score string": lambda req, rng, ids: {**req, "first_stage_scores": ["high", *req["first_stage_scores"][1:]]},
    "score bool": lambda req, rng, ids: {**req, "first_stage_scores": [True, *req["first_stage_scores"][1:]]},
    "mask strings": _set("mask", lambda r, g, i: {"text": "no", "image": "yes"}),
    "mask unknown key": _set("mask", lambda r, g, i: {"txt": False}),
    "mask all false": _set("mask", lambda r, g, i: {"text": False, "image": False, "behaviour": False}),
    "max_turns NaN": _set("max_turns", lambda r, g, i: float("nan")),
    "max_turns -1": _set("max_turns", lambda r, g, i: -1),
    "max_turns 0": _set("max_turns", lambda r, g, i: 0),
    "max_turns huge": _set("max_turns", lambda r, g, i: 10**9),
    "user unknown, no history": _set("user_id", lambda r, g, i: "nobody"),
    "user unknown, history": lambda req, rng, ids: {
        **req,
        "user_id": "nobody",
        "history": list(rng.choice(ids, 5, replace=False)),
    },
    "history with unknown ids": lambda req, rng, ids: {**req, "history": ["nope", *rng.choice(ids, 5, replace=False).tolist()]},
    "target list": _set("target", lambda r, g, i: ["318"]),
    "pool of 10,000": lambda req, rng, ids: {
        **req,
        "candidates": ids[:10_000],
        "first_stage_scores": rng.random(min(10_000, len(ids))).tolist(),
    },
    "pool of 10,001": lambda req, rng, ids: {
        **req,
        "candidates": [*ids, *(f"x{k}" for k in range(10_001 - len(ids)))][:10_001],
        "first_stage_scores": [0.0] * 10_001,
    },
    "extra field": lambda req, rng, ids: {**req, "debug": True},
    "request None": lambda req, rng, ids: None,
    "request list": lambda req, rng, ids: [req],
    "request string": lambda req, rng, ids: "rerank please",
    "request int": lambda req, rng, ids: 42,
}


def bench_fuzz(pipeline: Workspace, *, requests: int = 10_000, seed: int = 0, pools: int = 100) -> dict[str, list[dict]]:
    from mma_agent.evals.runner import build_episodes
    from mma_agent.graphs.guard import guard_input
    from mma_agent.graphs.request import valid_pairs
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.graphs.state import rerank_request

    catalogue, kits = pipeline.toolkits()
    graph = guard_input(create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule").compile())
    bases = [
        rerank_request(ep, with_target=False, with_indices=False)
        for ep in build_episodes(pipeline, "test", families=["full"], limit=pools, seed=seed)
    ]
    catalogue_ids = [str(i) for i in pipeline.split.item_ids]
    rng = np.random.default_rng(seed)
    names = list(MUTATIONS)
    counts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    failures: dict[str, str] = {}
    seconds = []
    for _ in tqdm(range(requests), desc="fuzz", unit="request"):
        kind = names[int(rng.integers(len(names)))]
        request = MUTATIONS[kind](dict(bases[int(rng.integers(len(bases)))]), rng, catalogue_ids)
        kinds[kind] += 1
        start = time.perf_counter()
        try:
            out = graph.invoke(request)
        except Exception as err:  # what the benchmark counts: an exception that reaches the caller
            counts["exceptions to the caller"] += 1
            failures.setdefault(kind, f"{type(err).__name__}: {err}"[:120])
            continue
        finally:
            seconds.append(time.perf_counter() - start)
        cands = request.get("candidates") if isinstance(request, dict) else None
        scores = request.get("first_stage_scores") if isinstance(request, dict) else None
        valid_ids, valid_scores = valid_pairs(cands, scores)
        ranking = out.get("ranking", [])
        if out.get("fallback"):
            counts["fallbacks"] += 1
            if not out.get("reason"):
                counts["fallbacks without a reason"] += 1
                failures.setdefault(kind, "fallback without a reason")
            if (ranking, out.get("scores")) != (valid_ids, valid_scores):
                counts["fallbacks not in first-stage order"] += 1
                failures.setdefault(kind, "fallback not in the first-stage order of the valid part")
        elif sorted(ranking) != sorted(valid_ids) or len(set(ranking)) != len(ranking):
            counts["non-permutation rankings"] += 1
            failures.setdefault(kind, "ranking is not a permutation of the pool")
    ms = np.array(seconds) * 1000
    summary = [
        {
            "requests": requests,
            "mutation kinds": len(kinds),
            **{
                k: counts[k]
                for k in (
                    "exceptions to the caller",
                    "non-permutation rankings",
                    "fallbacks without a reason",
                    "fallbacks not in first-stage order",
                )
            },
            "fallbacks": counts["fallbacks"],
            "p50 ms": f"{np.percentile(ms, 50):.1f}",
            "p99 ms": f"{np.percentile(ms, 99):.1f}",
            "max ms": f"{ms.max():.0f}",
        }
    ]
    failing = [{"mutation": k, "first failure": v} for k, v in sorted(failures.items())]
    title = f"Fuzz: {requests} requests from {len(bases)} full-family test pools, {len(MUTATIONS)} mutation kinds (seed {seed}), rule policy"
    out = {title: summary}
    if failing:
        out["Mutations that broke a promise"] = failing
    return out
