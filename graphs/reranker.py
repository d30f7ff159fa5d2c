"""`create_mma_reranker`: the MMA evidence-routing loop as an uncompiled LangGraph `StateGraph`.

    validate -> policy -> tools -> policy -> ... -> score -> END
                      \\-> score (score_candidates, turn budget spent) / fallback

`validate` checks the request and resolves ids; `policy` asks the LLM (or the fixed rule) for one
action; `tools` runs it and adds its evidence; `score` turns the evidence into MMA scores and fuses
them with the first-stage scores: alpha * minmax(first) + (1 - alpha) * minmax(mma). Any failure
(bad request, backend error or timeout, no valid action in the budget) returns the first-stage
ranking with `fallback=True` and the reason; nothing raises into the host app.

Run-scoped dependencies (catalogue, toolkits, model) are bound when the graph is built, so the
compiled graph needs no extra invoke arguments and mounts unchanged as a subgraph or a tool.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
from typing import Any, Literal, TypedDict

import numpy as np
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field

from mma_agent.actions import ActionError, parse_action
from mma_agent.graphs.prompts import observation_prompt, request_prompt, system_prompt
from mma_agent.masks import Mask
from mma_agent.toolkits.base import Catalogue, EpisodeContext, Toolkit

VALIDATE, POLICY, TOOLS, SCORE = "validate", "policy", "tools", "score"
TOOL_KIT = {"analyze_text": "text", "analyze_image": "image", "retrieve_graph": "graph", "ask_user": "clarify"}
GROUPS = {"text": ("text_max", "text_mean"), "image": ("image_max", "image_mean"), "graph": ("graph_ppr", "graph_co"), "ask": ("ask_text", "ask_image")}
RULE_ORDER = ("analyze_text", "analyze_image", "retrieve_graph")
Variant = Literal["auto", "interactive", "rule"]


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


class RerankState(RerankInput, RerankOutput, total=False):
    evidence: dict[str, list[float]]
    nulls: list[str]
    action: dict
    turn: int


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x, dtype=float)


def fuse(first: np.ndarray, mma: np.ndarray, alpha: float) -> np.ndarray:
    """Paper Eq. 2, both scores min-max normalised within the pool."""
    return alpha * minmax(first) + (1 - alpha) * minmax(mma)


def _first_stage_output(state: RerankState, reason: str, trace: list[dict] | None = None) -> RerankOutput:
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


class ScoreWeightsArgs(BaseModel):
    weights: dict[str, float] = Field(default_factory=dict, description="Weights over gathered evidence: text, image, graph, ask.")


class ScoreMapArgs(BaseModel):
    scores: dict[str, float] = Field(description="Item id -> score for pool items; unscored items keep their first-stage score.")


def tool_schemas(tools: list[str], toolkits: dict[str, Toolkit], scoring: str) -> list[dict]:
    """OpenAI-style function schemas of the agent's tools, for `bind_tools`."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from mma_agent.toolkits.clarify import ClarifyToolkit
    from mma_agent.toolkits.graph import GraphToolkit
    from mma_agent.toolkits.image import ImageToolkit
    from mma_agent.toolkits.text import TextToolkit

    specs = {**TextToolkit.TOOLS, **ImageToolkit.TOOLS, **GraphToolkit.TOOLS, **ClarifyToolkit.TOOLS}
    out = []
    for t in tools:
        schema, description = specs[t]
        fn = convert_to_openai_tool(schema)["function"]
        out.append({"type": "function", "function": {**fn, "name": t, "description": description}})
    args = ScoreWeightsArgs if scoring == "weights" else ScoreMapArgs
    fn = convert_to_openai_tool(args)["function"]
    out.append({"type": "function", "function": {**fn, "name": "score_candidates", "description": "Finish: score the pool."}})
    return out


