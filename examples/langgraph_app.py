"""The reranker for the LangGraph CLI / server (see langgraph.json), and as a subgraph and a tool.

Environment (read here, in the app, never in the library): MMA_DATA (data set folder),
MMA_MODEL (backend string, default transformers:smollm2-135m), MMA_CACHE (cache folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from mma_agent.dataset import load_dataset
from mma_agent.graphs.embedding import create_rerank_tool
from mma_agent.graphs.reranker import create_mma_reranker
from mma_agent.splits import split_dataset
from mma_agent.toolkits import prepare_toolkits

_split = split_dataset(load_dataset(os.environ.get("MMA_DATA", "../shared/datasets/movielens-posters")))
_catalogue, _kits = prepare_toolkits(_split, Path(os.environ.get("MMA_CACHE", ".mma/app-cache")), image_model=None)

# 1. The graph itself (langgraph.json exposes it as "mma_reranker").
graph = create_mma_reranker(os.environ.get("MMA_MODEL", "transformers:smollm2-135m"), catalogue=_catalogue, toolkits=_kits).compile()

# 2. As a subgraph: a host pipeline whose state carries the reranker's input and output keys.
class HostState(TypedDict, total=False):
    user_id: str
    candidates: list[str]
    first_stage_scores: list[float]
    ranking: list[str]
    fallback: bool
    reason: str


def retrieve(state: HostState) -> HostState:
    pool = [str(i) for i in _split.item_ids[:50]]  # stand-in for the host's own first stage
    return {"candidates": pool, "first_stage_scores": [float(-i) for i in range(len(pool))]}


host = StateGraph(HostState)
host.add_node("retrieve", retrieve)
host.add_node("rerank", graph)  # the compiled reranker mounted as a node
host.add_edge(START, "retrieve")
host.add_edge("retrieve", "rerank")
host.add_edge("rerank", END)
host_graph = host.compile()

# 3. As a LangChain tool for a host agent.
rerank_tool = create_rerank_tool(graph)
