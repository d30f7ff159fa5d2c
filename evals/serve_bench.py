"""`mma bench serve`: `mma serve` with the embedded model under concurrent clients, what each
malformed request gets back, and what abusive clients cost it.

The server runs in this process on a free loopback port (uvicorn in a thread); `clients` threads
send `requests` chat requests (a reranker-sized prompt, a few new tokens) over real HTTP. Reported:
status codes, connection errors, and latency p50/p99; then one request per malformed case
(bodies, encodings, choice lists) with its status code, and whether the server still answers
afterwards; then the abuse: clients that send half their headers, half their bodies, or go away
mid-body, all at once, with the server's open connections and `/v1/models` sampled every second.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MALFORMED: dict[str, tuple[dict, bytes]] = {
    "not JSON": ({}, b"{not json"),
    "empty body": ({}, b""),
    "empty messages": ({}, b'{"messages": []}'),
    "unknown role": ({}, b'{"messages": [{"role": "wizard", "content": "x"}]}'),
    "max_tokens 'abc'": ({}, b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "abc"}'),
    "max_tokens -5": ({}, b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}'),
    "prompt over the context length": ({}, b'{"messages": [{"role": "user", "content": "' + b"lorem ipsum " * 6000 + b'"}]}'),
    "64 MiB body": ({}, b"x" * (64 << 20)),
    "Content-Length -1": ({"content-length": "-1"}, b"{}"),
    "Content-Length 2000000000": ({"content-length": "2000000000"}, b"{}"),
    "lone surrogate in a message": ({}, b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}'),
    "body not UTF-8": ({}, b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'),
    "300 choices": (
        {},
        b'{"messages": [{"role": "user", "content": "x"}], "guided_choice": [' + b",".join(b'"a"' for _ in range(300)) + b"]}",
    ),
    "a 5,000-character choice": (
        {},
        b'{"messages": [{"role": "user", "content": "x"}], "guided_choice": ["' + b"w" * 5000 + b'"]}',
    ),
    "1,024 choices of 1,000 characters": (
        {},
        b'{"messages": [{"role": "user", "content": "x"}], "guided_choice": ['
        + b",".join(b'"' + b"w" * 1000 + b'"' for _ in range(1024))
        + b"]}",
    ),
    "choices of reserved tokens": (
        {},
        b'{"messages": [{"role": "user", "content": "x"}], "guided_choice": ["<|im_end|>", "<|endoftext|>"]}',
    ),
    "max_tokens 1 under a 1,000-character choice": (
        {},
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "guided_choice": ["' + b"w" * 1000 + b'"]}',
    ),
}


def _raw_post(port: int, path: str, headers: dict[str, str], body: bytes, timeout: float = 60) -> tuple[str, str]:
    """POST over a raw socket (an HTTP client refuses to send a lying Content-Length): the status
    code and the error message of the answer, or what happened to the connection."""
    import json
    import socket

    head = {
        "Host": "127.0.0.1",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Connection": "close",
        **{k.title(): v for k, v in headers.items()},
    }
    data = (f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:  # the server answered and closed before the whole body went out (a refused large body)
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            return "no answer within 60 s", ""
        except OSError as err:
            if not chunks:
                return f"connection {type(err).__name__}", ""
    raw = b"".join(chunks)
    if not raw:
        return "connection closed without an answer", ""
    status = raw.split(b"\r\n", 1)[0].split(b" ")[1].decode()
    try:
        answer = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        message = answer.get("error", {}).get("message", "")
        if not message and answer.get("choices"):
            c = answer["choices"][0]
            message = f"{len(c['message']['content'])} characters, finish_reason {c['finish_reason']}"
    except ValueError:
        message = ""
    return status, message[:90]


def _abuse(server, port: int, *, half_headers: int = 50, half_bodies: int = 20, gone: int = 20, seconds: int = 40) -> list[dict]:
    """Clients that hold connections open (half-sent headers, half-sent bodies) and clients that go
    away mid-body, all at once; every second: the server's open connections, and whether
    `/v1/models` answers and how fast."""
    import socket

    import httpx

    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    body_head = head + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    held = []
    for _ in range(half_headers):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(head)
        held.append(s)
    for _ in range(half_bodies):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(body_head)
        held.append(s)
    for _ in range(gone):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(body_head)
    rows, start = [], time.perf_counter()
    for second in range(seconds + 1):
        while time.perf_counter() - start < second:
            time.sleep(0.05)
        t = time.perf_counter()
        try:
            ok = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 200
        except httpx.HTTPError:
            ok = False
        if second % 5 == 0 or second == 1:
            rows.append(
                {
                    "s": second,
                    "open connections (server)": len(server.server_state.connections),
                    "/v1/models": f"{'200' if ok else 'NO'} in {1000 * (time.perf_counter() - t):.0f} ms",
                }
            )
    for s in held:
        s.close()
    return rows


def bench_serve(
    serve, model_spec: str, cache_dir, *, clients: int = 50, requests: int = 200, max_tokens: int = 8, abuse_seconds: int = 40
) -> dict[str, list[dict]]:
    """`serve` is `mma_agent.llm.serve.serve` (passed in by the CLI: the server sits above this layer)."""
    import logging

    import httpx

    from mma_agent.llm import resolve_chat_model

    class _Count(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines, self.tracebacks = 0, 0

        def emit(self, record: logging.LogRecord) -> None:
            self.lines += 1
            self.tracebacks += record.exc_info is not None or "Exception in ASGI application" in record.getMessage()

    counter = _Count()
    for name in ("mma_agent.llm.serve", "uvicorn.error"):
        logging.getLogger(name).addHandler(counter)
        logging.getLogger(name).setLevel(logging.INFO)
    model = resolve_chat_model(model_spec, cache_dir=cache_dir)
    server, sock = serve(model, model_spec, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    prompt = {
        "messages": [
            {"role": "system", "content": "You rerank a pool of candidate items for one user. " * 10},
            {"role": "user", "content": "The user liked 40 items. The pool has 100 candidates. Choose your first action."},
        ],
        "max_tokens": max_tokens,
    }
    statuses: Counter[str] = Counter()
    seconds: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        start = time.perf_counter()
        try:
            r = httpx.post(url, json=prompt, timeout=600)
            key = str(r.status_code)
        except httpx.HTTPError as err:
            key = f"connection error ({type(err).__name__})"
        with lock:
            statuses[key] += 1
            seconds.append(time.perf_counter() - start)

    httpx.post(url, json=prompt, timeout=600)  # load the model before timing
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    ms = np.array(seconds) * 1000
    load = [
        {
            "clients": clients,
            "requests": requests,
            "status codes": ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
            "errors": sum(v for k, v in statuses.items() if k != "200"),
            "p50 ms": f"{np.percentile(ms, 50):.0f}",
            "p99 ms": f"{np.percentile(ms, 99):.0f}",
            "requests/s": f"{requests / wall:.2f}",
        }
    ]
    cases = []
    port = sock.getsockname()[1]
    for name, (headers, body) in MALFORMED.items():
        status, message = _raw_post(port, "/v1/chat/completions", headers, body)
        alive = httpx.get(url.replace("/chat/completions", "/models"), timeout=30).status_code == 200
        cases.append({"case": name, "status": status, "message": message, "server still answers": "yes" if alive else "NO"})
    counter.lines = counter.tracebacks = 0
    abuse = _abuse(server, port, seconds=abuse_seconds)
    logged = [{"log lines": counter.lines, "tracebacks": counter.tracebacks}]
    server.should_exit = True
    thread.join(timeout=60)
    return {
        f"mma serve ({model_spec}) under {clients} concurrent clients, {max_tokens} new tokens per request": load,
        "Malformed requests (one each)": cases,
        "Abuse: 50 clients with half-sent headers, 20 with half-sent bodies, 20 that go away mid-body, all at once "
        "(header deadline 10 s, body deadline 30 s)": abuse,
        "What the abuse wrote to the log": logged,
    }