class _Nodes:
    def __init__(self, model, catalogue: Catalogue, toolkits: dict[str, Toolkit], variant: Variant, alpha: float, max_turns: int,
                 scoring: str, timeout: float | None, prefill: bool, native_tools: bool = False) -> None:  # fmt: skip
        self.model, self.catalogue, self.kits = model, catalogue, toolkits
        self.variant, self.alpha, self.max_turns, self.scoring, self.timeout, self.prefill = variant, alpha, max_turns, scoring, timeout, prefill
        self.tools = [t for t in TOOL_KIT if t != "ask_user" or variant == "interactive"]
        if native_tools and model is not None:
            self.model = model.bind_tools(tool_schemas(self.tools, toolkits, scoring))
        self.native = native_tools

    # --- context ------------------------------------------------------------------------
    def context(self, state: RerankState) -> EpisodeContext:
        split = self.catalogue.split
        mask = Mask(**{k: bool(v) for k, v in (state.get("mask") or {}).items()})
        view = self.catalogue.view(mask)
        if "history" in state:
            hist, _ = self.catalogue.resolve(state["history"])
        else:
            hist = view.history(split.user_index[state["user_id"]], include_valid=True)
        cands, _ = self.catalogue.resolve(state["candidates"])
        target = split.item_index.get(state["target"]) if state.get("target") else None
        return EpisodeContext(view, hist, cands, split.user_index.get(state.get("user_id")), target)

    # --- nodes --------------------------------------------------------------------------
    def validate(self, state: RerankState) -> dict:
        problem = validate_request(state, self.catalogue)
        if problem is not None:
            return {**_first_stage_output(state, f"invalid request: {problem}", []), "turn": 0}
        unknown_hist = self.catalogue.resolve(state.get("history", []))[1]
        trace = [{"event": "unknown history ids dropped", "ids": unknown_hist}] if unknown_hist else []
        ctx = self.context(state)
        budget = min(int(state.get("max_turns") or self.max_turns), self.max_turns)
        messages = [{"role": "system", "content": system_prompt(self.tools, self.scoring, budget)},
                    {"role": "user", "content": request_prompt(len(ctx.history), len(ctx.candidates))}]  # fmt: skip
        return {"messages": messages, "evidence": {}, "nulls": [], "trace": trace, "turn": 0, "max_turns": budget,
                "fallback": False, "reason": "", "usage": {"llm_calls": 0, "input_tokens": 0, "output_tokens": 0, "llm_ms": 0}}  # fmt: skip

    def policy(self, state: RerankState) -> dict:
        turn = state["turn"] + 1
        if self.variant == "rule":
            called = {t["action"]["tool"] for t in state["trace"] if "action" in t}
            nxt = next((t for t in RULE_ORDER if t not in called), None)
            action = {"tool": nxt, "args": {}} if nxt else {"tool": "score_candidates", "args": {"weights": {}}}
            return {"action": action, "turn": turn}
        usage = dict(state["usage"])
        try:
            reply, meta = self._ask(state["messages"], self.completions(state))
        except Exception as err:  # backend failure or timeout: the first-stage ranking, with the reason
            kind = "timed out" if isinstance(err, concurrent.futures.TimeoutError) else f"failed ({type(err).__name__}: {err})"
            return {**_first_stage_output(state, f"LLM backend {kind}"), "turn": turn}
        usage["llm_calls"] += 1
        usage["input_tokens"] += meta.get("input_tokens", 0)
        usage["output_tokens"] += meta.get("output_tokens", 0)
        usage["llm_ms"] += int(1000 * meta.get("seconds", 0.0))
        messages = [*state["messages"], {"role": "assistant", "content": reply}]
        calls = meta.pop("tool_calls", None)
        if calls:  # native tool calling: the first call is the action
            action = {"tool": calls[0]["name"], "args": dict(calls[0].get("args") or {})}
        else:
            try:
                act = parse_action(reply)
                action = {"tool": act.tool, "args": act.args}
            except ActionError as err:
                action = {"tool": None, "invalid": err.kind, "error": str(err)}
        return {"action": action, "turn": turn, "usage": usage, "messages": messages}

    def _ask(self, messages: list[dict], allowed: list[str] | None = None) -> tuple[str, dict]:
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        lc = [kinds[m["role"]](m["content"]) for m in messages]
        kwargs = {"prefill": '{"tool": "', "allowed_completions": allowed, "stop_strings": ["\n"]} if self.prefill else {}
        if self.timeout is None:
            out = self.model.invoke(lc, **kwargs)
        else:
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            try:
                out = pool.submit(self.model.invoke, lc, **kwargs).result(timeout=self.timeout)
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        meta = dict(getattr(out, "usage_metadata", None) or {})
        meta["seconds"] = float((getattr(out, "response_metadata", None) or {}).get("seconds", 0.0))
        if getattr(out, "tool_calls", None):
            meta["tool_calls"] = [{"name": c["name"], "args": c.get("args", {})} for c in out.tool_calls]
            if not out.content:
                return json.dumps({"tool": out.tool_calls[0]["name"], "args": out.tool_calls[0].get("args", {})}), meta
        return str(out.content), meta

    def completions(self, state: RerankState) -> list[str]:
        """Valid continuations of '{"tool": "' for constrained local models: tools not called yet,
        and score_candidates with equal weights or one evidence group."""
        called = {t["action"]["tool"] for t in state["trace"] if "action" in t}
        out = [f'{t}", "args": {{}}}}' for t in self.tools if t not in called and t != "ask_user"]
        if "ask_user" in self.tools and "ask_user" not in called:
            out += [f'ask_user", "args": {{"modality_type": "{m}", "query": "What do you feel like?"}}}}' for m in ("text", "image", "behaviour")]
        weights = ["{}", *(f'{{"{g}": 1}}' for g in ("text", "image", "graph", "ask"))]
        return out + [f'score_candidates", "args": {{"weights": {w}}}}}' for w in weights]

    def run_tool(self, state: RerankState) -> dict:
        action, turn = state["action"], state["turn"]
        tool, args = action.get("tool"), action.get("args", {})
        entry: dict[str, Any] = {"turn": turn, "action": {"tool": tool, "args": args}}
        evidence, nulls = dict(state["evidence"]), list(state["nulls"])
        if tool is None:
            entry.update(invalid=action["invalid"], observation=f"Invalid action ({action['error']}).")
        elif tool not in self.tools:
            entry.update(invalid="unknown_tool", observation=f"Unknown tool {tool!r}. Tools: {', '.join(self.tools)}, score_candidates.")
        elif tool in nulls:
            entry.update(invalid="repeated_null", observation=f"{tool} already answered Null; it will not change.")
        else:
            ctx = self.context(state)
            kit = self.kits.get(TOOL_KIT[tool])
            if kit is None:
                ev_obs, ev_channels, ev_null = "Null: this tool is not configured.", {}, True
            elif tool == "ask_user" and ctx.target is None:
                ev_obs, ev_channels, ev_null = self._ask_person(kit, ctx, args)
            else:
                ev = kit.call(tool, ctx, **args)
                ev_obs, ev_channels, ev_null = ev.observation, ev.channels, ev.null
            entry.update(observation=ev_obs, null=ev_null)
            if ev_null:
                nulls.append(tool)
            evidence.update({k: [float(x) for x in v] for k, v in ev_channels.items()})
        trace = [*state["trace"], entry]
        messages = [*state.get("messages", []), {"role": "user", "content": observation_prompt(entry["observation"], turn, state["max_turns"])}]
        return {"trace": trace, "evidence": evidence, "nulls": nulls, "messages": messages}

    def _ask_person(self, kit, ctx: EpisodeContext, args: dict) -> tuple[str, dict, bool]:
        """In an app, pause the graph and ask a person (LangGraph interrupt); resume with their answer."""
        from langgraph.types import interrupt

        answer = interrupt({"question": args.get("query", ""), "modality_type": args.get("modality_type", "text")})
        if not isinstance(answer, str) or not answer.strip():
            return "Null: the user gave no answer.", {}, True
        channels = kit.answer_evidence(ctx, answer)
        return f'User: "{answer}"', channels, not channels

    def score(self, state: RerankState) -> dict:
        cands = state["candidates"]
        first = np.asarray(state["first_stage_scores"], dtype=float)
        args = (state.get("action") or {}).get("args") or {}
        evidence = {k: np.asarray(v) for k, v in state["evidence"].items()}
        trace = [*state["trace"], {"turn": state["turn"], "action": state.get("action"), "observation": "scored"}]
        if self.scoring == "scores" and isinstance(args.get("scores"), dict):
            given = {str(k): float(v) for k, v in args["scores"].items() if str(k) in set(cands) and isinstance(v, int | float) and math.isfinite(v)}
            if not given:
                return _first_stage_output(state, "score_candidates gave no valid scores for pool items", trace)
            base = minmax(first)
            mma = np.array([given.get(c, np.nan) for c in cands])
            scored = ~np.isnan(mma)
            mma = np.where(scored, minmax(np.nan_to_num(mma)) if scored.sum() > 1 else 1.0, base)  # unscored keep first-stage
        else:
            weights = args.get("weights") if isinstance(args.get("weights"), dict) else {}
            groups = {g: np.mean([minmax(evidence[c]) for c in chans if c in evidence], axis=0) for g, chans in GROUPS.items() if any(c in evidence for c in chans)}
            if not groups:
                return _first_stage_output(state, "no evidence was gathered: every tool answered Null", trace)
            w = {g: float(weights.get(g, 0)) for g in groups if isinstance(weights.get(g, 0), int | float) and math.isfinite(weights.get(g, 0))}
            if sum(max(v, 0) for v in w.values()) <= 0:
                w = dict.fromkeys(groups, 1.0)  # no usable weights: equal weights over what was gathered
            mma = sum(max(w.get(g, 0), 0) * v for g, v in groups.items()) / sum(max(v, 0) for v in w.values())
        final = fuse(first, mma, self.alpha)
        order = np.argsort(-final, kind="stable")
        return {"ranking": [cands[i] for i in order], "scores": [float(final[i]) for i in order],
                "mma_scores": {c: float(m) for c, m in zip(cands, mma, strict=True)}, "fallback": False, "reason": "", "trace": trace}  # fmt: skip

    # --- routing ------------------------------------------------------------------------
    def after_validate(self, state: RerankState) -> str:
        return END if state.get("fallback") else POLICY

    def after_policy(self, state: RerankState) -> str:
        if state.get("fallback"):
            return END
        if (state.get("action") or {}).get("tool") == "score_candidates":
            return SCORE
        return TOOLS

    def after_tools(self, state: RerankState) -> str:
        return POLICY if state["turn"] < state["max_turns"] else "budget_spent"

    def budget_spent(self, state: RerankState) -> dict:
        return _first_stage_output(state, f"no score_candidates within {state['max_turns']} turns")


