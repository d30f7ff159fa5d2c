"""`mma bench serve`: `mma serve` with the embedded model under concurrent clients, and what each
malformed request gets back.

The server runs in this process on a free loopback port (uvicorn in a thread); `clients` threads
send `requests` chat requests (a reranker-sized prompt, a few new tokens) over real HTTP. Reported:
status codes, connection errors, and latency p50/p99; then one request per malformed case with
its status code, and whether the server still answers afterwards.
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
        message = json.loads(raw.split(b"\r\n\r\n", 1)[1]).get("error", {}).get("message", "")
    except ValueError:
        message = ""
    return status, message[:90]


def bench_serve(
    serve, model_spec: str, cache_dir, *, clients: int = 50, requests: int = 200, max_tokens: int = 8
) -> dict[str, list[dict]]:
    """`serve` is `mma_agent.llm.serve.serve` (passed in by the CLI: the server sits above this layer)."""
    import httpx

    from mma_agent.llm import resolve_chat_model

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
    server.should_exit = True
    thread.join(timeout=60)
    return {
        f"mma serve ({model_spec}) under {clients} concurrent clients, {max_tokens} new tokens per request": load,
        "Malformed requests (one each)": cases,
    }
