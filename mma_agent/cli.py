"""The `mma` command line. The only place that parses arguments or reads the environment."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from mma_agent.config import PipelineConfig, load_config
from mma_agent.util import format_table


def _config(args: argparse.Namespace) -> PipelineConfig:
    cfg = load_config(args.config)
    updates = {}
    if args.data is not None:
        updates["data"] = cfg.data.model_copy(update={"path": Path(args.data)})
    if args.workdir is not None:
        updates["workdir"] = Path(args.workdir)
    return PipelineConfig.model_validate({**cfg.model_dump(), **{k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in updates.items()}})


def _pipeline(args):
    from mma_agent.pipeline import Pipeline

    return Pipeline(_config(args))


def _print_tables(tables: dict[str, list[dict]]) -> None:
    """A benchmark's tables, each under its title."""
    for title, rows in tables.items():
        print(format_table(rows, title))


def cmd_data_stats(args) -> None:
    p = _pipeline(args)
    stats = p.stats(check_images=args.check_images)
    print(format_table([{"what": k, "count": v} for k, v in stats["counts"].items()], f"Data set {p.dataset.name} ({p.config.data.path})"))
    print(format_table([{"modality field": k, **v} for k, v in stats["missingness"].items()], "Natural missingness"))


def cmd_data_convert(args) -> None:
    from mma_agent.dataset import save_dataset

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
    print(format_table([{"first stage": c, "validation Recall@100": round(r, 4), "serves": ", ".join(chosen[c])} for c, r in sel["recall"].items()],
                       "First-stage candidates (each family takes the best its mask allows)"))  # fmt: skip
    print(format_table(rows, f"Candidate pools (protocol v2) under {p.root / 'pools'}"))


def cmd_relevance(args) -> None:
    p = _pipeline(args)
    rows = p.train_relevance(args.modalities, retrain=args.retrain)
    print(format_table(rows, "Learned relevance channels (trained on train positives; chosen on each modality's own family, validation pools)"))
    print(f"validation curves: {p.root / 'relevance' / 'validation-curves.png'}")


def cmd_clip_train(args) -> None:
    from mma_agent.training.clip import train_poster_clip

    p = _pipeline(args)
    folder = train_poster_clip(p, p.config.image.clip, retrain=args.retrain)
    report = json.loads((folder / "training.json").read_text())
    print(f"poster CLIP saved as an open_clip folder: load it with open_clip.create_model_and_transforms('local-dir:{folder}')")
    print(format_table([{k: report[k] for k in ("n_train", "n_val", "best_val_recall@10")} | {"epochs run": len(report["curve"]), "head training s": f"{report['seconds']:.1f}"}], "Head training"))


def cmd_bench_image(args) -> None:
    from mma_agent.evals.image_bench import bench_image

    p = _pipeline(args)
    start = time.perf_counter()
    folder = p.clip_folder
    _print_tables(bench_image(p, folder))
    print(f"\n[bench image: {time.perf_counter() - start:.1f} s, model {folder}]")


def cmd_bench_tools(args) -> None:
    from mma_agent.evals.tools_bench import bench_tools

    p = _pipeline(args)
    folder = None if args.no_image else p.clip_folder
    _print_tables(bench_tools(p, folder, episodes=args.episodes))


def cmd_bench_ask(args) -> None:
    from mma_agent.evals.ask_bench import bench_ask

    p = _pipeline(args)
    _print_tables(bench_ask(p, families=args.families, pools=args.pools, alpha=args.alpha))


def cmd_bench_injection(args) -> None:
    from mma_agent.evals.injection_bench import bench_injection

    p = _pipeline(args)
    _print_tables(bench_injection(p, args.model, requests=args.requests, seed=args.seed))


def cmd_bench_fuzz(args) -> None:
    from mma_agent.evals.fuzz_bench import bench_fuzz

    p = _pipeline(args)
    _print_tables(bench_fuzz(p, requests=args.requests, seed=args.seed))


def cmd_bench_serve(args) -> None:
    from mma_agent.evals.serve_bench import bench_serve
    from mma_agent.serve import serve

    _print_tables(bench_serve(serve, args.model, Path(args.workdir or ".mma") / "models", clients=args.clients, requests=args.requests))


