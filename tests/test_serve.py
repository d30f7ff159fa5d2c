"""`mma serve`'s HTTP boundary: every malformed request gets a 4xx naming the problem, the server
stays up. Over Starlette's test client with a scripted chat model (wiring only; the real model
behind a real server is in test_openai_backend.py)."""

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from mma_agent.llm.serve import create_app  # noqa: E402


class _Counting(FakeListChatModel):
    """Counts prompt tokens as words, with a small context window, like the local model reports them."""

    context_length: int = 50
    max_new_tokens: int = 10

    def count_prompt_tokens(self, messages) -> int:
        return sum(len(str(m.content).split()) for m in messages)


class _Failing(FakeListChatModel):
    def _call(self, *a, **k):
        raise RuntimeError("the GPU caught fire")


def _client(model=None, **kw) -> TestClient:
    return TestClient(create_app(model or _Counting(responses=["ok"] * 50), "test-model", **kw))


def test_a_good_request_is_answered():
    c = _client()
    r = c.post(
        "/v1/chat/completions",
        json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"
    assert c.get("/v1/models").json()["data"][0]["id"] == "test-model"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not JSON"),
        (b"", 400, "body"),
        (b"[]", 400, "body"),
        (b'{"messages": []}', 400, "messages"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "messages.0.role"),
        (b'{"messages": [{"role": "user"}]}', 400, "messages.0.content"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "abc"}', 400, "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}', 400, "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "' + b"word " * 60 + b'"}]}', 400, "context length of test-model is 50"),
    ],
)
def test_malformed_requests_get_a_4xx_that_names_the_problem(body, status, needle):
    c = _client()
    r = c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text
    assert c.get("/v1/models").status_code == 200  # still up


def test_bodies_over_the_limit_and_bad_lengths_are_refused_before_reading():
    c = _client(max_body=1000)
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * 2000 + b'"}]}'
    r = c.post("/v1/chat/completions", content=big)
    assert r.status_code == 413 and "over the limit of 1000" in r.json()["error"]["message"]
    for bad in ("-1", "abc", "2000000000"):
        r = c.post("/v1/chat/completions", content=b"{}", headers={"content-length": bad})
        assert r.status_code in (400, 413), (bad, r.status_code)


def test_unknown_routes_and_backend_failures_answer_json_errors():
    c = _client(_Failing(responses=["x"]))
    assert c.get("/v2/nothing").status_code == 404
    assert c.get("/v1/chat/completions").status_code == 405
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500 and "the GPU caught fire" in r.json()["error"]["message"]


class _Choosing(FakeListChatModel):
    """Records what the server asks of a model that can decode under a choice constraint."""

    supports_choice: bool = True
    seen: list = []

    def _call(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append(kwargs)
        return kwargs.get("allowed_completions", ["free"])[-1]


def test_the_structured_outputs_choice_reaches_a_model_that_can_keep_to_it():
    model = _Choosing(responses=["x"], seen=[])
    c = _client(model)
    msgs = [{"role": "user", "content": "hi"}]
    for extension in (
        {"structured_outputs": {"choice": ["a", "b"]}},
        {"guided_choice": ["a", "b"]},
    ):  # vLLM's spelling, and its older one
        r = c.post("/v1/chat/completions", json={"messages": msgs, **extension})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "b"
    assert model.seen[-1]["allowed_completions"] == ["a", "b"] and model.seen[-1]["prefill"] == ""
    assert c.post("/v1/chat/completions", json={"messages": msgs}).json()["choices"][0]["message"]["content"] == "free"
    plain = _client()
    assert (
        plain.post("/v1/chat/completions", json={"messages": msgs, "guided_choice": ["a"]}).json()["choices"][0]["message"][
            "content"
        ]
        == "ok"
    )
    for bad, where in (
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
        ({"guided_choice": ["a", 3]}, "guided_choice.1"),
        ({"structured_outputs": {"choice": [""]}}, "structured_outputs.choice.0"),
    ):
        r = c.post("/v1/chat/completions", json={"messages": msgs, **bad})
        assert r.status_code == 400 and where in r.json()["error"]["message"], r.text


class _Reserved(FakeListChatModel):
    def reserved_tokens(self) -> list[str]:
        return ["<|im_end|>", "<|endoftext|>"]


MSGS = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}',
            "messages.0.content",
        ),  # a lone surrogate: was a plain-text 500
        (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "not UTF-8"),
        (b'{"messages": [{"role": "user", "content": "x"}], "guided_choice": ["ok", "\\udfff"]}', "guided_choice.1"),
    ],
)
def test_every_malformed_encoding_is_a_400(body, needle):
    r = _client().post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and needle in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("choice", "needle"),
    [
        (["a"] * 257, "at most 256"),
        (["w" * 1025], "at most 1024 characters"),
        (["w" * 1000] * 40, "at most 32768 in all"),
        (["<|im_end|>", "<|endoftext|>"], "tokens the model's tokenizer reserves"),
    ],
)
def test_choice_lists_are_validated_and_bounded(choice, needle):
    r = _client(_Reserved(responses=["x"])).post("/v1/chat/completions", json={"messages": MSGS, "guided_choice": choice})
    assert r.status_code == 400 and needle in r.json()["error"]["message"]


@pytest.fixture
def live():
    """`mma serve`'s server on a real socket, with short timeouts, in a thread."""
    import threading

    from mma_agent.llm.serve import serve

    ready = threading.Event()
    server, sock = serve(
        _Counting(responses=["ok"] * 100), "test-model", port=0, header_timeout=0.5, body_timeout=0.5, max_connections=8,
        on_ready=lambda port: ready.set(),
    )  # fmt: skip
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(30)


def _closed_within(s, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        return s.recv(65536) == b""
    except TimeoutError:
        return False


def test_ready_means_accepting_and_slow_clients_are_cut(live, caplog):
    import logging
    import socket
    import time

    port = live
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:  # ready: it accepts at once
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in s.recv(65536)
    half = socket.create_connection(("127.0.0.1", port), timeout=2)
    half.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    assert _closed_within(half, 3)
    slow = socket.create_connection(("127.0.0.1", port), timeout=2)
    slow.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{"
    )
    slow.settimeout(3)
    assert b"408" in slow.recv(65536)
    with caplog.at_level(logging.INFO):
        gone = socket.create_connection(("127.0.0.1", port), timeout=2)
        gone.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        gone.close()  # goes away mid-body
        time.sleep(0.3)
    assert "Exception in ASGI application" not in caplog.text
    many = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(12)]  # past the cap of 8
    closed = sum(_closed_within(s, 2) for s in many)
    assert closed >= 4
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:  # still answers
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in s.recv(65536)
