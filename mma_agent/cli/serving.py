"""`mma serve`: a chat model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_serve(args) -> None:
    from mma_agent.llm import resolve_chat_model
    from mma_agent.llm.serve import serve

    model = resolve_chat_model(args.model, cache_dir=Path(args.workdir or ".mma") / "models")
    server, sock = serve(model, args.model, args.host, args.port, max_body=args.max_body, concurrency=args.concurrency)
    print(f"serving {args.model} at http://{args.host}:{sock.getsockname()[1]}/v1 (OpenAI-compatible)", flush=True)
    server.run(sockets=[sock])  # returns on SIGINT / SIGTERM after the requests in flight


def register(sub, common: argparse.ArgumentParser) -> None:
    """Adds this group's commands to the `mma` parser."""
    sv = sub.add_parser("serve", parents=[common], help="serve a chat model over an OpenAI-compatible HTTP API")
    sv.add_argument("--model", default="transformers:smollm2-135m")
    sv.add_argument("--host", default="127.0.0.1", help="loopback by default")
    sv.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    sv.add_argument("--max-body", type=int, default=1 << 20, help="request body limit in bytes (413 past it)")
    sv.add_argument("--concurrency", type=int, default=2, help="generations at a time (the rest wait)")
    sv.set_defaults(func=cmd_serve)