def cmd_bench_rerank(args) -> None:
    from mma_agent.evals.rerank_bench import bench_rerank

    p = _pipeline(args)
    _print_tables(bench_rerank(p, args.model, episodes=args.episodes, concurrency=args.concurrency, prompts=tuple(args.prompts),
                               interactive=args.interactive_model, base_url=args.base_url))  # fmt: skip


def cmd_bench_llm_record(args) -> None:
    from mma_agent.evals.llm_bench import record_policy_calls

    data = record_policy_calls(_pipeline(args), args.model, args.out, episodes=args.episodes)
    print(f"wrote {sum(len(e) for e in data['episodes'])} policy calls of {len(data['episodes'])} episodes to {args.out}")


def cmd_bench_llm(args) -> None:
    from mma_agent.evals.llm_bench import bench_llm

    settings = []
    for device in args.devices:
        settings.append({"device": device, "batching": False, "concurrency": 1, "label": f"{device}: sequential, prefix KV cache"})
        if not args.skip_unbatched_concurrency:
            settings.append({"device": device, "batching": False, "concurrency": args.concurrency,
                             "label": f"{device}: {args.concurrency} episodes at a time, prefix KV cache, no batching"})  # fmt: skip
        if device.startswith("cuda") or args.batch_on_cpu:
            graphs = " + CUDA graphs" if device.startswith("cuda") else ""
            settings += [{"device": device, "batching": True, "concurrency": 1, "label": f"{device}: sequential, one batched pass per call{graphs}"},
                         {"device": device, "batching": True, "concurrency": args.concurrency, "label": f"{device}: {args.concurrency} episodes at a time, batched passes{graphs}"}]  # fmt: skip
            if graphs:
                settings.append({"device": device, "batching": True, "cuda_graphs": False, "concurrency": 1,
                                 "label": f"{device}: sequential, one batched pass per call, eager (no CUDA graphs)"})  # fmt: skip
                settings.append({"device": device, "batching": True, "cuda_graphs": False, "concurrency": args.concurrency,
                                 "label": f"{device}: {args.concurrency} episodes at a time, batched passes, eager (no CUDA graphs)"})  # fmt: skip
    _print_tables(bench_llm(args.calls, args.model_path, settings, repeats=args.repeats))


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
    header = {"config": json_digest([p.config.model_dump(mode="json"), args.model, args.variant, args.per_family, args.seed]), "data": p.split.fingerprint()}
    out = args.out or p.root / "episodes" / f"{args.variant}-{header['config']}.jsonl"
    stats = record_episodes(episodes, reranker, out, header)
    _, records = read_episodes(out)
    by = defaultdict(list)
    for r in records:
        by[r["family"]].append(r)
    rows = [{"family": f, "episodes": len(rs), "mean reward": float(sum(r["reward"] for r in rs) / len(rs)),
             "NDCG@10": float(sum(r["ndcg@10"] for r in rs) / len(rs)),
             "tool+invalid calls/ep": f"{sum(sum(r['costs'].values()) for r in rs) / len(rs):.1f}",
             "fallback": f"{sum(r['fallback'] for r in rs) / len(rs):.0%}"} for f, rs in sorted(by.items())]  # fmt: skip
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
    from mma_agent.training.sft import decision_points, explore_support

    p, catalogue, kits, episodes = _episodes_and_kits(args)
    support = [e for e in episodes if e["part"] == "support"]
    explored, took = explore_support(p, support, catalogue, kits, interactive=args.interactive)
    return p, catalogue, kits, support, explored, decision_points(explored), took


def _labelled(args, points: list[dict], kits) -> list[dict]:
    """The explored states with the labels --labels asks for (pooled: `sft.pooled_values`)."""
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.training.sft import pooled_values

    return pooled_values(points, tool_vocabulary(kits), interactive=args.interactive) if args.labels == "pooled" else points


def _stage(args, p, stage: str) -> Path:
    """The run folder of a training stage (its interactive policy's beside it): --out, else under the workdir."""
    return args.out or _train_dir(args, p, stage)


