"""The reranker behind the LangGraph CLI's in-memory dev server (`langgraph dev`, from
langgraph-cli[inmem]) on loopback, driven through langgraph-sdk as a deployed app would be: the
graphs of our langgraph.json answer a rerank, and an interactive reranker pauses on its question
(LangGraph interrupt) and resumes on the thread with the answer."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("langgraph_api")
pytest.importorskip("langgraph_sdk")
pytest.importorskip("sentence_transformers")

ROOT = Path(__file__).resolve().parents[1]
# A graph the server loads beside ours: MMA-Interactive whose policy is scripted to ask first (a
# fake chat model: this checks the server's interrupt/resume wiring, not a policy).
ASKS = """
import json, os
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from mma_agent import Pipeline, PipelineConfig, create_mma_reranker
from mma_agent.config import load_config

cfg = load_config(os.environ["MMA_CONFIG"]).model_dump()
cfg["data"]["path"], cfg["workdir"] = os.environ["MMA_DATA"], os.environ["MMA_WORKDIR"]
pipeline = Pipeline(PipelineConfig.model_validate(cfg))
catalogue, kits = pipeline.toolkits(image=False)
plan = [json.dumps({"tool": "ask_user", "args": {"modality_type": "text", "query": "What do you feel like?"}}),
        json.dumps({"tool": "score_candidates", "args": {"weights": {}}})]
graph = create_mma_reranker(
    FakeListChatModel(responses=plan * 100), catalogue=catalogue, toolkits=kits, variant="interactive", backend={"prefill": False}
).compile()
"""
CONFIG = (
    "retrievers:\n  epochs: 2\n  eval_every: 1\n  dim: 8\npools:\n  size: 10\nrelevance:\n  epochs: 2\n"
    "image:\n  kind: thumbnail\n  width: 4\n  height: 4\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.conftest import write_tiny_dataset

    work = tmp_path_factory.mktemp("langgraph")
    data = write_tiny_dataset(work / "tiny")
    (work / "config.yaml").write_text(CONFIG)
    (work / "asks.py").write_text(ASKS)
    spec = json.loads((ROOT / "langgraph.json").read_text())  # ours, with its paths made absolute, plus the scripted one
    graphs = {
        name: f"{(ROOT / path).resolve()}:{attr}" for name, (path, attr) in ((n, g.split(":")) for n, g in spec["graphs"].items())
    }
    (work / "langgraph.json").write_text(
        json.dumps({**spec, "dependencies": [str(ROOT)], "graphs": {**graphs, "asks_first": f"{work / 'asks.py'}:graph"}})
    )
    env = {
        **os.environ,
        "MMA_CONFIG": str(work / "config.yaml"),
        "MMA_DATA": str(data),
        "MMA_WORKDIR": str(work / "mma"),
        "MMA_IMAGE": "0",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        "PYTHONPATH": str(ROOT),
    }
    port = _free_port()
    cli = Path(sys.executable).with_name("langgraph")
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(cli),
            "dev",
            "--config",
            str(work / "langgraph.json"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-browser",
            "--no-reload",
            "--allow-blocking",
        ],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        from langgraph_sdk import get_sync_client

        client = get_sync_client(url=url)
        deadline = time.time() + 600
        while True:
            try:
                if len(client.assistants.search(limit=10)) >= 4:
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"langgraph dev did not come up:\n{(work / 'server.log').read_text()[-3000:]}")
            time.sleep(2)
        yield client, data
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _request() -> dict:
    cands = [f"m{i}" for i in range(0, 40, 3)]
    return {"user_id": "u0", "candidates": cands, "first_stage_scores": [float(i) for i in range(len(cands))]}


@pytest.mark.slow
def test_the_dev_server_serves_our_graphs_and_reranks(server):
    client, _ = server
    names = {a["graph_id"] for a in client.assistants.search(limit=20)}
    assert {"mma_reranker", "mma_interactive", "mma_host_pipeline"} <= names
    thread = client.threads.create()
    out = client.runs.wait(thread["thread_id"], "mma_reranker", input=_request())
    assert sorted(out["ranking"]) == sorted(_request()["candidates"]) and "fallback" in out
    bad = client.runs.wait(client.threads.create()["thread_id"], "mma_reranker", input={"user_id": "u0", "candidates": []})
    assert bad["fallback"] and "candidates" in bad["reason"]  # a bad request over the server: the fallback and its reason


@pytest.mark.slow
def test_an_interactive_run_pauses_on_its_question_and_resumes_with_the_answer(server):
    client, _ = server
    thread = client.threads.create()["thread_id"]
    client.runs.wait(thread, "asks_first", input=_request())
    state = client.threads.get_state(thread)
    asked = [i["value"] for t in state["tasks"] for i in t.get("interrupts", [])]
    assert asked and asked[0]["modality_type"] == "text" and state["next"]
    out = client.runs.wait(thread, "asks_first", command={"resume": "Something like m3 and m6, please."})
    assert not out["fallback"] and sorted(out["ranking"]) == sorted(_request()["candidates"])
    assert [t["action"]["tool"] for t in out["trace"]] == ["ask_user", "score_candidates"] and "m3" in out["trace"][0][
        "observation"
    ]
