"""`mma train ...`: recorded episodes, and the policy's SFT, DPO and GRPO stages with TRL."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mma_agent.cli.common import _pipeline
from mma_agent.cli.request import request_agreement, request_rows
from mma_agent.util import format_table

SFT_STEPS = 40  # `mma train sft`'s default optimiser steps, inside the main job's budget


def cmd_train_record(args) -> None:
    from collections import defaultdict

    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.training.episodes import read_episodes, record_episodes, sample_episodes
    from mma_agent.util import json_digest

    p = _pipeline(args)
    catalogue, kits = p.toolkits()
    model = None if args.variant == "rule" else args.model
    reranker = create_mma_reranker(model, catalogue=catalogue, toolkits=kits, variant=args.variant).compile()
    episodes = sample_episodes(p, per_family=args.per_family, seed=args.seed)
    header = {
        "config": json_digest([p.config.model_dump(mode="json"), args.model, args.variant, args.per_family, args.seed]),
        "data": p.split.fingerprint(),
    }
    out = args.out or p.root / "episodes" / f"{args.variant}-{header['config']}.jsonl"
    stats = record_episodes(episodes, reranker, out, header)
    _, records = read_episodes(out)
    by = defaultdict(list)
    for r in records:
        by[r["family"]].append(r)
    rows = [
        {
            "family": f,
            "episodes": len(rs),
            "mean reward": float(sum(r["reward"] for r in rs) / len(rs)),
            "NDCG@10": float(sum(r["ndcg@10"] for r in rs) / len(rs)),
            "tool+invalid calls/ep": f"{sum(sum(r['costs'].values()) for r in rs) / len(rs):.1f}",
            "fallback": f"{sum(r['fallback'] for r in rs) / len(rs):.0%}",
        }
        for f, rs in sorted(by.items())
    ]
    print(format_table(rows, f"Recorded episodes in {out} ({stats['recorded']} new, {stats['already']} resumed)"))


def _episodes_and_kits(args):
    from mma_agent.training.episodes import sample_episodes

    p = _pipeline(args)
    catalogue, kits = p.toolkits()
    return p, catalogue, kits, sample_episodes(p, per_family=args.per_family, seed=args.seed)


def _trl_overrides(pairs: list[str] | None) -> dict:
    """`--trl key=value` pairs (YAML values) passed through to TRL's config dataclass."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            msg = f"--trl {pair!r}: expected KEY=VALUE, e.g. --trl gradient_accumulation_steps=2"
            raise ValueError(msg)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _support_points(args):
    """Explored decision points of the support episodes (cached on disk by content)."""
    from mma_agent.training.decisions import decision_points
    from mma_agent.training.explore import explore_support

    p, catalogue, kits, episodes = _episodes_and_kits(args)
    support = [e for e in episodes if e["part"] == "support"]
    explored, took = explore_support(p, support, catalogue, kits, interactive=args.interactive)
    return p, catalogue, kits, support, explored, decision_points(explored), took


def _labelled(args, points: list[dict], kits) -> list[dict]:
    """The explored states with the labels --labels asks for (pooled: `decisions.pooled_values`)."""
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.training.decisions import pooled_values

    return pooled_values(points, tool_vocabulary(kits), interactive=args.interactive) if args.labels == "pooled" else points


def _stage(args, p, stage: str) -> Path:
    """The run folder of a training stage (its interactive policy's beside it): --out, else under the workdir."""
    return args.out or _train_dir(args, p, stage)


def _train_dir(args, p, stage: str) -> Path:
    return p.train_dir(stage, interactive=args.interactive)


def _base(args, p, *stages: str) -> str:
    """--base, else the newest earlier stage's policy under the workdir, else the embedded SmolLM2."""
    from mma_agent.llm import smollm2_folder

    if args.base:
        return str(args.base)
    for stage in stages:
        folder = _train_dir(args, p, stage) / "policy"
        if (folder / "config.json").is_file():
            return str(folder)
    return str(smollm2_folder(p.config.workdir / "models"))


def cmd_train_sft(args) -> None:
    from mma_agent.training.decisions import decision_sft_rows, sft_examples
    from mma_agent.training.explore import best_of, summarize
    from mma_agent.training.sft import train_sft

    if args.request:
        p, rows = request_rows(args)
    else:
        p, _, kits, support, explored, points, took = _support_points(args)
        best = best_of(explored)
        print(
            format_table(
                [{**summarize(best), "states": len(points), "explore s": f"{took:.1f}"}], "Best action plans on support episodes"
            )
        )
        rows = (
            sft_examples(best)
            if args.rows == "best"
            else decision_sft_rows(_labelled(args, points, kits), states=args.rows, seed=args.seed)
        )
    base = _base(args, p)
    out = (args.out or p.root / "train" / "sft-request") if args.request else _stage(args, p, "sft")
    start = time.perf_counter()
    final = train_sft(
        rows,
        base,
        out,
        max_steps=args.max_steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        lora_layers=args.lora_layers,
        **_trl_overrides(args.trl),
    )
    print(
        f"SFT policy ({len(rows)} rows, from {base}): {final} ({time.perf_counter() - start:.0f} s); "
        f"load it as transformers:{final}; curve: {out / 'training-curve.png'}"
    )