def _train_dir(args, p, stage: str) -> Path:
    return p.root / "train" / (f"{stage}-interactive" if args.interactive else stage)


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
    from mma_agent.training.sft import best_of, decision_sft_rows, sft_examples, summarize, train_sft

    p, _, kits, support, explored, points, took = _support_points(args)
    best = best_of(explored)
    print(format_table([{**summarize(best), "states": len(points), "explore s": f"{took:.1f}"}], "Best action plans on support episodes"))
    rows = sft_examples(best) if args.rows == "best" else decision_sft_rows(_labelled(args, points, kits), states=args.rows, seed=args.seed)
    base = _base(args, p)
    out = _stage(args, p, "sft")
    start = time.perf_counter()
    final = train_sft(rows, base, out, max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed, lora_layers=args.lora_layers,
                      **_trl_overrides(args.trl))  # fmt: skip
    print(f"SFT policy ({len(rows)} rows, from {base}): {final} ({time.perf_counter() - start:.0f} s); "
          f"load it as transformers:{final}; curve: {out / 'training-curve.png'}")  # fmt: skip


def cmd_train_dpo(args) -> None:
    from mma_agent.training.preference import preference_pairs, train_dpo

    p, _, kits, _, _, points, _ = _support_points(args)
    pairs = preference_pairs(_labelled(args, points, kits), margin=args.margin)
    base = _base(args, p, "sft")
    out = _stage(args, p, "dpo")
    start = time.perf_counter()
    final = train_dpo(pairs, base, out, max_steps=args.max_steps, lr=args.lr, beta=args.beta, batch_size=args.batch_size, seed=args.seed,
                      lora_layers=args.lora_layers, **_trl_overrides(args.trl))  # fmt: skip
    print(f"DPO policy ({len(pairs)} pairs, from {base}): {final} ({time.perf_counter() - start:.0f} s); curve: {out / 'training-curve.png'}")


def cmd_train_grpo(args) -> None:
    from mma_agent.training.grpo import EnvironmentReward, grpo_rows, informative_states, train_grpo

    p, catalogue, kits, support, _, points, _ = _support_points(args)
    informative = informative_states(points, margin=args.margin, seed=args.seed)
    reward = EnvironmentReward(support, catalogue, kits)
    base = _base(args, p, "dpo", "sft")
    out = _stage(args, p, "grpo")
    start = time.perf_counter()
    final = train_grpo(grpo_rows(informative), reward, base, out, max_steps=args.max_steps, lr=args.lr, num_generations=args.num_generations,
                       prompts_per_step=args.prompts_per_step, seed=args.seed, **_trl_overrides(args.trl))  # fmt: skip
    print(f"GRPO policy ({len(informative)} states, {reward.calls} environment episodes, from {base}): {final} "
          f"({time.perf_counter() - start:.0f} s); curve: {out / 'training-curve.png'}")  # fmt: skip


def cmd_train_eval(args) -> None:
    from mma_agent.graphs.policy import rule_action
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.llm import named_backend, resolve_chat_model
    from mma_agent.training.evaluate import evaluate_policies

    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.training.routing import LookupRouter, llm_policy, router_policy, routing_diagnostic, sample_states
    from mma_agent.training.sft import decision_points, explore_support, pooled_values

    p, catalogue, kits, episodes = _episodes_and_kits(args)
    parts = {part: [e for e in episodes if e["part"] == part] for part in ("support", "query")}
    points = decision_points(explore_support(p, parts["support"], catalogue, kits, interactive=args.interactive)[0])
    query = parts["query"]
    tools = tool_vocabulary(kits)
    lookup = LookupRouter.fit(pooled_values(points, tools, interactive=args.interactive), tools, interactive=args.interactive)  # the SFT labels' values
    lookup.save(_train_dir(args, p, "lookup") / "table.json")
    routers = {"RuleRouter-Fuse": rule_action, "Lookup control (no LLM)": lookup}
    policies = {name: create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule", router=r).compile() for name, r in routers.items()}
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
    print(format_table(routing, f"Routing on held-out explored states ({len(held_out)} states of {len(query)} query episodes; explored in {took:.0f} s): "
                                "the greedy action against the best-valued one"))  # fmt: skip
    print(f"lookup control: {len(lookup.table)} availability patterns from {len(points)} support states ({_train_dir(args, p, 'lookup') / 'table.json'})")
    rows = evaluate_policies(policies, query)
    print(format_table(rows, f"Query episodes ({len(query)}): reward, NDCG@10, routing diagnostics"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"routing": routing, "episodes": rows}, indent=1))


