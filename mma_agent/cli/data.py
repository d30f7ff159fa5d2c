"""`mma data`, `retrieve`, `pools`, `relevance`, `clip train` and `pipeline`: the data set and what the main job builds from it."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mma_agent.cli.common import _pipeline
from mma_agent.util import format_table

if TYPE_CHECKING:
    from mma_agent.pipeline import Pipeline

log = logging.getLogger(__name__)


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
    rows = retriever_table(p, args.only, retrain=args.retrain)
    print(format_table(rows, "First-stage retrievers: full-sort ranking, train items excluded"))
    print(f"training curves: {p.root / 'retrievers' / 'training-curves.png'}")


def cmd_pools(args) -> None:
    p = _pipeline(args)
    rows = pool_table(p, args.families, tuple(args.splits))
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
    rows = relevance_table(p, args.modalities, retrain=args.retrain)
    print(
        format_table(
            rows,
            "Learned relevance channels (trained on train positives; chosen on each modality's own family, validation pools)",
        )
    )
    print(f"validation curves: {p.root / 'relevance' / 'validation-curves.png'}")


def retriever_table(p: Pipeline, names: list[str] | None = None, *, retrain: bool = False) -> list[dict]:
    """`mma retrieve`: each first-stage retriever (trained now or loaded), a row with its full-sort
    validation and test metrics and training time, and the training curves as a plot beside them."""
    from mma_agent.models.retrievers import RETRIEVERS, full_sort_metrics
    from mma_agent.plots import line_plot

    rows, curves = [], {}
    for name in names or list(RETRIEVERS):
        r, seconds = p.retriever(name, retrain=retrain)
        curve = getattr(r, "curve", None)
        if curve is not None and len(curve):
            curves[name] = (curve[:, 0].tolist(), curve[:, 2].tolist())
        valid = full_sort_metrics(r, p.split, "valid", ks=(20,))
        test = full_sort_metrics(r, p.split, "test", ks=(20,))
        rows.append(
            {
                "retriever": name,
                "valid Recall@20": valid["recall@20"],
                "valid NDCG@20": valid["ndcg@20"],
                "test Recall@20": test["recall@20"],
                "test NDCG@20": test["ndcg@20"],
                "train s": "cached" if seconds is None else f"{seconds:.1f}",
            }
        )
    if curves:
        line_plot(
            curves,
            p.root / "retrievers" / "training-curves.png",
            xlabel="epoch",
            ylabel="validation Recall@20",
            title="First-stage retrievers (best epoch kept)",
        )
    return rows


def relevance_table(p: Pipeline, modalities: list[str] | None = None, *, retrain: bool = False) -> list[dict]:
    """`mma relevance`: each toolkit's learned channel (trained now or loaded), a row per
    modality with the channel's validation NDCG@10 alone and its training time, and the
    validation curves as a plot beside the models. A modality whose family has no
    validation pools is skipped with a row saying why."""
    from mma_agent.data.pools import NoFirstStageError
    from mma_agent.modalities import Modality
    from mma_agent.pipeline import RELEVANCE_FAMILY
    from mma_agent.plots import line_plot

    rows, curves = [], {}
    for m in modalities or list(RELEVANCE_FAMILY):
        m = Modality(m)
        try:
            _, report = p.relevance(m, retrain=retrain)
        except NoFirstStageError as err:
            log.warning("%s", err)
            rows.append({"modality": str(m), "chosen on": RELEVANCE_FAMILY[m], "model": f"skipped: {err}"})
            continue
        if report is None:
            report = json.loads(p.relevance_path(m).with_suffix(".json").read_text())
            report["seconds"] = None
        for name, points in report["curve"].items():
            curves[f"{m}: {report['model']} ({name})"] = ([x for x, _ in points], [y for _, y in points])
        rows.append(
            {
                "modality": str(m),
                "chosen on": RELEVANCE_FAMILY[m],
                "model": report["model"],
                "valid NDCG@10 (channel alone)": round(report["valid"], 4),
                "train s": "cached" if report["seconds"] is None else f"{report['seconds']:.1f}",
            }
        )
    if curves:
        line_plot(
            curves,
            p.root / "relevance" / "validation-curves.png",
            xlabel="epoch (text, image) or EASE lambda (behaviour)",
            ylabel="validation NDCG@10, channel alone",
            title="Learned relevance channels (best kept)",
        )
    return rows


def pool_table(p: Pipeline, families: list[str] | None = None, splits: tuple[str, ...] = ("valid", "test")) -> list[dict]:
    """Every family's pools on each split; a family no retriever can serve is skipped with a
    warning and a row saying why."""
    from mma_agent.data.pools import NoFirstStageError, pool_metrics
    from mma_agent.modalities import TASK_FAMILIES

    rows = []
    for target_split in splits:
        for family in families or list(TASK_FAMILIES):
            start = time.perf_counter()
            try:
                pools = p.pools(family, target_split)
            except NoFirstStageError as err:
                log.warning("%s", err)
                rows.append({"split": target_split, "family": family, "pools": 0, "first stage": "skipped: " + str(err)})
                continue
            rows.append(
                {
                    "split": target_split,
                    "family": family,
                    "pools": len(pools),
                    "first stage": pools.meta["first_stage_name"],
                    "valid Recall@100 (choice)": round(pools.meta["valid_recall"], 4),
                    "Recall@size": round(pools.recall_ceiling(), 4),
                    "pools with a relevant item": f"{100 * (pools.recall() > 0).mean():.1f}%",
                    "first-stage NDCG@10": round(pool_metrics(pools)["ndcg@10"], 4),
                    "skipped": sum(pools.meta["skipped"].values()),
                    "hash": pools.content_hash(),
                    "s": f"{time.perf_counter() - start:.1f}",
                }
            )
    return rows


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
