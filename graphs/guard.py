"""`guard_input`: the one wrapper that answers every input, for apps that pass requests unchecked.

LangGraph refuses an input that is not a mapping (`InvalidUpdateError`) and `None` on a thread
with nothing to resume (`EmptyInputError`) before any node runs, as it does for every graph. A
guarded reranker turns both into the reranker's own answer: the first-stage fallback (empty, as
there is no pool to rank) with a reason that names what was wrong and how to fix it. A mapping, a
`Command` and `None` that resumes a paused thread go to the compiled graph unchanged.

    reranker = guard_input(create_mma_reranker(...).compile(checkpointer=saver))
    reranker.invoke([...])  # {"fallback": True, "reason": "request: expected a mapping ...", ...}

Everything else (`get_state`, `get_graph`, ...) is the compiled graph's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

EXPECTED = "expected a mapping of the RerankInput fields (user_id, candidates, first_stage_scores, ...)"


def _thread(config: Mapping[str, Any] | None) -> str | None:
    return ((config or {}).get("configurable") or {}).get("thread_id")


class GuardedReranker:
    """A compiled reranker graph that answers any input (see the module's docstring)."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def __getattr__(self, name: str) -> Any:
        return getattr(self.graph, name)

    def _problem(self, request: Any, config: Mapping[str, Any] | None, pending: bool | None) -> str | None:
        from langgraph.types import Command

        if isinstance(request, Mapping | Command):
            return None
        if request is None:
            if self.graph.checkpointer is None:
                return "request: None resumes a paused thread, and this reranker has no checkpointer; send a RerankInput mapping"
            if _thread(config) is None:  # LangGraph's own error names the missing thread_id, as for any input
                return None
            if not pending:
                return f"request: None resumes a paused thread, but thread {_thread(config)!r} has nothing to resume; send a RerankInput mapping"
            return None
        return f"request: {EXPECTED}, got {type(request).__name__}"

    def _has_pending(self, request: Any, config: Mapping[str, Any] | None) -> bool | None:
        if request is not None or self.graph.checkpointer is None or _thread(config) is None:
            return None
        return bool(self.graph.get_state(config).next)

    async def _ahas_pending(self, request: Any, config: Mapping[str, Any] | None) -> bool | None:
        if request is not None or self.graph.checkpointer is None or _thread(config) is None:
            return None
        return bool((await self.graph.aget_state(config)).next)

    def checked(self, request: Any, config: Mapping[str, Any] | None = None) -> Any:
        """The input the compiled graph runs on: the request itself (with the keys no field reads
        named, so the output can warn about them), or one that falls back with the reason."""
        problem = self._problem(request, config, self._has_pending(request, config))
        return with_unknown_keys(request) if problem is None else {"invalid_input": problem}

    async def achecked(self, request: Any, config: Mapping[str, Any] | None = None) -> Any:
        problem = self._problem(request, config, await self._ahas_pending(request, config))
        return with_unknown_keys(request) if problem is None else {"invalid_input": problem}

    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:  # noqa: A002 (LangGraph's parameter name)
        return self.graph.invoke(self.checked(input, config), config, **kwargs)

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:  # noqa: A002
        return await self.graph.ainvoke(await self.achecked(input, config), config, **kwargs)

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:  # noqa: A002
        return self.graph.stream(self.checked(input, config), config, **kwargs)

    async def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[Any]:  # noqa: A002
        async for chunk in self.graph.astream(await self.achecked(input, config), config, **kwargs):
            yield chunk

    async def astream_events(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[Any]:  # noqa: A002
        async for event in self.graph.astream_events(await self.achecked(input, config), config, **kwargs):
            yield event

    def batch(self, inputs: Sequence[Any], config: Any = None, **kwargs: Any) -> list[Any]:
        configs = config if isinstance(config, list) else [config] * len(inputs)
        return self.graph.batch([self.checked(i, c) for i, c in zip(inputs, configs, strict=True)], config, **kwargs)

    async def abatch(self, inputs: Sequence[Any], config: Any = None, **kwargs: Any) -> list[Any]:
        configs = config if isinstance(config, list) else [config] * len(inputs)
        checked = [await self.achecked(i, c) for i, c in zip(inputs, configs, strict=True)]
        return await self.graph.abatch(checked, config, **kwargs)


def with_unknown_keys(request: Any) -> Any:
    """A request mapping with `unknown_keys` naming the keys that no RerankInput field reads
    (LangGraph would drop them before any node runs: the output's `warnings` names them instead)."""
    from mma_agent.graphs.state import RerankInput

    if not isinstance(request, Mapping):
        return request
    unknown = sorted(str(k) for k in request if k not in RerankInput.__annotations__)
    return {**request, "unknown_keys": unknown} if unknown else request


def guard_input(graph: Any) -> GuardedReranker:
    """The compiled reranker `graph`, answering any input with a ranking or a reasoned fallback."""
    return graph if isinstance(graph, GuardedReranker) else GuardedReranker(graph)