def _store_path(args, p) -> Path:
    run = Path(args.run)
    return run if run.suffix == ".sqlite" else p.root / "evals" / f"{args.run}.sqlite"


def _llm_limit(values: list[str]) -> dict[str, int | None]:
    """`--llm-limit 100 full=300`: pools per family and split for LLM methods ('*' the default; 0 every pool)."""
    from mma_agent.masks import family_mask

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
    named = methods[len(methods) - len(args.methods) - len(args.method or []) :] if args.methods else methods  # the ones asked for come last
    fresh = {m.name for m in named} if args.fresh else False  # --fresh redoes the methods asked for, not the rows every table carries
    path = _store_path(args, p)
    start = time.perf_counter()
    summary = run_eval(p, path, methods, splits=args.splits, families=args.families, limit=args.limit,
                       llm_limit=_llm_limit(args.llm_limit), seeds=args.seeds, concurrency=args.concurrency, fresh=fresh)  # fmt: skip
    rows = [{"method": m, "new episodes": s["new"], "resumed": s["resumed"], "s": f"{s['seconds']:.1f}"} for m, s in summary.items()]
    print(format_table(rows, f"Evaluation run {path} ({time.perf_counter() - start:.0f} s)"))
    print(f"report: mma eval report {args.run}")


def cmd_eval_report(args) -> None:
    from mma_agent.evals.report import build_report

    p = _pipeline(args)
    path = _store_path(args, p)
    if not path.is_file():
        msg = f"no results store at {path}; run `mma eval run --run {args.run}` first"
        raise FileNotFoundError(msg)
    _, main = build_report(path, args.out, title=args.title, alpha_on=args.alpha_on)
    print(format_table(main, "Main table (test NDCG@10 per family; first row: the Recall@100 ceiling)"))
    print(f"\nreport: {args.out / 'report.md'}")


def cmd_serve(args) -> None:
    from mma_agent.llm import resolve_chat_model
    from mma_agent.serve import serve

    model = resolve_chat_model(args.model, cache_dir=Path(args.workdir or ".mma") / "models")
    server, sock = serve(model, args.model, args.host, args.port, max_body=args.max_body, concurrency=args.concurrency)
    print(f"serving {args.model} at http://{args.host}:{sock.getsockname()[1]}/v1 (OpenAI-compatible)", flush=True)
    server.run(sockets=[sock])  # returns on SIGINT / SIGTERM after the requests in flight


def cmd_pipeline(args) -> None:
    start = time.perf_counter()
    for step in (cmd_data_stats, cmd_retrieve, cmd_pools, cmd_relevance):
        t = time.perf_counter()
        step(args)
        print(f"\n[{step.__name__.removeprefix('cmd_')}: {time.perf_counter() - t:.1f} s]")
    print(f"\npipeline finished in {time.perf_counter() - start:.1f} s")


