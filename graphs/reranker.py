"""`create_mma_reranker`: the MMA evidence-routing loop as an uncompiled LangGraph `StateGraph`.

    validate -> policy -> tools -> policy -> ... -> score -> END
                      \\-> score (score_candidates, turn budget spent) / fallback

`validate` checks the request and resolves it once; `policy` asks the LLM (or the fixed rule) for
one action; `tools` runs it and adds its evidence; `score` turns the evidence into MMA scores and
fuses them with the first-stage scores: alpha * minmax(first) + (1 - alpha) * minmax(mma). Any
failure (bad request, backend error or timeout, no valid action in the budget) returns the
first-stage ranking with `fallback=True` and the reason; nothing raises into the host app.

The factory returns a plain `StateGraph`: compile it with LangGraph's own `compile()` (your
checkpointer and store), mount it as a subgraph, or wrap it as a tool. LangGraph itself refuses
an input that is not a mapping (`InvalidUpdateError`) and `None` on a thread with nothing to
resume (`EmptyInputError`) before any node runs; `guard_input(compiled)` is the one wrapper that
answers those with the fallback and its reason instead, for apps that pass requests through
unchecked. Run-scoped dependencies (catalogue, toolkits, model, settings) are one
`RerankContext`, LangGraph's `context_schema`: the factory builds it and the nodes use it when a
run brings none, so the compiled graph needs no extra invoke arguments; `invoke(request,
context=RerankContext(...))` swaps it for one run.

The policy node has a sync and an async body: `ainvoke`/`abatch`/`astream` await the chat model's
async API (an `openai:` backend's HTTP calls), `invoke`/`batch` call it on the policy's threads.
A transient backend error (connection refused or reset, HTTP 5xx or 429) is tried again by the
node's LangGraph `RetryPolicy` while tries and the timeout last; the node's error handler turns the
last error into the fallback. Progress events go to the custom stream (see `nodes.Progress`).

The pieces: `state` (request/response types, the request's resolution, the fallback), `policy`
(the LLM call and what it may answer), `nodes` (nodes and routers), `fusion` (evidence -> scores,
Eq. 2); `guard_input` is in `guard`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from langgraph.errors import NodeError
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from mma_agent.graphs import nodes
from mma_agent.graphs.nodes import RerankContext, with_context
from mma_agent.graphs.policy import Policy, Router, backend_retry_policy, rule_action
from mma_agent.graphs.prompts import PromptStyle, check_style
from mma_agent.graphs.state import BUDGET_SPENT, POLICY, SCORE, TOOLS, VALIDATE, RerankInput, RerankOutput, RerankState, Variant
from mma_agent.toolkits.base import Catalogue, Toolkit


class BackendConfig(BaseModel):
    """How the reranker talks to its LLM backend (ignored by the rule variant)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout: float | None = Field(
        default=60.0, gt=0, description="Seconds per policy call; past it the reranker falls back (None: no limit)."
    )
    prefill: bool | None = Field(
        default=None,
        description='Start each reply with \'{"tool": "\' and decode only valid actions (default: on for local '
        "transformers models). False asks for free-form replies (the ReAct baseline).",
    )
    native_tools: bool = Field(
        default=False,
        description="Bind the tools (`bind_tools`) and read the model's native tool calls instead of JSON text "
        "(OpenAI-compatible servers with tools, vLLM with a tool parser).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of a backend string, e.g. {'base_url': 'http://127.0.0.1:8000/v1'} for 'openai:NAME', "
        "{'cache_dir': ...} for 'transformers:...' (see `mma_agent.llm.resolve_chat_model`).",
    )


