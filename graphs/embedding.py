"""Ways to embed the reranker in a host app: as a LangChain tool for a host agent. (As a subgraph,
add the compiled reranker as a node of a parent graph whose state has the RerankInput keys.)"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

IDS = {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}


class RerankToolArgs(BaseModel):
    """What a host agent may pass. The schema says what to send; validation accepts anything, on
    purpose: the reranker's own request model checks the call, and a bad call comes back as the
    tool's result (the first-stage order and the reason), never as an exception in the host agent.
    Keys no field names pass through to the request model (which reads its own, such as `max_turns`,
    and names the rest in the result's warning: a typo such as `max_turn` is seen, not dropped)."""

    model_config = ConfigDict(extra="allow")

    candidates: Annotated[Any, WithJsonSchema(IDS)] = Field(
        default=None, description="Candidate item ids from the first-stage retriever."
    )
    first_stage_scores: Annotated[Any, WithJsonSchema({"type": "array", "items": {"type": "number"}})] = Field(
        default=None, description="One first-stage score per candidate."
    )
    history: Annotated[Any, WithJsonSchema(IDS)] = Field(default=None, description="Item ids the user liked, oldest first.")
    user_id: Annotated[Any, WithJsonSchema({"type": "string"})] = Field(
        default=None, description="A known user id (its history is used if history is omitted)."
    )
    query: Annotated[Any, WithJsonSchema({"type": "string"})] = Field(
        default=None, description="What the person asked for, in their words (optional), e.g. 'something dark like Blade Runner'."
    )


def create_rerank_tool(reranker: Any, *, name: str = "rerank_candidates", top_k: int = 10):
    """A LangChain tool over a compiled reranker: returns the top_k item ids and whether it fell
    back (with the reason). It takes what the request model takes; it never raises, except
    LangGraph's interrupt: MMA-Interactive's question reaches the host agent's caller, and
    `Command(resume=answer)` finishes the ranking. `ainvoke` awaits the reranker's async path."""
    from langchain_core.tools import StructuredTool
    from langgraph.errors import GraphBubbleUp

    from mma_agent.graphs.guard import with_unknown_keys

    def answer(out: dict) -> str:
        head = ", ".join(out["ranking"][:top_k])
        fell = f" (first-stage order: {out['reason']})" if out["fallback"] else ""
        note = "".join(f" Warning: {w}." for w in out.get("warnings") or [])
        return f"Top {min(top_k, len(out['ranking']))}: {head}{fell}{note}"

    def request(call: dict) -> dict:
        """The call as a request mapping: keys left unset dropped, keys no request field reads named."""
        return with_unknown_keys({k: v for k, v in call.items() if v is not None})

    def failed(err: Exception) -> str:
        return f"Could not rerank ({type(err).__name__}: {err}); keep the first-stage order."

    def run(**call: Any) -> str:
        try:
            return answer(reranker.invoke(request(call)))
        except GraphBubbleUp:  # MMA-Interactive's question pauses the host agent's graph (interrupt); not a failure
            raise
        except Exception as err:  # the reranker answers every mapping; anything else is reported, not raised
            return failed(err)

    async def arun(**call: Any) -> str:
        try:
            return answer(await reranker.ainvoke(request(call)))
        except GraphBubbleUp:
            raise
        except Exception as err:
            return failed(err)

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=name,
        args_schema=RerankToolArgs,
        description="Rerank recommendation candidates for a user with multimodal evidence (text, posters, behaviour); works when some are missing.",
    )
