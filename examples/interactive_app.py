"""MMA-Interactive in an app: the agent may pause to ask the user a question (LangGraph interrupt),
the process exits, and a later process resumes the same thread from a SQLite checkpoint.

    python examples/interactive_app.py start  --db mma.sqlite --thread t1 --user 1
    python examples/interactive_app.py resume --db mma.sqlite --thread t1 --answer "Dark sci-fi, please"

--model picks the backend (default transformers:smollm2-135m); --script takes a JSON list of
scripted replies instead (tests of the wiring only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build(args):
    from mma_agent import create_mma_reranker, load_dataset, prepare_toolkits, split_dataset

    split = split_dataset(load_dataset(args.data))
    catalogue, kits = prepare_toolkits(split, Path(args.cache), image_model=None)
    if args.script:
        from langchain_core.language_models.fake_chat_models import FakeListChatModel

        model = FakeListChatModel(responses=json.loads(args.script))
    else:
        model = args.model
    return split, create_mma_reranker(model, catalogue=catalogue, toolkits=kits, variant="interactive")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["start", "resume"])
    p.add_argument("--db", required=True)
    p.add_argument("--thread", required=True)
    p.add_argument("--data", default="../shared/datasets/movielens-posters")
    p.add_argument("--cache", default=".mma/app-cache")
    p.add_argument("--user", default="1")
    p.add_argument("--answer", default="")
    p.add_argument("--model", default="transformers:smollm2-135m")
    p.add_argument("--script", help="JSON list of scripted model replies (tests)")
    args = p.parse_args(argv)

    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.types import Command

    split, graph = build(args)
    config = {"configurable": {"thread_id": args.thread}}
    with SqliteSaver.from_conn_string(args.db) as checkpointer:
        app = graph.compile(checkpointer=checkpointer)
        if args.command == "start":
            pool = [str(i) for i in split.item_ids[:30]]
            request = {"user_id": args.user, "candidates": pool, "first_stage_scores": [float(-i) for i in range(len(pool))]}
            out = app.invoke(request, config)
        else:
            out = app.invoke(Command(resume=args.answer), config)
    if "__interrupt__" in out:
        print(json.dumps({"paused": True, "question": out["__interrupt__"][0].value}))
    else:
        print(
            json.dumps(
                {
                    "paused": False,
                    "ranking": out["ranking"][:10],
                    "fallback": out["fallback"],
                    "reason": out["reason"],
                    "tools": [t["action"]["tool"] for t in out["trace"] if t.get("action")],
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
