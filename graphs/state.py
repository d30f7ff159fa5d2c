"""The reranker's request, response and state types, the request check, and the first-stage fallback.

A request carries item ids (what an app has); `validate` resolves them to catalogue indices once
and keeps both in the state, so no later node resolves an id again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, TypedDict

import numpy as np

from mma_agent.toolkits.base import Catalogue

VALIDATE, POLICY, TOOLS, SCORE, BUDGET_SPENT = "validate", "policy", "tools", "score", "budget_spent"
SCORE_TOOL = "score_candidates"  # the graph's own finishing action; every other action is a toolkit's tool
Variant = Literal["auto", "interactive", "rule"]
REQUEST_KEYS = ("user_id", "history", "candidates", "first_stage_scores", "mask", "target")


class RerankInput(TypedDict, total=False):
    user_id: str  # a catalogue user; used for the history when `history` is not given
    history: list[str]  # item ids the user liked, oldest first
    candidates: list[str]  # the pool
    first_stage_scores: list[float]  # aligned with candidates
    max_turns: int  # budget, at most the configured maximum
    mask: dict[str, bool]  # evaluation only: hidden availability of text/image/behaviour
    target: str  # evaluation only: the held-out item the simulated user answers about


class RerankOutput(TypedDict, total=False):
    ranking: list[str]
    scores: list[float]  # fused, aligned with `ranking`
    mma_scores: dict[str, float]
    fallback: bool
    reason: str
    trace: list[dict]
    usage: dict[str, int]
    messages: list[dict]  # the policy's conversation (system, request, actions, observations)


class Episode(RerankInput, total=False):
    """An evaluation or training episode: the reranker's request (ids, built once from the saved
    pools) plus what measuring it needs. `evals.runner.build_episodes` and
    `training.episodes.sample_episodes` build them; `rerank_request` takes the request out."""

    family: str  # the task family whose mask the request carries
    id: str  # training: family:user:target
    part: str  # training: support | query
    split: str  # evaluation: valid | test
    protocol: str  # evaluation: the pool protocol
    pool: int  # evaluation: the pool's row in its PoolSet
    n_pools: int  # evaluation: pools in the family's PoolSet (the seeded subsets depend on it)
    user: int  # evaluation: catalogue user index
    cand_idx: np.ndarray  # evaluation: (n,) catalogue indices of `candidates`
    hist_idx: np.ndarray  # evaluation: (h,) catalogue indices of `history`
    relevant: list[str]  # evaluation: every held-out positive of the user in the split


class Resolved(TypedDict):
    """The request's ids as catalogue indices, resolved once by `validate`."""

    history: list[int]  # oldest first; ids the catalogue does not know are dropped (and traced)
    candidates: list[int]  # the pool, in request order
    user: int | None  # None: a user the catalogue does not know (the request gave a history)
    target: int | None


class RerankState(RerankInput, RerankOutput, total=False):
    resolved: Resolved
    evidence: dict[str, list[float]]  # channel -> one value per candidate
    nulls: list[str]
    action: dict
    turn: int


def rerank_request(episode: Episode | Mapping[str, Any], *, with_target: bool = True) -> RerankInput:
    """The request of an evaluation or training episode (any mapping with the request's keys);
    `with_target` lets the simulated user of MMA-Interactive answer about the held-out item."""
    return {k: episode[k] for k in REQUEST_KEYS if k in episode and (with_target or k != "target")}  # type: ignore[return-value]


def validate_request(state: RerankState, catalogue: Catalogue) -> str | None:
    """The first problem with a request, naming the field; None when it is valid."""
    cands = state.get("candidates")
    if not isinstance(cands, list) or not cands:
        return "candidates: the pool is empty; pass a non-empty list of item ids"
    if len(set(cands)) != len(cands):
        dup = next(c for c in cands if cands.count(c) > 1)
        return f"candidates: duplicate item id {dup!r}; each candidate must appear once"
    scores = state.get("first_stage_scores")
    if not isinstance(scores, list) or len(scores) != len(cands):
        return f"first_stage_scores: need one score per candidate ({len(cands)}), got {len(scores) if isinstance(scores, list) else type(scores).__name__}"
    bad = [i for i, v in enumerate(scores) if not isinstance(v, int | float) or not math.isfinite(v)]
    if bad:
        return f"first_stage_scores: position {bad[0]} is {scores[bad[0]]!r}; scores must be finite numbers"
    mask = state.get("mask")
    if mask is not None and (not isinstance(mask, dict) or set(mask) - {"text", "image", "behaviour"}):
        return f"mask: {mask!r} must map some of 'text', 'image', 'behaviour' to true/false"
    _, unknown = catalogue.resolve(cands)
    if unknown:
        return f"candidates: unknown item id(s) {unknown[:5]}; every candidate must be in the catalogue"
    if "history" not in state and state.get("user_id") not in catalogue.split.user_index:
        return f"user_id: unknown user {state.get('user_id')!r} and no history given; pass `history` (item ids the user liked)"
    return None


def first_stage_output(state: RerankState, reason: str, trace: list[dict] | None = None) -> RerankOutput:
    """The fallback: the first-stage ranking (or the given order, if the scores are unusable), with the reason."""
    cands = list(state.get("candidates") or [])
    s = np.array([v if isinstance(v, int | float) and math.isfinite(v) else -np.inf for v in (state.get("first_stage_scores") or [])], dtype=float)
    if len(s) != len(cands):
        s = -np.arange(len(cands), dtype=float)  # keep the given order
    order = np.argsort(-s, kind="stable")
    return {
        "ranking": [cands[i] for i in order], "scores": [float(s[i]) for i in order], "mma_scores": {},
        "fallback": True, "reason": reason, "trace": trace if trace is not None else state.get("trace", []),
        "usage": state.get("usage", {}),
    }  # fmt: skip


def trace_stats(out: Mapping[str, Any]) -> dict:
    """Routing diagnostics of one reranker output: tool calls, failed calls (Null or invalid; the
    paper's failed-call rate), invalid actions, turns (every action, scoring included), the first
    action, questions to the user, fallback and its reason, LLM time."""
    from mma_agent.toolkits import tool_vocabulary

    tools = tool_vocabulary()
    acted = [t for t in out.get("trace", []) if t.get("action")]
    steps = [t for t in acted if (t["action"] or {}).get("tool") != SCORE_TOOL]
    asked = [t for t in steps if (spec := tools.get(t["action"].get("tool"))) is not None and not spec.automated]
    return {
        "calls": len(steps), "failed": sum(bool(t.get("null")) or bool(t.get("invalid")) for t in steps),
        "invalid": sum(bool(t.get("invalid")) for t in steps), "turns": len(acted),
        "first_action": next((t["action"].get("tool") for t in acted), None) or "none", "fallback": bool(out.get("fallback")),
        "reason": out.get("reason", ""), "ask_user": len(asked), "llm_ms": (out.get("usage") or {}).get("llm_ms", 0),
    }  # fmt: skip
