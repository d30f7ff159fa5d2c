"""Ways to embed the reranker in a host app: as a LangChain tool for a host agent. (As a subgraph,
add the compiled reranker as a node of a parent graph whose state has the RerankInput keys.)"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class RerankToolArgs(BaseModel):
    candidates: list[str] = Field(description="Candidate item ids from the first-stage retriever.")
    first_stage_scores: list[float] = Field(description="One first-stage score per candidate.")
    history: list[str] | None = Field(default=None, description="Item ids the user liked, oldest first.")
    user_id: str | None = Field(default=None, description="A known user id (its history is used if history is omitted).")


def create_rerank_tool(reranker: Any, *, name: str = "rerank_candidates", top_k: int = 10):
    """A LangChain tool over a compiled reranker: returns the top_k item ids and whether it fell back."""
    from langchain_core.tools import StructuredTool

    def run(
        candidates: list[str], first_stage_scores: list[float], history: list[str] | None = None, user_id: str | None = None
    ) -> str:
        request: dict[str, Any] = {"candidates": candidates, "first_stage_scores": first_stage_scores}
        if history is not None:
            request["history"] = history
        if user_id is not None:
            request["user_id"] = user_id
        out = reranker.invoke(request)
        head = ", ".join(out["ranking"][:top_k])
        return f"Top {top_k}: {head}" + (f" (first-stage order: {out['reason']})" if out["fallback"] else "")

    return StructuredTool.from_function(
        func=run,
        name=name,
        args_schema=RerankToolArgs,
        description="Rerank recommendation candidates for a user with multimodal evidence (text, posters, behaviour); works when some are missing.",
    )
