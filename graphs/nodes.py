"""The reranker's nodes and routers, as module-level functions.

Each node takes the state and LangGraph's `Runtime`, whose `context` is a :class:`RerankContext`:
the run-scoped dependencies (catalogue, toolkits, policy, settings), LangGraph's `context_schema`.
The factory builds one and uses it when a run brings none (`with_context`); a host may pass its
own per run (`invoke(request, context=RerankContext(...))`), and a test calls a node alone with
`Runtime(context=...)`. Nodes return partial updates; routers return the next node's name.

Every policy action and tool call writes one progress event to LangGraph's custom stream
(`stream_mode="custom"`; a parent graph streaming with `subgraphs=True` receives them), and so
does a fallback, with its reason: see :class:`Progress`.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np
from langgraph.errors import NodeError
from langgraph.graph import END
from langgraph.runtime import Runtime

from mma_agent.graphs.fusion import fuse, scores_per_item, weighted_evidence
from mma_agent.graphs.policy import Policy, Router, completions, rule_action, scoring_only
from mma_agent.graphs.prompts import PromptStyle, observation_prompt, request_prompt, system_prompt, withhold_request
from mma_agent.graphs.request import request_warnings
from mma_agent.graphs.state import (
    BUDGET_SPENT,
    POLICY,
    SCORE,
    SCORE_TOOL,
    TOOLS,
    RerankState,
    Variant,
    first_stage_output,
    resolve_request,
)
from mma_agent.modalities import Mask
from mma_agent.toolkits.base import Catalogue, EpisodeContext, Evidence, Toolkit, ToolVocabulary, request_parts


class Progress(TypedDict, total=False):
    """One event on the custom stream. `event` is one of:
    "mma.action" (the policy chose `tool` with `args` on `turn`, in `ms` of LLM time),
    "mma.tool" (`tool` ran with `args`: `null` True with the `observation` why, or its
    `evidence` summary; `invalid` names an action that could not run),
    "mma.scored" (the ranking is fused with `args`, the weights, in `ms`),
    "mma.fallback" (the first-stage ranking is returned, with the `reason`)."""

    event: str
    turn: int
    tool: str | None
    args: dict
    null: bool
    evidence: str
    observation: str
    invalid: str
    reason: str
    ms: int


@dataclass(frozen=True)
class RerankContext:
    """The run-scoped dependencies of one reranker (LangGraph's `context_schema`)."""

    # empty by default: a LangGraph server builds the context schema from a run's (JSON) context,
    # which cannot carry these; a context without a catalogue is the factory's (`with_context`)
    catalogue: Catalogue | None = None
    toolkits: dict[str, Toolkit] = field(default_factory=dict)
    tools: ToolVocabulary | None = None
    policy: Policy | None = None  # None: the rule variant (`router` acts)
    variant: Variant = "auto"
    alpha: float = 0.5
    max_turns: int = 8
    scoring: str = "weights"
    router: Router = field(default=rule_action)
    prompt: PromptStyle = "compact"

    def vocabulary(self, state: RerankState) -> ToolVocabulary:
        """The tools of this request: with the request tools when it has words (`for_request`)."""
        return self.tools.for_request(state["resolved"].get("query"))

    def offered(self, vocab: ToolVocabulary) -> list[str]:
        # MMA-Auto is offered the automated tools; MMA-Interactive also asks; a router (the rule
        # variant) may take any tool (RuleRouter-Fuse never asks; an interactive lookup table does)
        return vocab.names(interactive=self.variant != "auto")

    def episode(self, state: RerankState) -> EpisodeContext:
        """What the tools of this request may see: the arrays `validate` resolved, under its mask."""
        r = state["resolved"]
        ask = ask_person if r["target"] is None else None  # evaluation: the simulated user answers about the target
        view = self.catalogue.view(Mask.of(r["mask"]))
        return EpisodeContext(
            view,
            r["history"],
            r["candidates"],
            r["user"],
            r["target"],
            ask,
            r["first_stage"],
            r.get("query"),
            item_words=self.scoring == "scores",
        )


def with_context(runtime: Runtime, default: RerankContext) -> Runtime[RerankContext]:
    """The run's runtime, with the reranker's own context when the run brought none of its type
    (a plain `invoke`, a parent graph whose context is its own, a LangGraph server's empty one)."""
    ctx = runtime.context
    return runtime if isinstance(ctx, RerankContext) and ctx.catalogue is not None else runtime.override(context=default)


def ask_person(modality_type: str, question: str) -> object:
    """In an app, a question pauses the graph (LangGraph `interrupt`); resuming returns the answer,
    whatever the app sent: `ask_user` checks and caps it before any work (`clarify.checked_answer`)."""
    from langgraph.types import interrupt

    return interrupt({"question": question, "modality_type": modality_type})


def _ms(t0: float) -> int:
    return int(1000 * (time.perf_counter() - t0))


def fallback(state: Any, runtime: Runtime, reason: str, trace: list[dict] | None = None) -> dict:
    """The first-stage ranking with its reason (`first_stage_output`), announced on the stream."""
    runtime.stream_writer(Progress(event="mma.fallback", reason=reason))
    return dict(first_stage_output(state, reason, trace))


# --- nodes ---------------------------------------------------------------------------------
def validate(state: RerankState, runtime: Runtime[RerankContext]) -> dict:
    ctx = runtime.context
    got = resolve_request(state, ctx.catalogue)
    if isinstance(got, str):
        return {**fallback(state, runtime, f"invalid request: {got}", []), "turn": 0}
    req, resolved, trace = got
    budget = min(req.max_turns or ctx.max_turns, ctx.max_turns)
    vocab = ctx.tools.for_request(resolved["query"])
    messages = [
        {"role": "system", "content": system_prompt(ctx.offered(vocab), ctx.scoring, budget, tools=vocab, style=ctx.prompt)},
        {
            "role": "user",
            "content": request_prompt(len(resolved["history"]), len(resolved["candidates"]), resolved["query"], style=ctx.prompt),
        },
    ]
    return {
        "candidates": req.candidates,  # the ids as checked (str); the output ranks these
        "resolved": resolved,
        "warnings": request_warnings(state),
        "messages": messages,
        "evidence": {},
        "nulls": [],
        "trace": trace,
        "turn": 0,
        "max_turns": budget,
        "fallback": False,
        "reason": "",
        "usage": {"llm_calls": 0, "input_tokens": 0, "output_tokens": 0, "llm_ms": 0},
    }


def _allowed(state: RerankState, ctx: RerankContext, turn: int) -> list[str]:
    """The actions constrained decoding may complete on this turn."""
    vocab = ctx.vocabulary(state)
    parts = request_parts(state["resolved"].get("query"))
    return completions(vocab, ctx.offered(vocab), state["trace"], last_turn=turn >= state["max_turns"], parts=parts)


def _acted(state: RerankState, runtime: Runtime[RerankContext], turn: int, reply: str, meta: dict) -> dict:
    """The policy's update for one reply: the action, the usage, the conversation; announced."""
    usage = dict(state["usage"])
    usage["llm_calls"] += meta.get("calls", 1)
    usage["input_tokens"] += meta.get("input_tokens", 0)
    usage["output_tokens"] += meta.get("output_tokens", 0)
    usage["llm_ms"] += int(1000 * meta.get("seconds", 0.0))
    action = Policy.action(reply, meta)
    runtime.stream_writer(
        Progress(
            event="mma.action",
            turn=turn,
            tool=action.get("tool"),
            args=action.get("args", {}),
            ms=int(1000 * meta.get("seconds", 0.0)),
        )
    )
    messages = [*state["messages"], {"role": "assistant", "content": reply}]
    return {"action": action, "turn": turn, "usage": usage, "messages": messages}


def _ruled(state: RerankState, runtime: Runtime[RerankContext], turn: int) -> dict:
    action = runtime.context.router(runtime.context.vocabulary(state), state["trace"])
    runtime.stream_writer(Progress(event="mma.action", turn=turn, tool=action["tool"], args=action.get("args", {}), ms=0))
    return {"action": action, "turn": turn}


def _weights_request(state: RerankState, allowed: list[str], reply: str, meta: dict) -> tuple[list[dict], list[str]] | None:
    """When a reply scores a request that has words, the weights are asked again from the
    conversation with the words withheld (`prompts.withhold_request`), among the scoring actions
    only: the words choose what to gather, never how to weigh it, so an instruction in a request
    has nothing to act on. Returns (that conversation, those actions), or None (no words, or not
    scoring: the reply stands)."""
    query = state["resolved"].get("query")
    if not query or Policy.action(reply, meta).get("tool") != SCORE_TOOL:
        return None
    return withhold_request(state["messages"], query), scoring_only(allowed)


def _both(first: dict, reply: str, meta: dict) -> tuple[str, dict]:
    """The weights' reply, with the usage of both calls (`calls`: 2)."""
    both = {k: first.get(k, 0) + meta.get(k, 0) for k in ("input_tokens", "output_tokens", "total_tokens", "seconds")}
    return reply, {**meta, **both, "calls": 2}


def _left(ctx: RerankContext, runtime: Runtime) -> float | None:
    left = ctx.policy.time_left(runtime.execution_info)
    return None if left is None else max(left, 0.01)


def policy(state: RerankState, runtime: Runtime[RerankContext]) -> dict:
    """One action: the router's (rule variant) or the LLM's. A backend error is raised as a
    `BackendError` (transient ones are retried by the node's `RetryPolicy`; `backend_failed`
    turns the last one into the fallback)."""
    ctx, turn = runtime.context, state["turn"] + 1
    if ctx.policy is None:
        return _ruled(state, runtime, turn)
    allowed = _allowed(state, ctx, turn)
    try:
        reply, meta = ctx.policy.ask(state["messages"], allowed, timeout=_left(ctx, runtime))
        if again := _weights_request(state, allowed, reply, meta):
            reply, meta = _both(meta, *ctx.policy.ask(*again, timeout=_left(ctx, runtime)))
    except Exception as err:
        raise ctx.policy.error(err, runtime.execution_info) from err
    return _acted(state, runtime, turn, reply, meta)


async def apolicy(state: RerankState, runtime: Runtime[RerankContext]) -> dict:
    """`policy` for `ainvoke`/`astream`/`abatch`: the chat model's async API, awaited."""
    ctx, turn = runtime.context, state["turn"] + 1
    if ctx.policy is None:
        return _ruled(state, runtime, turn)
    allowed = _allowed(state, ctx, turn)
    try:
        reply, meta = await ctx.policy.aask(state["messages"], allowed, timeout=_left(ctx, runtime))
        if again := _weights_request(state, allowed, reply, meta):
            reply, meta = _both(meta, *await ctx.policy.aask(*again, timeout=_left(ctx, runtime)))
    except Exception as err:
        raise ctx.policy.error(err, runtime.execution_info) from err
    return _acted(state, runtime, turn, reply, meta)


def backend_failed(state: RerankState, error: NodeError, runtime: Runtime[RerankContext]) -> dict:
    """The policy node's error handler (after its retries): the fallback, with the reason."""
    err = getattr(error, "error", error)
    cause = err.__cause__ if err.__cause__ is not None else err
    if isinstance(cause, concurrent.futures.TimeoutError):
        kind = "timed out"
    else:
        kind = f"failed ({type(cause).__name__}: {cause})" + (
            f" {err.attempts_note}" if getattr(err, "attempts_note", "") else ""
        )
    return {**fallback(state, runtime, f"LLM backend {kind}"), "turn": state.get("turn", 0) + 1}


def run_tool(state: RerankState, runtime: Runtime[RerankContext]) -> dict:
    ctx, t0 = runtime.context, time.perf_counter()
    action, turn = state["action"], state["turn"]
    tool, args = action.get("tool"), action.get("args", {})
    entry: dict[str, Any] = {"turn": turn, "action": {"tool": tool, "args": args}}
    shown = None  # what the policy reads: the observation, or in the compact style the evidence's summary
    evidence, nulls = dict(state["evidence"]), list(state["nulls"])
    offered = ctx.offered(ctx.vocabulary(state))
    event = Progress(event="mma.tool", turn=turn, tool=tool, args=args)
    if tool is None:
        entry.update(invalid=action["invalid"], observation=f"Invalid action ({action['error']}).")
    elif tool not in offered:
        entry.update(invalid="unknown_tool", observation=f"Unknown tool {tool!r}. Tools: {', '.join(offered)}, {SCORE_TOOL}.")
    elif tool in nulls:
        entry.update(invalid="repeated_null", observation=f"{tool} already answered Null; it will not change.")
    else:
        kit = ctx.toolkits.get(ctx.tools.owner(tool))
        ev = Evidence.none(tool, "this tool is not configured.") if kit is None else kit.call(tool, ctx.episode(state), **args)
        entry.update(observation=ev.observation, null=ev.null)
        if ctx.prompt == "compact":
            shown = ev.brief
        if ev.null:
            nulls.append(tool)
        evidence.update({k: np.asarray(v, dtype=np.float64) for k, v in ev.channels.items()})
        event.update(null=ev.null, **({"observation": ev.observation} if ev.null else {"evidence": ev.brief}))
    if "invalid" in entry:
        event.update(invalid=entry["invalid"], observation=entry["observation"])
    runtime.stream_writer({**event, "ms": _ms(t0)})
    trace = [*state["trace"], entry]
    messages = [
        *state.get("messages", []),
        {
            "role": "user",
            "content": observation_prompt(shown or entry["observation"], turn, state["max_turns"], style=ctx.prompt),
        },
    ]
    return {"trace": trace, "evidence": evidence, "nulls": nulls, "messages": messages}


def score(state: RerankState, runtime: Runtime[RerankContext]) -> dict:
    ctx, t0 = runtime.context, time.perf_counter()
    cands, first = state["candidates"], state["resolved"]["first_stage"]
    args = (state.get("action") or {}).get("args") or {}
    trace = [*state["trace"], {"turn": state["turn"], "action": state.get("action"), "observation": "scored"}]
    if ctx.scoring == "scores" and isinstance(args.get("scores"), dict):
        mma = scores_per_item(first, cands, args["scores"])
        if mma is None:
            return fallback(state, runtime, f"{SCORE_TOOL} gave no valid scores for pool items", trace)
    else:
        mma = weighted_evidence(state["evidence"], ctx.vocabulary(state).groups, args.get("weights"))
        if mma is None:
            return fallback(state, runtime, "no evidence was gathered: every tool answered Null", trace)
    final = fuse(first, mma, ctx.alpha)
    order = np.argsort(-final, kind="stable")
    runtime.stream_writer(Progress(event="mma.scored", turn=state["turn"], args=args, ms=_ms(t0)))
    return {
        "ranking": [cands[i] for i in order],
        "scores": [float(final[i]) for i in order],
        "mma_scores": {c: float(m) for c, m in zip(cands, mma, strict=True)},
        "fallback": False,
        "reason": "",
        "trace": trace,
    }


def budget_spent(state: RerankState, runtime: Runtime[RerankContext]) -> dict:
    return fallback(state, runtime, f"no {SCORE_TOOL} within {state['max_turns']} turns")


# --- routers -------------------------------------------------------------------------------
def after_validate(state: RerankState) -> Literal["policy", "__end__"]:
    return END if state.get("fallback") else POLICY


def after_policy(state: RerankState) -> Literal["tools", "score", "__end__"]:
    if state.get("fallback"):
        return END
    return SCORE if (state.get("action") or {}).get("tool") == SCORE_TOOL else TOOLS


def after_tools(state: RerankState) -> Literal["policy", "budget_spent"]:
    return POLICY if state["turn"] < state["max_turns"] else BUDGET_SPENT