def cmd_train_dpo(args) -> None:
    from mma_agent.training.preference import preference_pairs, train_dpo

    p, _, kits, _, _, points, _ = _support_points(args)
    pairs = preference_pairs(_labelled(args, points, kits), margin=args.margin)
    base = _base(args, p, "sft")
    out = _stage(args, p, "dpo")
    start = time.perf_counter()
    final = train_dpo(
        pairs,
        base,
        out,
        max_steps=args.max_steps,
        lr=args.lr,
        beta=args.beta,
        batch_size=args.batch_size,
        seed=args.seed,
        lora_layers=args.lora_layers,
        **_trl_overrides(args.trl),
    )
    print(
        f"DPO policy ({len(pairs)} pairs, from {base}): {final} ({time.perf_counter() - start:.0f} s); curve: {out / 'training-curve.png'}"
    )


def cmd_train_grpo(args) -> None:
    from mma_agent.training.grpo import EnvironmentReward, grpo_rows, informative_states, train_grpo

    p, catalogue, kits, support, _, points, _ = _support_points(args)
    informative = informative_states(points, margin=args.margin, seed=args.seed)
    reward = EnvironmentReward(support, catalogue, kits)
    base = _base(args, p, "dpo", "sft")
    out = _stage(args, p, "grpo")
    start = time.perf_counter()
    final = train_grpo(
        grpo_rows(informative),
        reward,
        base,
        out,
        max_steps=args.max_steps,
        lr=args.lr,
        num_generations=args.num_generations,
        prompts_per_step=args.prompts_per_step,
        seed=args.seed,
        **_trl_overrides(args.trl),
    )
    print(
        f"GRPO policy ({len(informative)} states, {reward.calls} environment episodes, from {base}): {final} "
        f"({time.perf_counter() - start:.0f} s); curve: {out / 'training-curve.png'}"
    )


def cmd_train_eval(args) -> None:
    if args.request:
        return request_agreement(args)
    from mma_agent.graphs.policy import rule_action
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.llm import named_backend, resolve_chat_model
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.training.decisions import decision_points, pooled_values
    from mma_agent.training.evaluate import evaluate_policies
    from mma_agent.training.explore import explore_support
    from mma_agent.training.routing import LookupRouter, llm_policy, router_policy, routing_diagnostic, sample_states

    p, catalogue, kits, episodes = _episodes_and_kits(args)
    parts = {part: [e for e in episodes if e["part"] == part] for part in ("support", "query")}
    points = decision_points(explore_support(p, parts["support"], catalogue, kits, interactive=args.interactive)[0])
    query = parts["query"]
    tools = tool_vocabulary(kits)
    lookup = LookupRouter.fit(
        pooled_values(points, tools, interactive=args.interactive), tools, interactive=args.interactive
    )  # the SFT labels' values
    lookup.save(_train_dir(args, p, "lookup") / "table.json")
    routers = {"RuleRouter-Fuse": rule_action, "Lookup control (no LLM)": lookup}
    policies = {
        name: create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule", router=r).compile()
        for name, r in routers.items()
    }
    by_state = {name: router_policy(r, tools) for name, r in routers.items()}
    variant = "interactive" if args.interactive else "auto"
    for spec in args.policy:
        name, backend = named_backend(spec)
        model = resolve_chat_model(backend, cache_dir=p.config.workdir / "models")
        policies[name] = create_mma_reranker(model, catalogue=catalogue, toolkits=kits, variant=variant).compile()
        by_state[name] = llm_policy(model, tools, interactive=args.interactive)
    explored, took = explore_support(p, query, catalogue, kits, name="query", interactive=args.interactive)
    held_out = sample_states(decision_points(explored), args.states, seed=args.seed)
    routing = routing_diagnostic(held_out, by_state)
    print(
        format_table(
            routing,
            f"Routing on held-out explored states ({len(held_out)} states of {len(query)} query episodes; explored in {took:.0f} s): "
            "the greedy action against the best-valued one",
        )
    )
    print(
        f"lookup control: {len(lookup.table)} availability patterns from {len(points)} support states ({_train_dir(args, p, 'lookup') / 'table.json'})"
    )
    rows = evaluate_policies(policies, query)
    print(format_table(rows, f"Query episodes ({len(query)}): reward, NDCG@10, routing diagnostics"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"routing": routing, "episodes": rows}, indent=1))