def build_parser() -> argparse.ArgumentParser:
    from mma_agent.evals.report import ALPHA_POOLS
    from mma_agent.graphs.prompts import PROMPT_STYLES
    from mma_agent.masks import TASK_FAMILIES
    from mma_agent.retrievers import RETRIEVERS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML pipeline config (see configs/default.yaml)")
    common.add_argument("--data", type=Path, help="data set folder (default ../shared/datasets/movielens-posters)")
    common.add_argument("--workdir", type=Path, help="where caches, retrievers and pools go (default .mma)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(prog="mma", description="Meta-Modal Agent: multimodal reranking under missing modalities")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="data set commands").add_subparsers(dest="data_command", required=True)
    st = data.add_parser("stats", parents=[common], help="users, items, splits and natural missingness")
    st.add_argument("--check-images", action="store_true", help="decode every poster and count unreadable ones")
    st.set_defaults(func=cmd_data_stats)
    cv = data.add_parser("convert", parents=[common], help="write the data set in the generic format")
    cv.add_argument("--out", type=Path, required=True)
    cv.set_defaults(func=cmd_data_convert)

    rt = sub.add_parser("retrieve", parents=[common], help="train and evaluate the first-stage retrievers")
    rt.add_argument("--only", nargs="+", choices=sorted(RETRIEVERS), help="a subset of retrievers")
    rt.add_argument("--retrain", action="store_true", help="ignore saved retrievers")
    rt.set_defaults(func=cmd_retrieve)

    pl = sub.add_parser("pools", parents=[common], help="build the candidate pools (protocol v2: each family's first stage, queried with the user's history)")
    pl.add_argument("--families", nargs="+", choices=list(TASK_FAMILIES), help="default: all seven")
    pl.add_argument("--splits", nargs="+", choices=["valid", "test"], default=["valid", "test"])
    pl.set_defaults(func=cmd_pools)

    rl = sub.add_parser("relevance", parents=[common], help="train each evidence toolkit's learned relevance channel (needs the pools)")
    rl.add_argument("--modalities", nargs="+", choices=["text", "image", "behaviour"], help="default: all three")
    rl.add_argument("--retrain", action="store_true", help="ignore saved models")
    rl.set_defaults(func=cmd_relevance)

    clip = sub.add_parser("clip", help="the poster CLIP image encoder").add_subparsers(dest="clip_command", required=True)
    ct = clip.add_parser("train", parents=[common], help="train the projection heads (frozen EfficientNet-Lite2 + MiniLM)")
    ct.add_argument("--retrain", action="store_true")
    ct.set_defaults(func=cmd_clip_train)
    bench = sub.add_parser("bench", help="benchmarks that print tables").add_subparsers(dest="bench_command", required=True)
    bi = bench.add_parser("image", parents=[common], help="what the poster modality carries (trains the CLIP heads if needed)")
    bi.set_defaults(func=cmd_bench_image)

    bt = bench.add_parser("tools", parents=[common], help="tool latency, cache build time, memory")
    bt.add_argument("--episodes", type=int, default=100, help="pools to time the tools on")
    bt.add_argument("--no-image", action="store_true", help="leave the image toolkit out (no CLIP training)")
    bt.set_defaults(func=cmd_bench_tools)
    ba = bench.add_parser("ask", parents=[common], help="is a clarification question worth its cost? (validation, simulated user)")
    ba.add_argument("--families", nargs="+", choices=list(TASK_FAMILIES), default=["text-only", "image-only", "behaviour-only", "full"])
    ba.add_argument("--pools", type=int, default=100, help="validation pools per family")
    ba.add_argument("--alpha", type=float, default=0.5, help="Eq. 2 weight of the first stage (as in training's exploration)")
    ba.set_defaults(func=cmd_bench_ask)
    bj = bench.add_parser("injection", parents=[common], help="can text from items or users steer the agent? (test pools, the embedded model)")
    bj.add_argument("--model", default="transformers:smollm2-135m")
    bj.add_argument("--requests", type=int, default=30, help="full-family test pools")
    bj.add_argument("--seed", type=int, default=0)
    bj.set_defaults(func=cmd_bench_injection)
    bf = bench.add_parser("fuzz", parents=[common], help="malformed and valid requests against the compiled reranker: what reaches the caller")
    bf.add_argument("--requests", type=int, default=10_000)
    bf.add_argument("--seed", type=int, default=0)
    bf.set_defaults(func=cmd_bench_fuzz)
    bs = bench.add_parser("serve", parents=[common], help="mma serve under concurrent clients, and each malformed request's status code")
    bs.add_argument("--model", default="transformers:smollm2-135m")
    bs.add_argument("--clients", type=int, default=50)
    bs.add_argument("--requests", type=int, default=200)
    bs.set_defaults(func=cmd_bench_serve)
    blr = bench.add_parser("llm-record", parents=[common], help="record MMA-Auto's policy calls on full-family test pools, for `bench llm`")
    blr.add_argument("--model", default="transformers:smollm2-135m", help="a transformers: backend (e.g. the SFT policy's folder)")
    blr.add_argument("--episodes", type=int, default=32)
    blr.add_argument("--out", type=Path, required=True)
    blr.set_defaults(func=cmd_bench_llm_record)
    bl = bench.add_parser("llm", parents=[common], help="a local model's throughput on recorded policy calls: devices, batching, CUDA graphs (no data set needed)")
    bl.add_argument("calls", type=Path, help="a recording from `mma bench llm-record`")
    bl.add_argument("--model-path", required=True, help="a transformers model folder (the recorded policy, or any model with its tokenizer)")
    bl.add_argument("--devices", nargs="+", default=["cpu"], help="torch devices, e.g. cpu cuda")
    bl.add_argument("--concurrency", type=int, default=32, help="episodes in flight in the concurrent settings")
    bl.add_argument("--batch-on-cpu", action="store_true", help="also run the batched forward on the CPU (slow with many episodes in flight)")
    bl.add_argument("--skip-unbatched-concurrency", action="store_true", help="leave out the concurrent rows without batching (calls in lock-step)")
    bl.add_argument("--repeats", type=int, default=1, help="timed passes per setting (the best is reported)")
    bl.set_defaults(func=cmd_bench_llm)

    br = bench.add_parser("rerank", parents=[common], help="episode latency, LLM calls and tokens with the embedded model")
    br.add_argument("--model", nargs="+", default=["transformers:smollm2-135m"], help="backend strings, optionally NAME=BACKEND (each a row per prompt style)")
    br.add_argument("--prompts", nargs="+", choices=list(PROMPT_STYLES), default=list(PROMPT_STYLES)[::-1], help="prompt styles to compare (default: full, then compact)")
    br.add_argument("--interactive-model", metavar="[NAME=]BACKEND", help="MMA-Interactive's policy (default: the first --model)")
    br.add_argument("--base-url", help="the OpenAI-compatible server of openai: models, e.g. http://127.0.0.1:8000/v1 (vLLM, mma serve)")
    br.add_argument("--episodes", type=int, default=20)
    br.add_argument("--concurrency", type=int, default=2)
    br.set_defaults(func=cmd_bench_rerank)

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
        parser.add_argument("--base", type=Path, help="starting policy folder (default: the previous stage's, else the embedded SmolLM2)")
        parser.add_argument("--out", type=Path, help="run folder (default: <workdir>/<data>/train/<stage>)")
        parser.add_argument("--trl", action="append", metavar="KEY=VALUE", help="any field of TRL's config dataclass, passed through (repeatable)")
        interactive_arg(parser)

    def interactive_arg(parser) -> None:
        parser.add_argument("--interactive", action="store_true",
                            help="MMA-Interactive: ask_user in the plan space (its policies under train/<stage>-interactive)")  # fmt: skip

    def lora_arg(parser) -> None:
        parser.add_argument("--lora-layers", type=int, default=6, help="LoRA on the top N decoder layers, merged into the saved policy (0: full fine-tune)")

    def labels_arg(parser) -> None:
        parser.add_argument("--labels", choices=["pooled", "state"], default="pooled",
                            help="action values pooled over the states that observed the same (default), or each state's own")  # fmt: skip

    ts = train.add_parser("sft", parents=[common], help="SFT on the best action at every explored state of the support episodes (TRL)")
    trainer_args(ts, 60, 5e-4, 8)
    ts.add_argument("--rows", choices=["balanced", "path", "all", "best"], default="balanced",
                    help="start, after-Null and after-evidence states in balance (default), best-action path plus Null recovery, "
                    "every explored state, or the hindsight-best plans")  # fmt: skip
    labels_arg(ts)
    lora_arg(ts)
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
    te.add_argument("--policy", nargs="+", default=["transformers:smollm2-135m"], help="backend strings, optionally NAME=BACKEND, e.g. SFT=transformers:<folder>")
    te.add_argument("--per-family", type=int, default=20)
    te.add_argument("--states", type=int, default=150, help="held-out explored states for the routing diagnostic (seeded, every state kind kept; 0: all)")
    te.add_argument("--seed", type=int, default=0)
    te.add_argument("--out", type=Path, help="also write the rows as JSON")
    interactive_arg(te)
    te.set_defaults(func=cmd_train_eval)

    ev = sub.add_parser("eval", help="evaluation graphs: methods x task families, resumable, with a report").add_subparsers(dest="eval_command", required=True)
    er = ev.add_parser("run", parents=[common], help="run methods over the test (and validation) pools into a SQLite store")
    er.add_argument("--run", default="main", help="run name (store <workdir>/<data>/evals/RUN.sqlite) or a .sqlite path")
    er.add_argument("--methods", nargs="+", help="short names (default: all); see mma_agent.evals.methods.build_methods")
    er.add_argument("--families", nargs="+", choices=list(TASK_FAMILIES), help="default: all seven")
    er.add_argument("--splits", nargs="+", choices=["valid", "test"], default=["valid", "test"], help="valid picks alpha")
    er.add_argument("--limit", type=int, help="pools per family and split for every method (default: all)")
    er.add_argument("--llm-limit", nargs="+", default=["20"], metavar="N|FAMILY=N",
                    help="pools per family and split for methods that call an LLM: N for every family, FAMILY=N for one (0: every pool), "
                    "e.g. 100 full=300")  # fmt: skip
    er.add_argument("--method", action="append", metavar="PACKAGE.MODULE:ATTR",
                    help="your own reranker (a callable or LangGraph graph taking the reranker request), evaluated like ours; repeatable")
    er.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds for stochastic methods")
    er.add_argument("--concurrency", type=int, default=2, help="episodes in flight for LLM methods (LangGraph batch)")
    er.add_argument("--model", default="transformers:smollm2-135m", help="zero-shot backend for ReAct, listwise and MMA-Auto (zero-shot)")
    er.add_argument("--trained", nargs="+", metavar="LABEL=BACKEND", help="trained policies, each a row 'MMA-Auto (LABEL)'")
    er.add_argument("--interactive-policy", metavar="BACKEND", help="MMA-Interactive's policy (default: the first --trained, else --model)")
    er.add_argument("--fresh", action="store_true", help="drop the selected methods' stored episodes first and run them again")
    er.set_defaults(func=cmd_eval_run)
    ep = ev.add_parser("report", parents=[common], help="Markdown report with tables, tests, diagnostics and plots")
    ep.add_argument("run", help="run name or .sqlite path")
    ep.add_argument("--out", type=Path, default=Path("evals/results"))
    ep.add_argument("--title", default="mma-agent evaluation on MovieLens-posters")
    ep.add_argument("--alpha-on", choices=ALPHA_POOLS, default="own",
                    help="choose each method's alpha on every validation pool it ran (own), or on those every fused method ran (paired)")  # fmt: skip
    ep.set_defaults(func=cmd_eval_report)

    sv = sub.add_parser("serve", parents=[common], help="serve a chat model over an OpenAI-compatible HTTP API")
    sv.add_argument("--model", default="transformers:smollm2-135m")
    sv.add_argument("--host", default="127.0.0.1", help="loopback by default")
    sv.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    sv.add_argument("--max-body", type=int, default=1 << 20, help="request body limit in bytes (413 past it)")
    sv.add_argument("--concurrency", type=int, default=2, help="generations at a time (the rest wait)")
    sv.set_defaults(func=cmd_serve)

    pp = sub.add_parser("pipeline", parents=[common], help="data stats, retrievers, pools and the learned relevance channels, end to end")
    pp.set_defaults(func=cmd_pipeline, check_images=False, only=None, retrain=False, families=None, splits=["valid", "test"], modalities=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    if not sys.stderr.isatty() and "tqdm" not in sys.modules:  # bars into a log file: an update every 10 s, not one per step
        os.environ.setdefault("TQDM_MININTERVAL", "10")  # tqdm reads it when first imported
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from pydantic import ValidationError

    from mma_agent.schema import DatasetError

    try:
        args.func(args)
    except (DatasetError, ValidationError, FileNotFoundError, ValueError) as err:
        print(f"mma: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

