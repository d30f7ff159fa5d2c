"""The reranker's nodes and routers. Each node takes the state and returns a partial update;
routers return the name of the next node as a `Literal`."""

from __future__ import annotations

import concurrent.futures
from typing import Any, Literal

import numpy as np
from langgraph.graph import END

from mma_agent.graphs.fusion import fuse, scores_per_item, weighted_evidence
from mma_agent.graphs.policy import Policy, Router, completions, rule_action
from mma_agent.graphs.prompts import PromptStyle, observation_prompt, request_prompt, system_prompt
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


def ask_person(modality_type: str, question: str) -> object:
    """In an app, a question pauses the graph (LangGraph `interrupt`); resuming returns the answer,
    whatever the app sent: `ask_user` checks and caps it before any work (`clarify.checked_answer`)."""
    from langgraph.types import interrupt

    return interrupt({"question": question, "modality_type": modality_type})


class RerankNodes:
    """The nodes of one reranker, bound to its run-scoped dependencies."""

    def __init__(
        self,
        policy: Policy | None,
        catalogue: Catalogue,
        toolkits: dict[str, Toolkit],
        tools: ToolVocabulary,
        *,
        variant: Variant,
        alpha: float,
        max_turns: int,
        scoring: str,
        router: Router = rule_action,
        prompt: PromptStyle = "compact",
    ) -> None:
        self.policy_model, self.catalogue, self.kits, self.tools, self.router = policy, catalogue, toolkits, tools, router
        self.variant, self.alpha, self.max_turns, self.scoring, self.prompt = variant, alpha, max_turns, scoring, prompt

    def vocabulary(self, state: RerankState) -> ToolVocabulary:
        """The tools of this request: with the request tools when it has words (`for_request`)."""
        return self.tools.for_request(state["resolved"].get("query"))

    def offered(self, vocab: ToolVocabulary) -> list[str]:
        # MMA-Auto is offered the automated tools; MMA-Interactive also asks; a router (the rule
        # variant) may take any tool (RuleRouter-Fuse never asks; an interactive lookup table does)
        return vocab.names(interactive=self.variant != "auto")

    def context(self, state: RerankState) -> EpisodeContext:
        """What the tools of this request may see: the arrays `validate` resolved, under its mask."""
        r = state["resolved"]
        ask = ask_person if r["target"] is None else None  # evaluation: the simulated user answers about the target
        view = self.catalogue.view(Mask.of(r["mask"]))
        return EpisodeContext(view, r["history"], r["candidates"], r["user"], r["target"], ask, r["first_stage"], r.get("query"))

    # --- nodes --------------------------------------------------------------------------
    def validate(self, state: RerankState) -> dict:
        got = resolve_request(state, self.catalogue)
        if isinstance(got, str):
            return {**first_stage_output(state, f"invalid request: {got}", []), "turn": 0}
        req, resolved, trace = got
        budget = min(req.max_turns or self.max_turns, self.max_turns)
        prompt = self.prompt
        vocab = self.tools.for_request(resolved["query"])
        messages = [
            {"role": "system", "content": system_prompt(self.offered(vocab), self.scoring, budget, tools=vocab, style=prompt)},
            {
                "role": "user",
                "content": request_prompt(len(resolved["history"]), len(resolved["candidates"]), resolved["query"], style=prompt),
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

    def policy(self, state: RerankState) -> dict:
        turn = state["turn"] + 1
        vocab = self.vocabulary(state)
        if self.variant == "rule":
            return {"action": self.router(vocab, state["trace"]), "turn": turn}
        try:
            parts = request_parts(state["resolved"].get("query"))
            allowed = completions(vocab, self.offered(vocab), state["trace"], last_turn=turn >= state["max_turns"], parts=parts)
            reply, meta = self.policy_model.ask(state["messages"], allowed)
        except Exception as err:  # backend failure or timeout: the first-stage ranking, with the reason
            kind = "timed out" if isinstance(err, concurrent.futures.TimeoutError) else f"failed ({type(err).__name__}: {err})"
            return {**first_stage_output(state, f"LLM backend {kind}"), "turn": turn}
        usage = dict(state["usage"])
        usage["llm_calls"] += 1
        usage["input_tokens"] += meta.get("input_tokens", 0)
        usage["output_tokens"] += meta.get("output_tokens", 0)
        usage["llm_ms"] += int(1000 * meta.get("seconds", 0.0))
        messages = [*state["messages"], {"role": "assistant", "content": reply}]
        return {"action": Policy.action(reply, meta), "turn": turn, "usage": usage, "messages": messages}

    def run_tool(self, state: RerankState) -> dict:
        action, turn = state["action"], state["turn"]
        tool, args = action.get("tool"), action.get("args", {})
        entry: dict[str, Any] = {"turn": turn, "action": {"tool": tool, "args": args}}
        shown = None  # what the policy reads: the observation, or in the compact style the evidence's summary
        evidence, nulls = dict(state["evidence"]), list(state["nulls"])
        offered = self.offered(self.vocabulary(state))
        if tool is None:
            entry.update(invalid=action["invalid"], observation=f"Invalid action ({action['error']}).")
        elif tool not in offered:
            entry.update(invalid="unknown_tool", observation=f"Unknown tool {tool!r}. Tools: {', '.join(offered)}, {SCORE_TOOL}.")
        elif tool in nulls:
            entry.update(invalid="repeated_null", observation=f"{tool} already answered Null; it will not change.")
        else:
            kit = self.kits.get(self.tools.owner(tool))
            ev = (
                Evidence.none(tool, "this tool is not configured.")
                if kit is None
                else kit.call(tool, self.context(state), **args)
            )
            entry.update(observation=ev.observation, null=ev.null)
            if self.prompt == "compact":
                shown = ev.brief
            if ev.null:
                nulls.append(tool)
            evidence.update({k: np.asarray(v, dtype=np.float64) for k, v in ev.channels.items()})
        trace = [*state["trace"], entry]
        messages = [
            *state.get("messages", []),
            {
                "role": "user",
                "content": observation_prompt(shown or entry["observation"], turn, state["max_turns"], style=self.prompt),
            },
        ]
        return {"trace": trace, "evidence": evidence, "nulls": nulls, "messages": messages}

    def score(self, state: RerankState) -> dict:
        cands, first = state["candidates"], state["resolved"]["first_stage"]
        args = (state.get("action") or {}).get("args") or {}
        trace = [*state["trace"], {"turn": state["turn"], "action": state.get("action"), "observation": "scored"}]
        if self.scoring == "scores" and isinstance(args.get("scores"), dict):
            mma = scores_per_item(first, cands, args["scores"])
            if mma is None:
                return first_stage_output(state, f"{SCORE_TOOL} gave no valid scores for pool items", trace)
        else:
            mma = weighted_evidence(state["evidence"], self.vocabulary(state).groups, args.get("weights"))
            if mma is None:
                return first_stage_output(state, "no evidence was gathered: every tool answered Null", trace)
        final = fuse(first, mma, self.alpha)
        order = np.argsort(-final, kind="stable")
        return {
            "ranking": [cands[i] for i in order],
            "scores": [float(final[i]) for i in order],
            "mma_scores": {c: float(m) for c, m in zip(cands, mma, strict=True)},
            "fallback": False,
            "reason": "",
            "trace": trace,
        }

    def budget_spent(self, state: RerankState) -> dict:
        return first_stage_output(state, f"no {SCORE_TOOL} within {state['max_turns']} turns")

    # --- routers ------------------------------------------------------------------------
    @staticmethod
    def after_validate(state: RerankState) -> Literal["policy", "__end__"]:
        return END if state.get("fallback") else POLICY

    @staticmethod
    def after_policy(state: RerankState) -> Literal["tools", "score", "__end__"]:
        if state.get("fallback"):
            return END
        return SCORE if (state.get("action") or {}).get("tool") == SCORE_TOOL else TOOLS

    @staticmethod
    def after_tools(state: RerankState) -> Literal["policy", "budget_spent"]:
        return POLICY if state["turn"] < state["max_turns"] else BUDGET_SPENT
