"""The reranker for the LangGraph CLI / server (see langgraph.json), as a subgraph and a tool, and
its progress events streamed through the host (run this file).

Environment (read here, in the app, never in the library): MMA_CONFIG (a pipeline YAML, default
the built-in settings), MMA_DATA (data set folder), MMA_WORKDIR (the workdir `mma pipeline` built,
default .mma; its caches are reused), MMA_IMAGE=0 (leave the poster toolkit out), MMA_MODEL
(backend string, default transformers:smollm2-135m; e.g. openai:<model> with MMA_BASE_URL for a
vLLM server), MMA_INTERACTIVE_MODEL (MMA-Interactive's policy, default MMA_MODEL).
"""

from __future__ import annotations

import os
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from mma_agent import Pipeline, PipelineConfig, create_mma_reranker, create_rerank_tool
from mma_agent.config import load_config

_base = load_config(os.environ.get("MMA_CONFIG")).model_dump()
_base["data"]["path"] = os.environ.get("MMA_DATA", "../shared/datasets/movielens-posters")
_base["workdir"] = os.environ.get("MMA_WORKDIR", ".mma")
_pipeline = Pipeline(PipelineConfig.model_validate(_base))
_split = _pipeline.split
_catalogue, _kits = _pipeline.toolkits(image=os.environ.get("MMA_IMAGE", "1") != "0")
_model = os.environ.get("MMA_MODEL", "transformers:smollm2-135m")
_backend = {"options": {"base_url": os.environ["MMA_BASE_URL"]}} if "MMA_BASE_URL" in os.environ else None

# 1. The graph itself (langgraph.json exposes it as "mma_reranker"), and MMA-Interactive ("mma_interactive"):
#    its questions pause the run (LangGraph interrupt); the server's thread resumes it with the answer.
graph = create_mma_reranker(_model, catalogue=_catalogue, toolkits=_kits, backend=_backend).compile()
interactive_graph = create_mma_reranker(
    os.environ.get("MMA_INTERACTIVE_MODEL", _model),
    catalogue=_catalogue,
    toolkits=_kits,
    variant="interactive",
    backend=_backend,
).compile()


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

if __name__ == "__main__":
    # 4. Progress while it thinks: the host streams with subgraphs=True, and each policy action and tool
    #    call of the mounted reranker arrives as a custom event (tool, arguments, Null or evidence, ms).
    #    Run: python examples/langgraph_app.py (after `bash scripts/main.sh`, which builds the caches).
    request = {"user_id": str(_split.user_ids[0])}
    for namespace, mode, chunk in host_graph.stream(request, stream_mode=["custom", "updates"], subgraphs=True):
        if mode == "custom":
            print(namespace[-1].split(":")[0], chunk)
        elif "rerank" in chunk:
            out = chunk["rerank"]
            print("ranking", out["ranking"][:10], "fallback" if out["fallback"] else "", out["reason"])
