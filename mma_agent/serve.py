"""A minimal OpenAI-compatible chat server over any chat model (`mma serve`), on loopback by default.

It speaks the subset of the protocol the `openai:` backend uses: POST /v1/chat/completions with
`model`, `messages`, optional `max_tokens`, answering one non-streamed choice with usage; GET
/v1/models. It serves the embedded model to other processes, and lets the tests exercise the
OpenAI-compatible path against a real server. At scale, use `vllm serve` instead.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


def make_handler(model: Any, model_name: str):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug(fmt, *args)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "mma-agent"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                msgs = [kinds[m["role"]](m["content"]) for m in req["messages"]]
            except (ValueError, KeyError, TypeError) as err:
                self._send(400, {"error": {"message": f"bad request: {err}; expected {{'model', 'messages': [{{'role', 'content'}}]}}", "type": "invalid_request_error"}})
                return
            limit = req.get("max_completion_tokens") or req.get("max_tokens")  # newer clients send the former
            kw = {"max_new_tokens": int(limit)} if limit else {}
            try:
                out = model.invoke(msgs, **kw)
            except Exception as err:  # the server stays up; the client sees an error response
                self._send(500, {"error": {"message": f"{type(err).__name__}: {err}", "type": "server_error"}})
                return
            usage = getattr(out, "usage_metadata", None) or {}
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": str(out.content)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": usage.get("input_tokens", 0), "completion_tokens": usage.get("output_tokens", 0), "total_tokens": usage.get("total_tokens", 0)},
            })  # fmt: skip

    return Handler


def serve(model: Any, model_name: str, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """Start serving in the current thread's caller (call `.serve_forever()`); returns the server."""
    return ThreadingHTTPServer((host, port), make_handler(model, model_name))
