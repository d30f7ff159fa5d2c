"""The reranker's request, response and state types, the one place a request is resolved, and
the first-stage fallback.

A request carries item ids (what an app has). `resolve_request` checks it once (the request
model, then the catalogue) into a :class:`Resolved`: index arrays, the first-stage scores as an
array and the complete mask. Every later node reads that; evidence stays arrays until `score`
builds the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

import numpy as np

from mma_agent.graphs.request import RerankRequest, parse_request, request_warnings, valid_pairs
from mma_agent.modalities import MODALITIES, Mask
from mma_agent.toolkits.base import Catalogue

VALIDATE, POLICY, TOOLS, SCORE, BUDGET_SPENT = "validate", "policy", "tools", "score", "budget_spent"
SCORE_TOOL = "score_candidates"  # the graph's own finishing action; every other action is a toolkit's tool
Variant = Literal["auto", "interactive", "rule"]
REQUEST_KEYS = ("user_id", "history", "candidates", "first_stage_scores", "mask", "target", "query")


class CatalogueIndices(TypedDict, total=False):
    """Evaluation only: the request's catalogue indices, for a caller that already holds them
    (checked for length and range; the ids are then not looked up again)."""

    candidates: np.ndarray  # (n,) aligned with the request's candidate ids
    history: np.ndarray  # (h,) oldest first
    user: int | None


class RerankInput(TypedDict, total=False):
    user_id: str  # a catalogue user; used for the history when `history` is not given
    history: list[str]  # item ids the user liked, oldest first
    candidates: list[str]  # the pool
    first_stage_scores: list[float]  # aligned with candidates
    max_turns: int  # budget, at most the configured maximum
    mask: dict[str, bool]  # evaluation only: hidden availability of text/image/behaviour
    target: str  # evaluation only: the held-out item the simulated user answers about
    query: str  # the person's request in their words (optional; data, never an instruction; capped)
    catalogue_indices: CatalogueIndices  # evaluation only: see CatalogueIndices
    invalid_input: str  # set by `guard_input` when the request is not a mapping: why it falls back
    unknown_keys: list[str]  # set by `guard_input` and the rerank tool: keys the request had that no field reads


class RerankOutput(TypedDict, total=False):
    ranking: list[str]
    warnings: list[str]  # what the request had that was ignored or cut (unknown keys, an over-long query)
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
    """The request resolved once by `validate`; nodes read it, never the raw request."""

    candidates: np.ndarray  # (n,) int64 catalogue indices, the pool in request order
    history: np.ndarray  # (h,) int64, oldest first; ids the catalogue does not know are dropped (and traced)
    first_stage: np.ndarray  # (n,) float64, aligned with candidates
    user: int | None  # None: a user the catalogue does not know (the request gave a history)
    target: int | None
    mask: dict[str, bool]  # every modality, True where the episode may see it
    query: str | None  # the person's words, checked (see RerankRequest.query)


class RerankState(RerankInput, RerankOutput, total=False):
    resolved: Resolved
    evidence: dict[str, np.ndarray]  # channel -> (n,) float64, one value per candidate
    nulls: list[str]
    action: dict
    turn: int


def rerank_request(episode: Episode | Mapping[str, Any], *, with_target: bool = True, with_indices: bool = True) -> RerankInput:
    """The request of an evaluation or training episode (any mapping with the request's keys).
    `with_target` lets the simulated user of MMA-Interactive answer about the held-out item;
    `with_indices` hands in the catalogue indices an evaluation episode already holds."""
    request = {k: episode[k] for k in REQUEST_KEYS if k in episode and (with_target or k != "target")}
    if with_indices and "cand_idx" in episode:
        request["catalogue_indices"] = {
            "candidates": episode["cand_idx"],
            "history": episode.get("hist_idx"),
            "user": episode.get("user"),
        }
    return request  # type: ignore[return-value]


def _int_or_none(i: Any) -> int | None:
    return None if i is None else int(i)


def _given_indices(raw: Any, req: RerankRequest, n_items: int) -> tuple[np.ndarray, np.ndarray | None, Any] | str:
    """(candidates, history or None, user) from `catalogue_indices`, or the problem with them."""
    if not isinstance(raw, Mapping):
        return f"catalogue_indices: expected a mapping, got {type(raw).__name__}"
    out = []
    for key, n in (("candidates", len(req.candidates)), ("history", None)):
        if raw.get(key) is None:
            out.append(None)
            continue
        arr = np.asarray(raw[key])
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu") or (n is not None and len(arr) != n):
            return f"catalogue_indices.{key}: need a flat integer array" + (f" of {n}, one per candidate" if n else "")
        if arr.size and (arr.min() < 0 or arr.max() >= n_items):
            return f"catalogue_indices.{key}: indices outside the catalogue's {n_items} items"
        out.append(arr.astype(np.int64))
    if out[0] is None:
        return "catalogue_indices.candidates: missing; pass one index per candidate"
    return out[0], out[1], raw.get("user")


def resolve_request(state: Mapping[str, Any], catalogue: Catalogue) -> tuple[RerankRequest, Resolved, list[dict]] | str:
    """The request checked and resolved once: (the checked request, its indices, trace events),
    or the first problem, naming the field (the request model's checks, then the catalogue's:
    unknown candidates, an unknown user without a history)."""
    if state.get("invalid_input"):
        return str(state["invalid_input"])
    req, problem = parse_request(state)
    if req is None:
        return str(problem)
    split, trace = catalogue.split, []
    given = state.get("catalogue_indices")
    if given is not None:
        got = _given_indices(given, req, len(split.item_ids))
        if isinstance(got, str):
            return got
        cands, hist, user = got
    else:
        cands, unknown = catalogue.resolve(req.candidates)
        if unknown:
            return f"candidates: unknown item id(s) {unknown[:5]}; every candidate must be in the catalogue"
        hist, user = None, split.user_index.get(req.user_id)
    mask = {m: True for m in MODALITIES} | (req.mask or {})
    if hist is None and req.history is not None:
        hist, unknown = catalogue.resolve(req.history)
        if unknown:
            trace.append({"event": "unknown history ids dropped", "ids": unknown})
    elif hist is None:
        if req.user_id not in split.user_index:
            return f"user_id: unknown user {req.user_id!r} and no history given; pass `history` (item ids the user liked)"
        hist = catalogue.view(Mask.of(mask)).history(split.user_index[req.user_id], include_valid=True)
    resolved: Resolved = {
        "candidates": np.asarray(cands, dtype=np.int64),
        "history": np.asarray(hist, dtype=np.int64),
        "first_stage": np.asarray(req.first_stage_scores, dtype=np.float64),
        "user": _int_or_none(user),
        "target": _int_or_none(split.item_index.get(req.target) if req.target else None),
        "mask": mask,
        "query": req.query,
    }
    return req, resolved, trace


def first_stage_output(state: Any, reason: str, trace: list[dict] | None = None) -> RerankOutput:
    """The fallback, with its reason: exactly the first-stage order of the pool (stable on ties).
    A resolved request's pool is already checked; a request that failed its check ranks its
    valid part (see `valid_pairs`)."""
    state = state if isinstance(state, dict) else {}
    resolved = state.get("resolved")
    if resolved is not None:
        order = np.argsort(-resolved["first_stage"], kind="stable")
        ranking = [state["candidates"][i] for i in order]
        scores = [float(resolved["first_stage"][i]) for i in order]
    else:
        ranking, scores = valid_pairs(state.get("candidates"), state.get("first_stage_scores"))
    return {
        "ranking": ranking,
        "scores": scores,
        "warnings": request_warnings(state),
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
