"""`mma eval run` and `mma eval report`: the evaluation graphs into a resumable store, and the report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mma_agent.cli.common import _pipeline, _print_tables
from mma_agent.util import format_table


def _store_path(args, p) -> Path:
    run = Path(args.run)
    return run if run.suffix == ".sqlite" else p.root / "evals" / f"{args.run}.sqlite"


def _llm_limit(values: list[str]) -> dict[str, int | None]:
    """`--llm-limit 100 full=300`: pools per family and split for LLM methods ('*' the default; 0 every pool)."""
    from mma_agent.modalities import family_mask

    out: dict[str, int | None] = {}
    for v in values:
        family, sep, n = v.rpartition("=") if "=" in v else ("*", "", v)
        if family != "*":
            family_mask(family)
        try:
            k = int(n)
        except ValueError:
            msg = f"--llm-limit {v!r}: expected N or FAMILY=N with an integer N (0: every pool)"
            raise ValueError(msg) from None
        out[family] = None if k == 0 else k
    return out


def cmd_eval_run(args) -> None:
    from mma_agent.evals.methods import PROBES, build_methods
    from mma_agent.evals.runner import run_eval

    p = _pipeline(args)
    trained = {}
    for spec in args.trained or []:
        label, sep, backend = spec.partition("=")
        if not sep:
            msg = f"--trained {spec!r}: expected LABEL=BACKEND, e.g. GRPO=transformers:.mma/.../train/grpo/policy"
            raise ValueError(msg)
        trained[label] = backend
    names = args.methods
    if names is not None:  # the first stage, the probes and the oracle are rows of every table
        names = [n for n in ("first-stage", *PROBES) if n not in names] + names
    methods = build_methods(names, zero_shot=args.model, trained=trained, user=args.method, interactive=args.interactive_policy)
    named = (
        methods[len(methods) - len(args.methods) - len(args.method or []) :] if args.methods else methods
    )  # the ones asked for come last
    fresh = (
        {m.name for m in named} if args.fresh else False
    )  # --fresh redoes the methods asked for, not the rows every table carries
    path = _store_path(args, p)
    start = time.perf_counter()
    summary = run_eval(
        p,
        path,
        methods,
        splits=args.splits,
        families=args.families,
        limit=args.limit,
        llm_limit=_llm_limit(args.llm_limit),
        seeds=args.seeds,
        concurrency=args.concurrency,
        fresh=fresh,
    )
    rows = [
        {"method": m, "new episodes": s["new"], "resumed": s["resumed"], "s": f"{s['seconds']:.1f}"} for m, s in summary.items()
    ]
    print(format_table(rows, f"Evaluation run {path} ({time.perf_counter() - start:.0f} s)"))
    print(f"report: mma eval report {args.run}")


def cmd_eval_report(args) -> None:
    from mma_agent.evals.report import build_report

    p = _pipeline(args)
    path = _store_path(args, p)
    if not path.is_file():
        msg = f"no results store at {path}; run `mma eval run --run {args.run}` first"
        raise FileNotFoundError(msg)
    from mma_agent.evals.routing import episode_features

    _, main = build_report(path, args.out, title=args.title, alpha_on=args.alpha_on, features=episode_features(p))
    print(format_table(main, "Main table (test NDCG@10 per family; first row: the Recall@100 ceiling)"))
    print(f"\nreport: {args.out / 'report.md'}")


def _first_per_family(episodes: list[dict], limit: int) -> list[dict]:
    """The first `limit` episodes of each family, in their order."""
    seen: dict[str, int] = {}
    out = []
    for e in episodes:
        seen[e["family"]] = seen.get(e["family"], 0) + 1
        if seen[e["family"]] <= limit:
            out.append(e)
    return out


def cmd_eval_queries(args) -> None:
    from mma_agent.evals.query_eval import build_query_sets, query_report, query_set_name

    p = _pipeline(args)
    sets, _, _ = build_query_sets(p, families=args.families, seed=args.seed, min_items=args.min_items)
    if args.limit:  # the first `limit` episodes of each family, so a short run still covers every family
        sets = {k: _first_per_family(v, args.limit) for k, v in sets.items()}
    llm = {}
    if args.llm:
        from mma_agent.evals.query_llm import run_policy
        from mma_agent.llm import named_backend
        from mma_agent.training.queries import validation_draw

        def of(split: str, kind: str) -> list[dict]:
            return sets[query_set_name(split, kind, seed=args.seed, min_items=args.min_items)]

        # alpha is chosen on the "select" half of the validation users: a trained policy learnt from the "fit" half
        drawn = validation_draw(of("valid", "facet"), "select", args.llm_valid or None, seed=args.seed)
        valid = [e for of_family in drawn.values() for e in of_family]
        for spec in args.llm:
            name, backend = named_backend(spec)
            path = p.root / "queries" / "llm" / f"{name}-seed{args.seed}-n{args.min_items}.jsonl"
            # test episodes first, then the validation ones that choose the policy's alpha; one model load
            eps = [*of("test", "facet"), *of("test", "real-tags"), *valid, *of("valid", "real-tags")]
            llm[name] = run_policy(p, eps, backend, path, desc=f"MMA-Auto ({name}) on query episodes")
    labels = None
    if args.label_table:
        from mma_agent.cli.request import request_labels
        from mma_agent.training.request_policy import label_table

        labels = label_table(*request_labels(p, per_family=args.label_table, seed=args.seed))
    _print_tables(query_report(p, sets, args.out, seed=args.seed, min_items=args.min_items, llm=llm, labels=labels))
    print(f"\nreport: {args.out / 'report.md'}")


def register(sub, common: argparse.ArgumentParser) -> None:
    """Adds this group's commands to the `mma` parser."""
    from mma_agent.evals.results import ALPHA_POOLS
    from mma_agent.modalities import TASK_FAMILIES
    from mma_agent.training.queries import QUERY_FAMILIES

    ev = sub.add_parser("eval", help="evaluation graphs: methods x task families, resumable, with a report").add_subparsers(
        dest="eval_command", required=True
    )
    er = ev.add_parser("run", parents=[common], help="run methods over the test (and validation) pools into a SQLite store")
    er.add_argument("--run", default="main", help="run name (store <workdir>/<data>/evals/RUN.sqlite) or a .sqlite path")
    er.add_argument("--methods", nargs="+", help="short names (default: all); see mma_agent.evals.methods.build_methods")
    er.add_argument("--families", nargs="+", choices=list(TASK_FAMILIES), help="default: all seven")
    er.add_argument("--splits", nargs="+", choices=["valid", "test"], default=["valid", "test"], help="valid picks alpha")
    er.add_argument("--limit", type=int, help="pools per family and split for every method (default: all)")
    er.add_argument(
        "--llm-limit",
        nargs="+",
        default=["20"],
        metavar="N|FAMILY=N",
        help="pools per family and split for methods that call an LLM: N for every family, FAMILY=N for one (0: every pool), "
        "e.g. 100 full=300",
    )
    er.add_argument(
        "--method",
        action="append",
        metavar="PACKAGE.MODULE:ATTR",
        help="your own reranker (a callable or LangGraph graph taking the reranker request), evaluated like ours; repeatable",
    )
    er.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds for stochastic methods")
    er.add_argument("--concurrency", type=int, default=2, help="episodes in flight for LLM methods (LangGraph batch)")
    er.add_argument(
        "--model", default="transformers:smollm2-135m", help="zero-shot backend for ReAct, listwise and MMA-Auto (zero-shot)"
    )
    er.add_argument("--trained", nargs="+", metavar="LABEL=BACKEND", help="trained policies, each a row 'MMA-Auto (LABEL)'")
    er.add_argument(
        "--interactive-policy", metavar="BACKEND", help="MMA-Interactive's policy (default: the first --trained, else --model)"
    )
    er.add_argument("--fresh", action="store_true", help="drop the selected methods' stored episodes first and run them again")
    er.set_defaults(func=cmd_eval_run)
    eq = ev.add_parser(
        "queries", parents=[common], help="query episodes: what reading the request buys, with probes and ceilings"
    )
    eq.add_argument("--families", nargs="+", choices=list(TASK_FAMILIES), default=list(QUERY_FAMILIES))
    eq.add_argument("--seed", type=int, default=0)
    eq.add_argument("--min-items", type=int, default=30)
    eq.add_argument("--limit", type=int, help="episodes per family of each query set (default: all)")
    eq.add_argument(
        "--llm",
        nargs="+",
        metavar="NAME=BACKEND",
        help="MMA-Auto rows: each policy on every test episode, resumable (<workdir>/<data>/queries/llm/NAME-*.jsonl)",
    )
    eq.add_argument(
        "--llm-valid",
        type=int,
        default=50,
        help="validation facet episodes per family, of the users in the 'select' half, that --llm policies run to choose their alpha (0: every one)",
    )
    eq.add_argument(
        "--label-table",
        type=int,
        metavar="PER_FAMILY",
        help="a row for the request policy's labels run as a lookup table (what SFT imitates), from the exploration of "
        "`mma train sft --request --per-family PER_FAMILY` (cached; explored here if missing)",
    )
    eq.add_argument("--out", type=Path, default=Path("evals/results/query"))
    eq.set_defaults(func=cmd_eval_queries)

    ep = ev.add_parser("report", parents=[common], help="Markdown report with tables, tests, diagnostics and plots")
    ep.add_argument("run", help="run name or .sqlite path")
    ep.add_argument("--out", type=Path, default=Path("evals/results"))
    ep.add_argument("--title", default="mma-agent evaluation on MovieLens-posters")
    ep.add_argument(
        "--alpha-on",
        choices=ALPHA_POOLS,
        default="own",
        help="choose each method's alpha on every validation pool it ran (own), or on those every fused method ran (paired)",
    )
    ep.set_defaults(func=cmd_eval_report)