def create_mma_reranker(
    model: Any,
    *,
    catalogue: Catalogue,
    toolkits: dict[str, Toolkit],
    variant: Variant = "auto",
    alpha: float = 0.5,
    max_turns: int = 8,
    scoring: Literal["weights", "scores"] = "weights",
    timeout: float | None = 60.0,
    prefill: bool | None = None,
    native_tools: bool = False,
) -> StateGraph:
    """The MMA reranker as an uncompiled StateGraph (compile it with your checkpointer, or mount it).

    model: a chat model or a backend string ("transformers:smollm2-135m", "openai:NAME", ...);
    ignored (may be None) for variant="rule", the RuleRouter-Fuse control.
    prefill: start the reply with '{"tool": "' (local transformers models; default: on for them).
    native_tools: for backends with native tool calling (OpenAI-compatible servers with tools,
    vLLM with a tool parser): `bind_tools` and read the model's tool calls instead of JSON text.
    """
    if variant not in ("auto", "interactive", "rule"):
        msg = f"variant={variant!r}; choose 'auto', 'interactive' or 'rule'"
        raise ValueError(msg)
    if not 0.0 <= alpha <= 1.0 or not 1 <= max_turns <= 32:
        msg = f"alpha must be in [0, 1] and max_turns in [1, 32]; got alpha={alpha}, max_turns={max_turns}"
        raise ValueError(msg)
    if variant != "rule":
        from mma_agent.llm import TransformersChatModel, resolve_chat_model

        model = resolve_chat_model(model)
        prefill = isinstance(model, TransformersChatModel) if prefill is None else prefill
    nodes = _Nodes(model, catalogue, toolkits, variant, alpha, max_turns, scoring, timeout, bool(prefill), native_tools)
    g = StateGraph(RerankState, input_schema=RerankInput, output_schema=RerankOutput)
    g.add_node(VALIDATE, nodes.validate)
    g.add_node(POLICY, nodes.policy)
    g.add_node(TOOLS, nodes.run_tool)
    g.add_node(SCORE, nodes.score)
    g.add_node("budget_spent", nodes.budget_spent)
    g.add_edge(START, VALIDATE)
    g.add_conditional_edges(VALIDATE, nodes.after_validate, [POLICY, END])
    g.add_conditional_edges(POLICY, nodes.after_policy, [TOOLS, SCORE, END])
    g.add_conditional_edges(TOOLS, nodes.after_tools, [POLICY, "budget_spent"])
    g.add_edge(SCORE, END)
    g.add_edge("budget_spent", END)
    return g
