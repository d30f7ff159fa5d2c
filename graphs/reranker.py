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
The pieces: `state` (request/response types, the request check, the fallback), `policy` (the LLM
call and what it may answer), `nodes` (nodes and routers), `fusion` (evidence -> scores, Eq. 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from mma_agent.graphs.nodes import RerankNodes
from mma_agent.graphs.policy import Policy, Router, rule_action
from mma_agent.graphs.prompts import PromptStyle, check_style
from mma_agent.graphs.state import BUDGET_SPENT, POLICY, SCORE, TOOLS, VALIDATE, RerankInput, RerankOutput, RerankState, Variant
from mma_agent.toolkits.base import Catalogue, Toolkit


class RerankerGraph(StateGraph):
    """The reranker's StateGraph. Compiled, it also answers a request that is not a mapping (a
    list, a string, None without a checkpoint to resume) with the fallback and a reason, instead
    of LangGraph raising into the caller before any node runs."""

    def compile(self, *args: Any, **kwargs: Any) -> CompiledStateGraph:
        compiled = super().compile(*args, **kwargs)
        compiled.__class__ = CompiledReranker
        return compiled


class CompiledReranker(CompiledStateGraph):
    """A compiled reranker graph (see `RerankerGraph`)."""

    def _checked(self, request: Any) -> Any:
        from langgraph.types import Command

        if isinstance(request, Mapping | Command) or (request is None and self.checkpointer is not None):  # None resumes a thread
            return request
        return {
            "invalid_input": f"request: expected a mapping of the RerankInput fields (user_id, candidates, first_stage_scores, ...), "
            f"got {type(request).__name__}"
        }

    def stream(self, input: Any, *args: Any, **kwargs: Any):  # noqa: A002 (LangGraph's parameter name)
        return super().stream(self._checked(input), *args, **kwargs)

    async def astream(self, input: Any, *args: Any, **kwargs: Any):  # noqa: A002
        async for chunk in super().astream(self._checked(input), *args, **kwargs):
            yield chunk


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
    backend_kwargs: dict[str, Any] | None = None,
    router: Router | None = None,
    prompt: PromptStyle = "compact",
) -> StateGraph:
    """The MMA reranker as an uncompiled StateGraph (compile it with your checkpointer, or mount it).

    model: a chat model or a backend string ("transformers:smollm2-135m", "openai:NAME", ...);
    ignored (may be None) for variant="rule", the RuleRouter-Fuse control.
    prefill: start the reply with '{"tool": "' (local transformers models; default: on for them).
    Valid actions are enforced by default: a local model by prefill and constrained decoding, an
    `openai:` server by vLLM's structured-outputs choice in each request; prefill=False asks a
    model for free-form replies (the ReAct baseline).
    native_tools: for backends with native tool calling (OpenAI-compatible servers with tools,
    vLLM with a tool parser): `bind_tools` and read the model's tool calls instead of JSON text.
    router: for variant="rule", the policy without an LLM, (tools, trace) -> action (default:
    RuleRouter-Fuse's rule; `mma_agent.training.routing.LookupRouter` is the learned lookup control).
    prompt: "compact" (default) shows the policy each tool in a few words and each observation as
    its strength line; "full" shows whole tool lines and observations (titles, genres, neighbours),
    for models that read them (see graphs/prompts.py). The trace keeps full observations either way.
    backend_kwargs: options of a backend string, e.g. {"base_url": "http://127.0.0.1:8000/v1"} for
    "openai:NAME", {"cache_dir": ...} for "transformers:..." (see `mma_agent.llm.resolve_chat_model`).
    """
    if variant not in ("auto", "interactive", "rule"):
        msg = f"variant={variant!r}; choose 'auto', 'interactive' or 'rule'"
        raise ValueError(msg)
    if not 0.0 <= alpha <= 1.0 or not 1 <= max_turns <= 32:
        msg = f"alpha must be in [0, 1] and max_turns in [1, 32]; got alpha={alpha}, max_turns={max_turns}"
        raise ValueError(msg)
    check_style(prompt)
    from mma_agent.toolkits import tool_vocabulary

    tools = tool_vocabulary(toolkits)
    policy = None
    if variant != "rule":
        from mma_agent.graphs.policy import tool_schemas
        from mma_agent.llm import TransformersChatModel, resolve_chat_model

        model = resolve_chat_model(model, **(backend_kwargs or {}))
        free_form = prefill is False or native_tools  # no constraint asked for (or tool calls are the format)
        prefill = isinstance(model, TransformersChatModel) if prefill is None else prefill
        if native_tools:
            model = model.bind_tools(tool_schemas(tools, tools.names(interactive=variant == "interactive"), scoring))
        policy = Policy(model, prefill=bool(prefill), timeout=timeout, constrained=not free_form)
    nodes = RerankNodes(
        policy,
        catalogue,
        toolkits,
        tools,
        variant=variant,
        alpha=alpha,
        max_turns=max_turns,
        scoring=scoring,
        router=router or rule_action,
        prompt=prompt,
    )
    g = RerankerGraph(RerankState, input_schema=RerankInput, output_schema=RerankOutput)
    g.add_node(VALIDATE, nodes.validate)
    g.add_node(POLICY, nodes.policy)
    g.add_node(TOOLS, nodes.run_tool)
    g.add_node(SCORE, nodes.score)
    g.add_node(BUDGET_SPENT, nodes.budget_spent)
    g.add_edge(START, VALIDATE)
    g.add_conditional_edges(VALIDATE, nodes.after_validate)
    g.add_conditional_edges(POLICY, nodes.after_policy)
    g.add_conditional_edges(TOOLS, nodes.after_tools)
    g.add_edge(SCORE, END)
    g.add_edge(BUDGET_SPENT, END)
    return g
