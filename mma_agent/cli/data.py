"""`mma data`, `retrieve`, `pools`, `relevance`, `clip train` and `pipeline`: the data set and what the main job builds from it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mma_agent.cli.common import _pipeline
from mma_agent.util import format_table


def cmd_data_stats(args) -> None:
    p = _pipeline(args)
    stats = p.stats(check_images=args.check_images)
    print(
        format_table(
            [{"what": k, "count": v} for k, v in stats["counts"].items()], f"Data set {p.dataset.name} ({p.config.data.path})"
        )
    )
    print(format_table([{"modality field": k, **v} for k, v in stats["missingness"].items()], "Natural missingness"))


def cmd_data_convert(args) -> None:
    from mma_agent.data.dataset import save_dataset

    p = _pipeline(args)
    out = save_dataset(p.dataset, args.out)
    print(f"wrote {p.dataset.name} in the generic format to {out}")


def cmd_retrieve(args) -> None:
    p = _pipeline(args)
    rows = p.retrieve(args.only, retrain=args.retrain)
    print(format_table(rows, "First-stage retrievers: full-sort ranking, train items excluded"))
    print(f"training curves: {p.root / 'retrievers' / 'training-curves.png'}")


def cmd_pools(args) -> None:
    p = _pipeline(args)
    rows = p.build_all_pools(args.families, tuple(args.splits))
    sel = p.first_stage_selection()
    chosen = {c: [f for f, v in sel["families"].items() if v == c] for c in sel["recall"]}
    print(
        format_table(
            [
                {"first stage": c, "validation Recall@100": round(r, 4), "serves": ", ".join(chosen[c])}
                for c, r in sel["recall"].items()
            ],
            "First-stage candidates (each family takes the best its mask allows)",
        )
    )
    print(format_table(rows, f"Candidate pools (protocol v2) under {p.root / 'pools'}"))


def cmd_relevance(args) -> None:
    p = _pipeline(args)
    rows = p.train_relevance(args.modalities, retrain=args.retrain)
    print(
        format_table(
            rows,
            "Learned relevance channels (trained on train positives; chosen on each modality's own family, validation pools)",
        )
    )
    print(f"validation curves: {p.root / 'relevance' / 'validation-curves.png'}")


def cmd_clip_train(args) -> None:
    from mma_agent.training.clip import train_poster_clip

    p = _pipeline(args)
    folder = train_poster_clip(p, p.config.image.clip, retrain=args.retrain)
    report = json.loads((folder / "training.json").read_text())
    print(f"poster CLIP saved as an open_clip folder: load it with open_clip.create_model_and_transforms('local-dir:{folder}')")
    print(
        format_table(
            [
                {k: report[k] for k in ("n_train", "n_val", "best_val_recall@10")}
                | {"epochs run": len(report["curve"]), "head training s": f"{report['seconds']:.1f}"}
            ],
            "Head training",
        )
    )


def cmd_pipeline(args) -> None:
    start = time.perf_counter()
    for step in (cmd_data_stats, cmd_retrieve, cmd_pools, cmd_relevance):
        t = time.perf_counter()
        step(args)
        print(f"\n[{step.__name__.removeprefix('cmd_')}: {time.perf_counter() - t:.1f} s]")
    print(f"\npipeline finished in {time.perf_counter() - start:.1f} s")


def cmd_queries(args) -> None:
    from mma_agent.evals.query_eval import build_query_sets

    p = _pipeline(args)
    _, rows, skipped = build_query_sets(p, families=args.families, seed=args.seed, min_items=args.min_items)
    print(format_table(rows, f"Query episodes (facets fit at least {args.min_items} items; saved under {p.root / 'queries'})"))
    for what, why in skipped.items():
        print(f"skipped {what}: {why}")


def register(sub, common: argparse.ArgumentParser) -> None:
    """Adds this group's commands to the `mma` parser."""
    from mma_agent.modalities import TASK_FAMILIES
    from mma_agent.models.retrievers import RETRIEVERS

    data = sub.add_parser("data", help="data set commands").add_subparsers(dest="data_command", required=True)
    st = data.add_parser("stats", parents=[common], help="users, items, splits and natural missingness")
    st.add_argument("--check-images", action="store_true", help="decode every poster and count unreadable ones")
    st.set_defaults(func=cmd_data_stats)
    cv = data.add_parser("convert", parents=[common], help="write the data set in the generic format")
    cv.add_argument("--out", type=Path, required=True)
    cv.set_defaults(func=cmd_data_convert)

    qs = sub.add_parser(
        "queries", parents=[common], help="query episodes beside the pools: facet queries and the users' own tags"
    )
    qs.add_argument("--families", nargs="+", choices=list(TASK_FAMILIES), default=["full", "cold-user", "no-text", "no-image"])
    qs.add_argument("--seed", type=int, default=0)
    qs.add_argument("--min-items", type=int, default=30, help="a facet must fit at least this many catalogue items")
    qs.set_defaults(func=cmd_queries)

    rt = sub.add_parser("retrieve", parents=[common], help="train and evaluate the first-stage retrievers")
    rt.add_argument("--only", nargs="+", choices=sorted(RETRIEVERS), help="a subset of retrievers")
    rt.add_argument("--retrain", action="store_true", help="ignore saved retrievers")
    rt.set_defaults(func=cmd_retrieve)

    pl = sub.add_parser(
        "pools",
        parents=[common],
        help="build the candidate pools (protocol v2: each family's first stage, queried with the user's history)",
    )
    pl.add_argument("--families", nargs="+", choices=list(TASK_FAMILIES), help="default: all seven")
    pl.add_argument("--splits", nargs="+", choices=["valid", "test"], default=["valid", "test"])
    pl.set_defaults(func=cmd_pools)

    rl = sub.add_parser(
        "relevance", parents=[common], help="train each evidence toolkit's learned relevance channel (needs the pools)"
    )
    rl.add_argument("--modalities", nargs="+", choices=["text", "image", "behaviour"], help="default: all three")
    rl.add_argument("--retrain", action="store_true", help="ignore saved models")
    rl.set_defaults(func=cmd_relevance)

    clip = sub.add_parser("clip", help="the poster CLIP image encoder").add_subparsers(dest="clip_command", required=True)
    ct = clip.add_parser("train", parents=[common], help="train the projection heads (frozen EfficientNet-Lite2 + MiniLM)")
    ct.add_argument("--retrain", action="store_true")
    ct.set_defaults(func=cmd_clip_train)
    pp = sub.add_parser(
        "pipeline", parents=[common], help="data stats, retrievers, pools and the learned relevance channels, end to end"
    )
    pp.set_defaults(
        func=cmd_pipeline, check_images=False, only=None, retrain=False, families=None, splits=["valid", "test"], modalities=None
    )
