"""The reranker's request, response and state types, the request check, and the first-stage fallback.

A request carries item ids (what an app has); `validate` resolves them to catalogue indices once
and keeps both in the state, so no later node resolves an id again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

import numpy as np

from mma_agent.graphs.request import RerankRequest, parse_request, valid_pairs
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
    invalid_input: str  # set by the compiled reranker when the request is not a mapping: why it falls back


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


def validate_request(state: Any, catalogue: Catalogue) -> tuple[RerankRequest | None, str | None]:
    """The checked request, or the first problem with it, naming the field (the request model's
    checks, then the catalogue's: unknown candidates, an unknown user without a history)."""
    if state.get("invalid_input"):
        return None, str(state["invalid_input"])
    req, problem = parse_request(state)
    if req is None:
        return None, problem
    _, unknown = catalogue.resolve(req.candidates)
    if unknown:
        return None, f"candidates: unknown item id(s) {unknown[:5]}; every candidate must be in the catalogue"
    if req.history is None and req.user_id not in catalogue.split.user_index:
        return None, f"user_id: unknown user {req.user_id!r} and no history given; pass `history` (item ids the user liked)"
    return req, None


def first_stage_output(state: Any, reason: str, trace: list[dict] | None = None) -> RerankOutput:
    """The fallback, with its reason: exactly the first-stage order of the valid part of the pool
    (every candidate, for a valid request; see `valid_pairs` otherwise)."""
    state = state if isinstance(state, dict) else {}
    ranking, scores = valid_pairs(state.get("candidates"), state.get("first_stage_scores"))
    return {
        "ranking": ranking,
        "scores": scores,
        "mma_scores": {},
        "fallback": True,
        "reason": reason,
        "trace": trace if trace is not None else state.get("trace", []),
        "usage": state.get("usage", {}),
    }


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
        "calls": len(steps),
        "failed": sum(bool(t.get("null")) or bool(t.get("invalid")) for t in steps),
        "invalid": sum(bool(t.get("invalid")) for t in steps),
        "turns": len(acted),
        "first_action": next((t["action"].get("tool") for t in acted), None) or "none",
        "fallback": bool(out.get("fallback")),
        "reason": out.get("reason", ""),
        "ask_user": len(asked),
        "llm_ms": (out.get("usage") or {}).get("llm_ms", 0),
    }