def register(sub, common: argparse.ArgumentParser) -> None:
    """Adds this group's commands to the `mma` parser."""
    train = sub.add_parser("train", help="policy training").add_subparsers(dest="train_command", required=True)
    tr = train.add_parser("record", parents=[common], help="record balanced missingness-task episodes (resumable JSONL)")
    tr.add_argument("--model", default="transformers:smollm2-135m")
    tr.add_argument("--variant", choices=["auto", "interactive", "rule"], default="auto")
    tr.add_argument("--per-family", type=int, default=None, help="episodes per family (default: every train target)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", type=Path, help="JSONL file (default under the workdir, named by config)")
    tr.set_defaults(func=cmd_train_record)

    def trainer_args(parser, steps: int, lr: float, batch: int | None = None) -> None:
        parser.add_argument("--per-family", type=int, default=20, help="episodes per family (80%% support, used here)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--max-steps", type=int, default=steps)
        parser.add_argument("--lr", type=float, default=lr)
        if batch is not None:
            parser.add_argument("--batch-size", type=int, default=batch)
        parser.add_argument(
            "--base", type=Path, help="starting policy folder (default: the previous stage's, else the embedded SmolLM2)"
        )
        parser.add_argument("--out", type=Path, help="run folder (default: <workdir>/<data>/train/<stage>)")
        parser.add_argument(
            "--trl", action="append", metavar="KEY=VALUE", help="any field of TRL's config dataclass, passed through (repeatable)"
        )
        interactive_arg(parser)

    def interactive_arg(parser) -> None:
        parser.add_argument(
            "--interactive",
            action="store_true",
            help="MMA-Interactive: ask_user in the plan space (its policies under train/<stage>-interactive)",
        )

    def lora_arg(parser) -> None:
        parser.add_argument(
            "--lora-layers",
            type=int,
            default=6,
            help="LoRA on the top N decoder layers, merged into the saved policy (0: full fine-tune)",
        )

    def labels_arg(parser) -> None:
        parser.add_argument(
            "--labels",
            choices=["pooled", "state"],
            default="pooled",
            help="action values pooled over the states that observed the same (default), or each state's own",
        )

    ts = train.add_parser(
        "sft", parents=[common], help="SFT on the best action at every explored state of the support episodes (TRL)"
    )
    # 40 steps of 8 rows: the main job's budget (about 6 minutes on two cores with the compact
    # prompt's short observations). Measured: the policy it trains routes as the lookup control on
    # every query episode; at 24 steps it chose the other tool after a graph Null (its label is
    # analyze_text) on 42 of 140 pools (evals/results/training-budget.md)
    trainer_args(ts, SFT_STEPS, 5e-4, 8)
    ts.add_argument(
        "--rows",
        choices=["balanced", "path", "all", "best"],
        default="balanced",
        help="start, after-Null and after-evidence states in balance (default), best-action path plus Null recovery, "
        "every explored state, or the hindsight-best plans",
    )
    labels_arg(ts)
    lora_arg(ts)
    ts.add_argument(
        "--request",
        action="store_true",
        help="read the person's request: validation facet query episodes of the 'fit' half of the users, labels pooled "
        "by the kind of request "
        "(training.request_policy; its policy under train/sft-request; --per-family: episodes per family, default 20)",
    )
    ts.add_argument(
        "--history-share",
        type=float,
        default=1.0,
        help="with --request: the share of episodes whose history-tool rows train (a fixed prefix; the request "
        "and weight decisions of every episode always do)",
    )
    ts.add_argument(
        "--choice-loss",
        action="store_true",
        help="with --request: the loss only on the completion tokens where constrained decoding has a choice "
        "(training.sft.choice_token_rows), not on the tokens it forces",
    )
    td = train.add_parser("dpo", parents=[common], help="DPO on best vs worst action per explored state (TRL)")
    trainer_args(td, 20, 1e-4, 4)
    td.add_argument("--beta", type=float, default=0.1)
    td.add_argument("--margin", type=float, default=0.01, help="least value gap for a pair")
    labels_arg(td)
    lora_arg(td)
    tg = train.add_parser("grpo", parents=[common], help="GRPO with rewards from the real reranker graph (TRL)")
    trainer_args(tg, 12, 5e-6)
    tg.add_argument("--num-generations", type=int, default=4)
    tg.add_argument("--prompts-per-step", type=int, default=2)
    tg.add_argument("--margin", type=float, default=0.01, help="train on states whose actions differ in value by at least this")
    for stage, fn in ((ts, cmd_train_sft), (td, cmd_train_dpo), (tg, cmd_train_grpo)):
        stage.set_defaults(func=fn)

    te = train.add_parser("eval", parents=[common], help="compare policies on query episodes")
    te.add_argument(
        "--policy",
        nargs="+",
        default=["transformers:smollm2-135m"],
        help="backend strings, optionally NAME=BACKEND, e.g. SFT=transformers:<folder>",
    )
    te.add_argument("--per-family", type=int, default=20)
    te.add_argument(
        "--states",
        type=int,
        default=150,
        help="held-out explored states for the routing diagnostic (seeded, every state kind kept; 0: all)",
    )
    te.add_argument("--seed", type=int, default=0)
    te.add_argument("--out", type=Path, help="also write the rows as JSON")
    te.add_argument(
        "--request",
        action="store_true",
        help="the request policy: how often each policy follows its labels (request tools, then weights) on the held-out "
        "part of the fit half's episodes (--per-family as in `mma train sft --request`)",
    )
    interactive_arg(te)
    te.set_defaults(func=cmd_train_eval)