def create_mma_reranker(
    model: Any,
    *,
    catalogue: Catalogue,
    toolkits: dict[str, Toolkit],
    variant: Variant = "auto",
    alpha: float = 0.5,
    max_turns: int = 8,
    scoring: Literal["weights", "scores"] = "weights",
    prompt: PromptStyle = "compact",
    router: Router | None = None,
    backend: BackendConfig | dict[str, Any] | None = None,
) -> StateGraph:
    """The MMA reranker as an uncompiled StateGraph (compile it with your checkpointer, or mount it).

    model: a chat model or a backend string ("transformers:smollm2-135m", "openai:NAME", ...);
    ignored (may be None) for variant="rule", the RuleRouter-Fuse control.
    variant: "auto" (MMA-Auto), "interactive" (MMA-Interactive: it may ask the person, pausing
    the graph with `interrupt`), "rule" (a policy without an LLM, `router`).
    alpha: the first stage's share in the fusion (Eq. 2); max_turns: the action budget.
    scoring: `score_candidates` takes "weights" over the gathered evidence groups, or "scores" per item.
    prompt: "compact" (default) shows the policy each tool in a few words and each observation as
    its strength word and coverage; "full" shows whole tool lines and observations (titles, genres, neighbours),
    for models that read them (see graphs/prompts.py). The trace keeps full observations either way.
    router: for variant="rule", (tools, trace) -> action (default: RuleRouter-Fuse's rule;
    `mma_agent.training.routing.LookupRouter` is the learned lookup control).
    backend: a `BackendConfig` (or its fields as a dict): timeout, prefill, native tools, and the
    backend string's options. Valid actions are enforced by default: a local model by prefill and
    constrained decoding, an `openai:` server by vLLM's structured-outputs choice in each request.
    """
    backend = BackendConfig.model_validate(backend or {}) if not isinstance(backend, BackendConfig) else backend
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

        model = resolve_chat_model(model, **backend.options)
        free_form = backend.prefill is False or backend.native_tools  # no constraint asked for (or tool calls are the format)
        prefill = isinstance(model, TransformersChatModel) if backend.prefill is None else backend.prefill
        if backend.native_tools:
            model = model.bind_tools(tool_schemas(tools, tools.names(interactive=variant == "interactive"), scoring))
        policy = Policy(model, prefill=bool(prefill), timeout=backend.timeout, constrained=not free_form)
    ctx = RerankContext(
        catalogue,
        toolkits,
        tools,
        policy,
        variant=variant,
        alpha=alpha,
        max_turns=max_turns,
        scoring=scoring,
        router=router or rule_action,
        prompt=prompt,
    )
    g = StateGraph(RerankState, context_schema=RerankContext, input_schema=RerankInput, output_schema=RerankOutput)
    g.add_node(VALIDATE, _bound(nodes.validate, ctx))
    g.add_node(POLICY, _policy_node(ctx), retry_policy=backend_retry_policy(), error_handler=_bound(nodes.backend_failed, ctx))
    g.add_node(TOOLS, _bound(nodes.run_tool, ctx))
    g.add_node(SCORE, _bound(nodes.score, ctx))
    g.add_node(BUDGET_SPENT, _bound(nodes.budget_spent, ctx))
    g.add_edge(START, VALIDATE)
    g.add_conditional_edges(VALIDATE, nodes.after_validate)
    g.add_conditional_edges(POLICY, nodes.after_policy)
    g.add_conditional_edges(TOOLS, nodes.after_tools)
    g.add_edge(SCORE, END)
    g.add_edge(BUDGET_SPENT, END)
    return g


def _bound(fn: Callable, default: RerankContext) -> Callable:
    """A module-level node with the factory's context as the default of its runtime's."""
    if "error" in inspect.signature(fn).parameters:  # an error handler (LangGraph injects the NodeError)

        def handler(state: RerankState, error: NodeError, runtime: Runtime) -> dict:
            return fn(state, error, with_context(runtime, default))

        return handler

    def node(state: RerankState, runtime: Runtime) -> dict:
        return fn(state, with_context(runtime, default))

    node.__name__ = fn.__name__
    return node


def _policy_node(default: RerankContext):
    """The policy node with a sync and an async body (LangGraph runs one per way of invoking)."""
    from langchain_core.runnables import RunnableLambda
    from langgraph.runtime import get_runtime

    def sync(state: RerankState) -> dict:
        return nodes.policy(state, with_context(get_runtime(), default))

    async def asynchronous(state: RerankState) -> dict:
        return await nodes.apolicy(state, with_context(get_runtime(), default))

    return RunnableLambda(sync, afunc=asynchronous, name=POLICY)
