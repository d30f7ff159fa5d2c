"""An OpenAI-compatible chat server over any chat model (`mma serve`), on loopback by default.

It speaks the subset of the protocol the `openai:` backend uses: POST /v1/chat/completions with
`model`, `messages`, optional `max_tokens` / `max_completion_tokens`, answering one non-streamed
choice with usage; GET /v1/models. Like vLLM's server it honours the structured-outputs choice
(`{"structured_outputs": {"choice": [...]}}`, or the older `{"guided_choice": [...]}`): with a
local model the reply is exactly one of the choices, by constrained decoding. It serves the embedded model to other processes and lets the
tests exercise the OpenAI-compatible path against a real server. At scale, use `vllm serve`.

Built on Starlette and uvicorn (the `serve` extra), as a production server would be:
- it says it is ready (`on_ready`) only once it accepts connections;
- a client gets `header_timeout` seconds to send its request line and headers (the connection is
  closed after) and `body_timeout` seconds for its body (408); at most `max_connections` are open
  at once (more are closed on arrival, and requests past the cap get 503);
- every body is capped (413 past `max_body` bytes, 400 for a malformed Content-Length) and
  validated by a pydantic model: 400 naming the field for every malformed body, text that is not
  valid Unicode (a lone surrogate) included;
- a choice list is bounded (count, each length, total size) and may not hold the tokens the
  model's tokenizer reserves (400 naming them); `max_tokens` caps the reply under a choice too
  (`finish_reason: "length"`), as in vLLM;
- the prompt is checked against the model's context length when the model can count its tokens
  (400 with the limit); generation runs on a worker thread, at most `concurrency` at a time;
- a client that goes away mid-request costs one log line, not a traceback; uvicorn shuts down
  cleanly on SIGINT and SIGTERM.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mma_agent.extras import require

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20  # 1 MiB: a chat request of the reranker is a few KiB


MAX_CHOICES = 256  # the reranker offers at most a few dozen actions
MAX_CHOICE_CHARS = 1024  # one action line is under 200 characters
MAX_CHOICES_TOTAL = 32_768  # characters over the whole list: 1,024 choices of 1,000 characters took 5.6 s and 18 MB
HEADER_TIMEOUT = 10.0  # seconds for the request line and headers
BODY_TIMEOUT = 30.0  # seconds for the whole body
MAX_CONNECTIONS = 256


def _unicode(text: str) -> str:
    """Text that encodes as UTF-8; a lone surrogate (JSON's "\\ud800") is a 400, not a 500 later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        msg = f"not valid Unicode (a lone surrogate at position {err.start}); send UTF-8 text"
        raise ValueError(msg) from None
    return text


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, AfterValidator(_unicode)]


ChoiceText = Annotated[str, Field(min_length=1, max_length=MAX_CHOICE_CHARS), AfterValidator(_unicode)]


def _bounded(choices: list[str] | None) -> list[str] | None:
    if choices is not None and sum(len(c) for c in choices) > MAX_CHOICES_TOTAL:
        msg = f"the choices hold {sum(len(c) for c in choices)} characters; at most {MAX_CHOICES_TOTAL} in all"
        raise ValueError(msg)
    return choices


Choices = Annotated[list[ChoiceText], Field(min_length=1, max_length=MAX_CHOICES), AfterValidator(_bounded)]


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` request field; `choice` is the part served here (the others
    are accepted and ignored, so the client falls back to parsing what it gets)."""

    model_config = ConfigDict(extra="allow")

    choice: Choices | None = None


class ChatRequest(BaseModel):
    """The fields read from a chat-completions request; others (temperature, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32_768)
    structured_outputs: StructuredOutputs | None = None  # vLLM's request extension (vLLM >= 0.12)
    guided_choice: Choices | None = None  # its older spelling

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


async def _body(request, max_body: int, timeout: float) -> bytes | Any:
    """The request body, or an error response: a Content-Length that is not a non-negative integer
    (400), a body past `max_body` bytes, declared or streamed (413), a body not complete within
    `timeout` seconds (408), a client that went away (one log line; nobody reads the answer)."""
    import anyio
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return _error(400, f"Content-Length must be a non-negative integer, got {declared[:20]!r}")
        if int(declared) > max_body:
            return _error(413, f"request body of {declared} bytes is over the limit of {max_body}")
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body:
                    return _error(413, f"request body is over the limit of {max_body} bytes")
                chunks.append(chunk)
    except TimeoutError:
        return _error(408, f"the request body did not arrive within {timeout:g} s")
    except ClientDisconnect:
        log.info("client %s went away before its request body was complete", request.client.host if request.client else "?")
        return _error(400, "the client went away")
    return b"".join(chunks)


def create_app(
    model: Any, model_name: str, *, max_body: int = MAX_BODY, concurrency: int = 2, body_timeout: float = BODY_TIMEOUT
):
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
        body = await _body(request, max_body, body_timeout)
        if not isinstance(body, bytes):
            return body
        try:
            req = ChatRequest.model_validate(json.loads(body or b"null"))
        except UnicodeDecodeError as err:
            return _error(400, f"the body is not UTF-8 ({err.reason} at byte {err.start})")
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

            reserved = getattr(model, "reserved_tokens", None)
            bad = sorted({t for t in (reserved() if reserved else ()) for c in req.choice if t in c})
            if bad:
                return _error(400, f"choice: {bad} are tokens the model's tokenizer reserves; no reply can be one of them")
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
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": str(out.content)},
                        "finish_reason": (getattr(out, "response_metadata", None) or {}).get("finish_reason", "stop"),
                    }
                ],
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


def _guarded_protocol(header_timeout: float, max_connections: int):
    """uvicorn's h11 protocol with a deadline for the request line and headers (uvicorn has none: a
    client that sends half a header held its connection forever) and a cap on open connections."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closed a connection whose request headers did not arrive within %g s", header_timeout)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.info("refused a connection: %d open, at most %d", len(self.connections) - 1, max_connections)
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on a kept-alive connection gets the same deadline

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


def serve(
    model: Any,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_body: int = MAX_BODY,
    concurrency: int = 2,
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    on_ready: Any = None,
) -> tuple[Any, socket.socket]:
    """A uvicorn server for the app and its bound socket (port 0 picks a free one); run it with
    `server.run(sockets=[sock])`, which returns after SIGINT or SIGTERM once requests in flight
    finish. `on_ready(port)` is called once the server accepts connections."""
    uvicorn = require("uvicorn", "serve")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        create_app(model, model_name, max_body=max_body, concurrency=concurrency, body_timeout=body_timeout),
        log_level="warning",
        backlog=2048,
        timeout_graceful_shutdown=30,
        http=_guarded_protocol(header_timeout, max_connections),
        limit_concurrency=max_connections,
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and on_ready is not None:
                on_ready(sock.getsockname()[1])

    return Server(config), sock
