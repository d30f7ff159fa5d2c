"""`mma bench ...`: benchmarks that print tables."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mma_agent.cli.common import _pipeline, _print_tables


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
    options = {"dtype": args.dtype} if args.dtype else None
    for defence in (False, True) if args.before else (True,):
        tables = bench_injection(
            p,
            args.model,
            requests=args.requests,
            seed=args.seed,
            styles=tuple(args.styles),
            defence=defence,
            backend_options=options,
            sites=tuple(args.sites),
            control_draws=args.control_draws,
        )
        _print_tables(tables)


def cmd_bench_fuzz(args) -> None:
    from mma_agent.evals.fuzz_bench import bench_fuzz

    p = _pipeline(args)
    _print_tables(bench_fuzz(p, requests=args.requests, seed=args.seed))


def cmd_bench_serve(args) -> None:
    from mma_agent.evals.serve_bench import bench_serve
    from mma_agent.llm.serve import serve

    _print_tables(
        bench_serve(serve, args.model, Path(args.workdir or ".mma") / "models", clients=args.clients, requests=args.requests)
    )


def cmd_bench_async(args) -> None:
    from mma_agent.evals.async_bench import bench_async

    _print_tables(bench_async(_pipeline(args), serve_model=args.model, requests=args.requests, rounds=args.rounds))


def cmd_bench_profile(args) -> None:
    from mma_agent.evals.profile_bench import bench_profile

    _print_tables(
        bench_profile(_pipeline(args), args.model, episodes=args.episodes, rounds=args.rounds, tree_pass=not args.token_by_token)
    )


def cmd_bench_rerank(args) -> None:
    from mma_agent.evals.rerank_bench import bench_rerank

    p = _pipeline(args)
    _print_tables(
        bench_rerank(
            p,
            args.model,
            episodes=args.episodes,
            concurrency=args.concurrency,
            prompts=tuple(args.prompts),
            interactive=args.interactive_model,
            base_url=args.base_url,
            dtypes=tuple(args.dtypes),
        )
    )


def cmd_bench_llm_record(args) -> None:
    from mma_agent.evals.llm_bench import record_policy_calls

    data = record_policy_calls(_pipeline(args), args.model, args.out, episodes=args.episodes)
    print(f"wrote {sum(len(e) for e in data['episodes'])} policy calls of {len(data['episodes'])} episodes to {args.out}")


def _sequential(device: str, passes: str, **extra) -> dict:
    """A `bench llm` setting: one episode at a time on the prefix KV cache, decoding as `passes` says."""
    return {
        "device": device,
        "batching": False,
        "concurrency": 1,
        "label": f"{device}: sequential, prefix KV cache, {passes}",
        **extra,
    }


def cmd_bench_llm(args) -> None:
    from mma_agent.evals.llm_bench import bench_llm

    settings = []
    for device in args.devices:
        if args.all_logits:  # the passes as they were before they computed the last position's logits only
            settings.append(
                _sequential(device, "a pass per branching point, logits at every position", all_logits=True, tree_pass=False)
            )
        if args.token_by_token:  # the passes as they were before one tree pass per call
            settings.append(_sequential(device, "a pass per branching point", tree_pass=False))
        settings.append(_sequential(device, "one tree pass per call"))
        if not args.skip_unbatched_concurrency:
            settings.append(
                {
                    "device": device,
                    "batching": False,
                    "concurrency": args.concurrency,
                    "label": f"{device}: {args.concurrency} episodes at a time, prefix KV cache, no batching",
                }
            )
        if device.startswith("cuda") or args.batch_on_cpu:
            graphs = " + CUDA graphs" if device.startswith("cuda") else ""
            settings += [
                {
                    "device": device,
                    "batching": True,
                    "concurrency": 1,
                    "label": f"{device}: sequential, one batched pass per call{graphs}",
                },
                {
                    "device": device,
                    "batching": True,
                    "concurrency": args.concurrency,
                    "label": f"{device}: {args.concurrency} episodes at a time, batched passes{graphs}",
                },
            ]
            if graphs:
                settings.append(
                    {
                        "device": device,
                        "batching": True,
                        "cuda_graphs": False,
                        "concurrency": 1,
                        "label": f"{device}: sequential, one batched pass per call, eager (no CUDA graphs)",
                    }
                )
                settings.append(
                    {
                        "device": device,
                        "batching": True,
                        "cuda_graphs": False,
                        "concurrency": args.concurrency,
                        "label": f"{device}: {args.concurrency} episodes at a time, batched passes, eager (no CUDA graphs)",
                    }
                )
    if args.dtypes:  # each setting in each dtype asked for (the actions of each against the recording)
        settings = [{**st, "dtype": d, "label": f"{st['label']}, {d}"} for st in settings for d in args.dtypes]
    _print_tables(bench_llm(args.calls, args.model_path, settings, repeats=args.repeats))


def register(sub, common: argparse.ArgumentParser) -> None:
    """Adds this group's commands to the `mma` parser."""
    from mma_agent.evals.attacks import SITES
    from mma_agent.graphs.prompts import PROMPT_STYLES
    from mma_agent.modalities import TASK_FAMILIES

    bench = sub.add_parser("bench", help="benchmarks that print tables").add_subparsers(dest="bench_command", required=True)
    bi = bench.add_parser("image", parents=[common], help="what the poster modality carries (trains the CLIP heads if needed)")
    bi.set_defaults(func=cmd_bench_image)

    bt = bench.add_parser("tools", parents=[common], help="tool latency, cache build time, memory")
    bt.add_argument("--episodes", type=int, default=100, help="pools to time the tools on")
    bt.add_argument("--no-image", action="store_true", help="leave the image toolkit out (no CLIP training)")
    bt.set_defaults(func=cmd_bench_tools)
    ba = bench.add_parser(
        "ask", parents=[common], help="is a clarification question worth its cost? (validation, simulated user)"
    )
    ba.add_argument(
        "--families", nargs="+", choices=list(TASK_FAMILIES), default=["text-only", "image-only", "behaviour-only", "full"]
    )
    ba.add_argument("--pools", type=int, default=100, help="validation pools per family")
    ba.add_argument("--alpha", type=float, default=0.5, help="Eq. 2 weight of the first stage (as in training's exploration)")
    ba.set_defaults(func=cmd_bench_ask)
    bj = bench.add_parser(
        "injection", parents=[common], help="can text from items or users steer the agent? (test pools, the embedded model)"
    )
    bj.add_argument("--model", default="transformers:smollm2-135m")
    bj.add_argument("--requests", type=int, default=4, help="full-family test pools (each runs every site x attack x style)")
    bj.add_argument("--seed", type=int, default=0)
    bj.add_argument("--styles", nargs="+", default=["compact", "full"], choices=PROMPT_STYLES, help="prompt styles to attack")
    bj.add_argument("--sites", nargs="+", default=list(SITES), choices=SITES, help="where the attacks go (default: every site)")
    bj.add_argument(
        "--control-draws",
        type=int,
        help="benign changes per pool and site, the control of 'action changes' (default: as many as there are attacks)",
    )
    bj.add_argument(
        "--before",
        action="store_true",
        help="also run with the structural defences off (the quoting's neutralisation, the words withheld when scoring): the 'before' table",
    )
    bj.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="the local model's dtype (default: what the hardware computes fastest, see choose_dtype)",
    )
    bj.set_defaults(func=cmd_bench_injection)
    bf = bench.add_parser(
        "fuzz", parents=[common], help="malformed and valid requests against the compiled reranker: what reaches the caller"
    )
    bf.add_argument("--requests", type=int, default=10_000)
    bf.add_argument("--seed", type=int, default=0)
    bf.set_defaults(func=cmd_bench_fuzz)
    bs = bench.add_parser(
        "serve", parents=[common], help="mma serve under concurrent clients, and each malformed request's status code"
    )
    bs.add_argument("--model", default="transformers:smollm2-135m")
    bs.add_argument("--clients", type=int, default=50)
    bs.add_argument("--requests", type=int, default=200)
    bs.set_defaults(func=cmd_bench_serve)
    bas = bench.add_parser(
        "async",
        parents=[common],
        help="the reranker over mma serve via openai:, sync .batch against abatch (requests/s, threads)",
    )
    bas.add_argument("--model", default="transformers:smollm2-135m", help="what `mma serve` serves (started here)")
    bas.add_argument("--requests", type=int, default=32, help="requests sent at once (full-family test pools)")
    bas.add_argument("--rounds", type=int, default=2, help="alternating rounds of each mode")
    bas.set_defaults(func=cmd_bench_async)
    bp = bench.add_parser("profile", parents=[common], help="where a policy call's time goes, in-process and over mma serve")
    bp.add_argument("--model", default="transformers:smollm2-135m", help="a transformers: backend (also what mma serve serves)")
    bp.add_argument("--episodes", type=int, default=20, help="full-family test pools")
    bp.add_argument("--rounds", type=int, default=2, help="alternating rounds of each mode")
    bp.add_argument(
        "--token-by-token", action="store_true", help="decode with a pass per branching point (as before one tree pass per call)"
    )
    bp.set_defaults(func=cmd_bench_profile)
    blr = bench.add_parser(
        "llm-record", parents=[common], help="record MMA-Auto's policy calls on full-family test pools, for `bench llm`"
    )
    blr.add_argument(
        "--model", default="transformers:smollm2-135m", help="a transformers: backend (e.g. the SFT policy's folder)"
    )
    blr.add_argument("--episodes", type=int, default=32)
    blr.add_argument("--out", type=Path, required=True)
    blr.set_defaults(func=cmd_bench_llm_record)
    bl = bench.add_parser(
        "llm",
        parents=[common],
        help="a local model's throughput on recorded policy calls: devices, batching, CUDA graphs (no data set needed)",
    )
    bl.add_argument("calls", type=Path, help="a recording from `mma bench llm-record`")
    bl.add_argument(
        "--model-path", required=True, help="a transformers model folder (the recorded policy, or any model with its tokenizer)"
    )
    bl.add_argument("--devices", nargs="+", default=["cpu"], help="torch devices, e.g. cpu cuda")
    bl.add_argument("--concurrency", type=int, default=32, help="episodes in flight in the concurrent settings")
    bl.add_argument(
        "--batch-on-cpu", action="store_true", help="also run the batched forward on the CPU (slow with many episodes in flight)"
    )
    bl.add_argument(
        "--skip-unbatched-concurrency",
        action="store_true",
        help="leave out the concurrent rows without batching (calls in lock-step)",
    )
    bl.add_argument(
        "--all-logits",
        action="store_true",
        help="also run the sequential setting with the LM head over every prefilled position (as before it kept the last only)",
    )
    bl.add_argument(
        "--token-by-token",
        action="store_true",
        help="also run the sequential setting with a forward pass per branching point (as before the one tree pass per call)",
    )
    bl.add_argument("--repeats", type=int, default=1, help="timed passes per setting (the best is reported)")
    bl.add_argument(
        "--dtypes",
        nargs="+",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="run each setting in each dtype (default: auto)",
    )
    bl.set_defaults(func=cmd_bench_llm)

    br = bench.add_parser("rerank", parents=[common], help="episode latency, LLM calls and tokens with the embedded model")
    br.add_argument(
        "--model",
        nargs="+",
        default=["transformers:smollm2-135m"],
        help="backend strings, optionally NAME=BACKEND (each a row per prompt style)",
    )
    br.add_argument(
        "--prompts",
        nargs="+",
        choices=list(PROMPT_STYLES),
        default=list(PROMPT_STYLES)[::-1],
        help="prompt styles to compare (default: full, then compact)",
    )
    br.add_argument("--interactive-model", metavar="[NAME=]BACKEND", help="MMA-Interactive's policy (default: the first --model)")
    br.add_argument(
        "--base-url", help="the OpenAI-compatible server of openai: models, e.g. http://127.0.0.1:8000/v1 (vLLM, mma serve)"
    )
    br.add_argument(
        "--dtypes",
        nargs="+",
        choices=["auto", "float32", "bfloat16"],
        default=["auto"],
        help="each local model in each dtype (auto: what the hardware computes fastest; float32: a CPU without bf16 arithmetic)",
    )
    br.add_argument("--episodes", type=int, default=20)
    br.add_argument("--concurrency", type=int, default=2)
    br.set_defaults(func=cmd_bench_rerank)
