"""`mma serve`: a chat model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_serve(args) -> None:
    from mma_agent.llm import resolve_chat_model
    from mma_agent.llm.serve import serve

    model = resolve_chat_model(args.model, cache_dir=Path(args.workdir or ".mma") / "models")
    server, sock = serve(
        model,
        args.model,
        args.host,
        args.port,
        max_body=args.max_body,
        concurrency=args.concurrency,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        on_ready=lambda port: print(f"serving {args.model} at http://{args.host}:{port}/v1 (OpenAI-compatible)", flush=True),
    )
    server.run(sockets=[sock])  # returns on SIGINT / SIGTERM after the requests in flight


def register(sub, common: argparse.ArgumentParser) -> None:
    """Adds this group's commands to the `mma` parser."""
    from mma_agent.llm.serve import BODY_TIMEOUT, HEADER_TIMEOUT, MAX_BODY, MAX_CONNECTIONS

    sv = sub.add_parser("serve", parents=[common], help="serve a chat model over an OpenAI-compatible HTTP API")
    sv.add_argument("--model", default="transformers:smollm2-135m")
    sv.add_argument("--host", default="127.0.0.1", help="loopback by default")
    sv.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    sv.add_argument("--max-body", type=int, default=MAX_BODY, help="request body limit in bytes (413 past it)")
    sv.add_argument("--concurrency", type=int, default=2, help="generations at a time (the rest wait)")
    sv.add_argument("--header-timeout", type=float, default=HEADER_TIMEOUT, help="seconds for a request's line and headers")
    sv.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT, help="seconds for a request's body (408 past it)")
    sv.add_argument(
        "--max-connections", type=int, default=MAX_CONNECTIONS, help="open connections at most (503 or closed past it)"
    )
    sv.set_defaults(func=cmd_serve)
