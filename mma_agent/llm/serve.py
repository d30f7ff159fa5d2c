"""An OpenAI-compatible chat server over any chat model (`mma serve`), on loopback by default.

It speaks the subset of the protocol the `openai:` backend uses: POST /v1/chat/completions with
`model`, `messages`, optional `max_tokens` / `max_completion_tokens`, answering one non-streamed
choice with usage; GET /v1/models. Like vLLM's server it honours the structured-outputs choice
(`{"structured_outputs": {"choice": [...]}}`, or the older `{"guided_choice": [...]}`): with a
local model the reply is exactly one of the choices, by constrained decoding. It serves the embedded model to other processes and lets the
tests exercise the OpenAI-compatible path against a real server. At scale, use `vllm serve`.

Built on Starlette and uvicorn (the `serve` extra): every request body is capped (413 past
`max_body` bytes, 400 for a malformed Content-Length), validated by a pydantic model (400 naming
the field), checked against the model's context length when the model can count its prompt
tokens (400 with the limit), and generated on a worker thread, at most `concurrency` at a time;
uvicorn shuts down cleanly on SIGINT and SIGTERM.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mma_agent.extras import require

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20  # 1 MiB: a chat request of the reranker is a few KiB


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


MAX_CHOICES = 1024  # the reranker offers at most a few dozen actions
ChoiceText = Annotated[str, Field(min_length=1, max_length=4096)]


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` request field; `choice` is the part served here (the others
    are accepted and ignored, so the client falls back to parsing what it gets)."""

    model_config = ConfigDict(extra="allow")

    choice: list[ChoiceText] | None = Field(default=None, min_length=1, max_length=MAX_CHOICES)


class ChatRequest(BaseModel):
    """The fields read from a chat-completions request; others (temperature, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32_768)
    structured_outputs: StructuredOutputs | None = None  # vLLM's request extension (vLLM >= 0.12)
    guided_choice: list[ChoiceText] | None = Field(default=None, min_length=1, max_length=MAX_CHOICES)  # its older spelling

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens  # newer clients send the former

    @property
    def choice(self) -> list[str] | None:
        """The replies the request allows (vLLM's structured-outputs choice), if it names any."""
        return (self.structured_outputs.choice if self.structured_outputs else None) or self.guided_choice


def _error(status: int, message: str, kind: str = "invalid_request_error"):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


async def _body(request, max_body: int) -> bytes | Any:
    """The request body, or an error response: a Content-Length that is not a non-negative integer
    (400), or a body past `max_body` bytes, declared or streamed (413)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return _error(400, f"Content-Length must be a non-negative integer, got {declared[:20]!r}")
        if int(declared) > max_body:
            return _error(413, f"request body of {declared} bytes is over the limit of {max_body}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            return _error(413, f"request body is over the limit of {max_body} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model: Any, model_name: str, *, max_body: int = MAX_BODY, concurrency: int = 2):
    """The Starlette app serving `model` under `model_name`."""
    require("starlette", "serve")
    import anyio
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    limiter = anyio.CapacityLimiter(concurrency)

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "mma-agent"}]})

    async def chat(request):
        body = await _body(request, max_body)
        if not isinstance(body, bytes):
            return body
        try:
            req = ChatRequest.model_validate(json.loads(body or b"null"))
        except json.JSONDecodeError as err:
            return _error(400, f"the body is not JSON ({err.msg} at position {err.pos})")
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "body"
            return _error(
                400, f"{where}: {first['msg']}; expected {{'model', 'messages': [{{'role', 'content'}}, ...], 'max_tokens'?}}"
            )
        msgs = [kinds[m.role](m.content) for m in req.messages]
        count = getattr(model, "count_prompt_tokens", None)
        window = getattr(model, "context_length", None)
        if count is not None and window:
            n = await anyio.to_thread.run_sync(count, msgs, limiter=limiter)
            want = req.limit or getattr(model, "max_new_tokens", 0)
            if n + want > window:
                return _error(
                    400, f"the prompt is {n} tokens and asks for {want} more; the context length of {model_name} is {window}"
                )
        kw: dict[str, Any] = {"max_new_tokens": req.limit} if req.limit else {}
        if req.choice:  # the reply is exactly one of them where the model can keep to it (a local model: constrained decoding)
            from mma_agent.llm import choice_kwargs

            kw.update(choice_kwargs(model, req.choice))
        try:
            out = await anyio.to_thread.run_sync(lambda: model.invoke(msgs, **kw), limiter=limiter)
        except Exception as err:  # the server stays up; the client sees an error response
            log.warning("generation failed: %s: %s", type(err).__name__, err)
            return _error(500, f"{type(err).__name__}: {err}", "server_error")
        usage = getattr(out, "usage_metadata", None) or {}
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": str(out.content)}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": usage.get("input_tokens", 0),
                    "completion_tokens": usage.get("output_tokens", 0),
                    "total_tokens": usage.get("total_tokens", 0),
                },
            }
        )

    async def not_found(request, exc):
        return _error(exc.status_code, f"no route {request.method} {request.url.path}", "not_found")

    routes = [Route("/v1/models", models, methods=["GET"]), Route("/v1/chat/completions", chat, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def serve(
    model: Any, model_name: str, host: str = "127.0.0.1", port: int = 8000, *, max_body: int = MAX_BODY, concurrency: int = 2
) -> tuple[Any, socket.socket]:
    """A uvicorn server for the app and its bound socket (port 0 picks a free one); run it with
    `server.run(sockets=[sock])`, which returns after SIGINT or SIGTERM once requests in flight finish."""
    uvicorn = require("uvicorn", "serve")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        create_app(model, model_name, max_body=max_body, concurrency=concurrency),
        log_level="warning",
        backlog=2048,
        timeout_graceful_shutdown=30,
    )
    return uvicorn.Server(config), sock
