"""The reranker as a citizen of a LangGraph app: progress on the custom stream, MMA-Interactive's
question through a parent graph (subgraph, node) and a tool-calling agent with no work repeated on
resume, the async path, transient backend errors retried by the node's RetryPolicy against a real
HTTP server, and nodes that run alone with a `Runtime`. Scripted chat models test wiring only."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphBubbleUp
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from mma_agent.graphs.reranker import create_mma_reranker
from mma_agent.llm.scripted import ScriptedChatModel

SCORE = '{"tool": "score_candidates", "args": {"weights": {"text": 1, "graph": 1}}}'
TEXT, GRAPH, ASK = (
    '{"tool": "analyze_text", "args": {}}',
    '{"tool": "retrieve_graph", "args": {}}',
    '{"tool": "ask_user", "args": {"modality_type": "text", "query": "What kind of film would you like?"}}',
)
ASKING_PLAN = [TEXT, ASK, GRAPH, SCORE]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from mma_agent.data.dataset import load_dataset
    from mma_agent.data.splits import split_dataset
    from tests.conftest import fake_toolkits, write_tiny_dataset

    split = split_dataset(load_dataset(write_tiny_dataset(tmp_path_factory.mktemp("d") / "tiny")))
    return fake_toolkits(split, tmp_path_factory.mktemp("cache"))


def _request(**kw):
    cands = [f"m{i}" for i in range(0, 40, 3)]
    return {"user_id": "u0", "candidates": cands, "first_stage_scores": [float(i) for i in range(len(cands))], **kw}


class CountingModel(ScriptedChatModel):
    """A scripted policy that counts its calls, sync and async apart."""

    calls: Counter = Counter()

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.calls["sync"] += 1
        return super()._generate(messages, stop, run_manager, **kwargs)

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        self.calls["async"] += 1
        return super()._generate(messages, stop, None, **kwargs)


def _counting(kit, counts: Counter):
    """`kit` with its calls counted: each finished call, and each question that paused the graph."""

    class Counted(type(kit)):
        def call(self, tool, ctx, /, **args):
            try:
                ev = super().call(tool, ctx, **args)
            except GraphBubbleUp:
                counts[f"{tool} paused"] += 1
                raise
            counts[tool] += 1
            return ev

    obj = Counted.__new__(Counted)
    obj.__dict__.update(kit.__dict__)
    return obj


def _counted(kits: dict) -> tuple[dict, Counter]:
    counts: Counter = Counter()
    return {name: _counting(kit, counts) for name, kit in kits.items()}, counts


def _interactive(env, plan=ASKING_PLAN):
    catalogue, kits = env
    kits, counts = _counted(kits)
    model = CountingModel(responses=plan, calls=Counter())
    graph = create_mma_reranker(model, catalogue=catalogue, toolkits=kits, variant="interactive", backend={"prefill": False})
    return graph.compile(), model, counts


# --- progress on the custom stream ---------------------------------------------------------
def test_each_action_and_tool_call_is_one_progress_event(env):
    catalogue, kits = env
    graph = create_mma_reranker(
        ScriptedChatModel(responses=[TEXT, "not json", GRAPH, SCORE]),
        catalogue=catalogue,
        toolkits=kits,
        backend={"prefill": False},
    ).compile()
    events = list(graph.stream(_request(mask={"text": False}), stream_mode="custom"))
    kinds = [e["event"] for e in events]
    assert kinds == ["mma.action", "mma.tool"] * 3 + ["mma.action", "mma.scored"]
    text, invalid, graph_call = events[1], events[3], events[5]
    assert text["tool"] == "analyze_text" and text["null"] and "unavailable" in text["observation"]
    assert invalid["tool"] is None and invalid["invalid"] == "no_json"
    assert graph_call["tool"] == "retrieve_graph" and graph_call["null"] is False and graph_call["evidence"]
    assert all(isinstance(e["ms"], int) and e["ms"] >= 0 for e in events)
    assert events[-2]["tool"] == "score_candidates" and events[-2]["args"] == {"weights": {"text": 1, "graph": 1}}


def test_a_fallback_is_an_event_with_its_reason(env):
    catalogue, kits = env
    graph = create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule").compile()
    events = list(graph.stream(_request(candidates=["nope"], first_stage_scores=[1.0]), stream_mode="custom"))
    assert events == [{"event": "mma.fallback", "reason": events[0]["reason"]}] and "unknown item id" in events[0]["reason"]


class HostState(TypedDict, total=False):
    user_id: str
    candidates: list[str]
    first_stage_scores: list[float]
    ranking: list[str]
    fallback: bool
    reason: str


def _host(reranker, *, as_node: bool, checkpointer=None):
    """A parent graph that mounts the reranker as a subgraph, or calls it from a node of its own."""
    host = StateGraph(HostState)
    if as_node:

        def rerank(state: HostState) -> HostState:
            out = reranker.invoke({k: state[k] for k in ("user_id", "candidates", "first_stage_scores")})
            return {k: out[k] for k in ("ranking", "fallback", "reason")}

        host.add_node("rerank", rerank)
    else:
        host.add_node("rerank", reranker)
    host.add_edge(START, "rerank")
    host.add_edge("rerank", END)
    return host.compile(checkpointer=checkpointer)


def test_a_parent_streaming_subgraphs_receives_the_progress_events(env):
    catalogue, kits = env
    reranker = create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule").compile()
    chunks = list(_host(reranker, as_node=False).stream(_request(), stream_mode=["custom", "updates"], subgraphs=True))
    custom = [(ns, data) for ns, mode, data in chunks if mode == "custom"]
    assert custom and all(ns and ns[0].startswith("rerank:") for ns, _ in custom)
    assert [d["tool"] for _, d in custom if d["event"] == "mma.tool"] == ["analyze_text", "analyze_image", "retrieve_graph"]
    assert custom[-1][1]["event"] == "mma.scored"


# --- the question through a parent --------------------------------------------------------
@pytest.mark.parametrize("as_node", [False, True], ids=["subgraph", "node"])
def test_the_question_reaches_the_parents_caller_and_resume_repeats_nothing(env, as_node):
    reranker, model, counts = _interactive(env)
    host = _host(reranker, as_node=as_node, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": f"t-{as_node}"}}
    paused = host.invoke(_request(), config)
    (question,) = paused["__interrupt__"]
    assert "question" in question.value and question.value["modality_type"] == "text"
    assert counts == {"analyze_text": 1, "ask_user paused": 1} and model.calls["sync"] == 2

    out = host.invoke(Command(resume="A gentle comedy with animals, please."), config)
    assert not out["fallback"] and sorted(out["ranking"]) == sorted(_request()["candidates"])
    # every tool ran once and the person was asked once; the policy was called once per action
    assert counts == {"analyze_text": 1, "ask_user paused": 1, "ask_user": 1, "retrieve_graph": 1}
    assert model.calls["sync"] == len(ASKING_PLAN)


def test_the_rerank_tool_in_a_tool_calling_agent_pauses_it_and_resumes(env):
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent

    from mma_agent.graphs.embedding import create_rerank_tool

    reranker, model, counts = _interactive(env)
    call = {"name": "rerank_candidates", "args": {k: v for k, v in _request().items()}, "id": "call-1", "type": "tool_call"}

    class ToolCallingAgentModel(ScriptedChatModel):
        agent_calls: Counter = Counter()

        def bind_tools(self, tools, **kwargs):
            return self

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            self.agent_calls["n"] += 1
            if messages[-1].type == "tool":
                msg = AIMessage(content=f"Here is your list. {messages[-1].content}")
            else:
                msg = AIMessage(content="", tool_calls=[call])
            return ChatResult(generations=[ChatGeneration(message=msg)])

    agent_model = ToolCallingAgentModel(responses=["unused"], agent_calls=Counter())
    agent = create_agent(agent_model, tools=[create_rerank_tool(reranker)], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "agent"}}
    paused = agent.invoke({"messages": [{"role": "user", "content": "What should I watch tonight?"}]}, config)
    (question,) = paused["__interrupt__"]
    assert "question" in question.value and counts == {"analyze_text": 1, "ask_user paused": 1}

    out = agent.invoke(Command(resume="Something funny."), config)
    final = out["messages"][-1].content
    assert final.startswith("Here is your list. Top 10:") and "first-stage order" not in final
    assert counts == {"analyze_text": 1, "ask_user paused": 1, "ask_user": 1, "retrieve_graph": 1}
    assert model.calls["sync"] == len(ASKING_PLAN) and agent_model.agent_calls["n"] == 2


# --- async ---------------------------------------------------------------------------------
def test_ainvoke_awaits_the_chat_models_async_api(env):
    catalogue, kits = env
    model = CountingModel(responses=[TEXT, GRAPH, SCORE], calls=Counter())
    graph = create_mma_reranker(model, catalogue=catalogue, toolkits=kits, backend={"prefill": False}).compile()
    sync = graph.invoke(_request())
    assert model.calls == {"sync": 3}

    async def many():
        return await graph.abatch([_request()] * 4)

    outs = asyncio.run(many())
    assert model.calls == {"sync": 3, "async": 12}
    assert all(o["ranking"] == sync["ranking"] and not o["fallback"] for o in outs)


# --- transient backend errors: a real HTTP server that fails, then answers -----------------
class FlakyServer:
    """An OpenAI-compatible chat endpoint (stdlib HTTP) that fails its first `failures` requests
    (HTTP 503, or a connection closed without a reply), then answers from a script."""

    def __init__(self, script: list[str], failures: int, how: str = "503") -> None:
        self.script, self.failures, self.how, self.requests = script, failures, how, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                if outer.requests <= outer.failures:
                    if outer.how == "reset":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self.send_response(503)
                    self.end_headers()
                    return
                turn = sum(m["role"] == "assistant" for m in body["messages"])
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": outer.script[turn]}}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("how", ["503", "reset"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_transient_backend_error_is_retried_then_the_episode_finishes(env, how, mode):
    pytest.importorskip("langchain_openai")
    catalogue, kits = env
    server = FlakyServer([TEXT, SCORE], failures=1, how=how)
    try:
        graph = create_mma_reranker(
            "openai:m", catalogue=catalogue, toolkits=kits, backend={"options": {"base_url": server.url}, "timeout": 10}
        ).compile()
        out = graph.invoke(_request()) if mode == "sync" else asyncio.run(graph.ainvoke(_request()))
    finally:
        server.close()
    assert not out["fallback"], out["reason"]
    assert server.requests == 3 and out["usage"]["llm_calls"] == 2  # one failure, tried again, then one call per action


def test_a_backend_that_keeps_failing_falls_back_after_its_tries(env):
    pytest.importorskip("langchain_openai")
    from mma_agent.graphs.policy import BACKEND_ATTEMPTS

    catalogue, kits = env
    server = FlakyServer([SCORE], failures=100)
    try:
        graph = create_mma_reranker(
            "openai:m", catalogue=catalogue, toolkits=kits, backend={"options": {"base_url": server.url}, "timeout": 10}
        ).compile()
        events = list(graph.stream(_request(), stream_mode=["custom", "values"]))
    finally:
        server.close()
    out = events[-1][1]
    assert out["fallback"] and f"after {BACKEND_ATTEMPTS} tries" in out["reason"] and "503" in out["reason"]
    assert out["ranking"] == _request()["candidates"][::-1] and server.requests == BACKEND_ATTEMPTS
    assert [d["event"] for m, d in events if m == "custom"] == ["mma.fallback"]


# --- run-scoped dependencies through Runtime ----------------------------------------------
def test_nodes_run_alone_with_a_runtime_and_a_run_may_bring_its_own_context(env):
    from dataclasses import replace

    from langgraph.runtime import Runtime

    from mma_agent.graphs import nodes
    from mma_agent.toolkits import tool_vocabulary

    catalogue, kits = env
    ctx = nodes.RerankContext(catalogue, kits, tool_vocabulary(kits), variant="rule")
    seen: list[Any] = []
    runtime = Runtime(context=ctx, stream_writer=seen.append)
    state = nodes.validate(_request(), runtime)
    assert state["resolved"]["candidates"].dtype.kind == "i" and not state["fallback"]
    state |= nodes.policy(state, runtime)
    assert state["action"] == {"tool": "analyze_text", "args": {}} and nodes.after_policy(state) == "tools"
    state |= nodes.run_tool(state, runtime)
    assert set(state["evidence"]) and [e["event"] for e in seen] == ["mma.action", "mma.tool"]

    graph = create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule").compile()
    first_stage = graph.invoke(_request(), context=replace(ctx, alpha=1.0))  # this run's own context: the first stage only
    assert first_stage["ranking"] == _request()["candidates"][::-1] and not first_stage["fallback"]
    default = graph.invoke(_request())["ranking"]
    assert default != first_stage["ranking"]  # the factory's context (alpha 0.5) otherwise
    assert graph.invoke(_request(), context=nodes.RerankContext())["ranking"] == default  # an empty one (a server's) too
