"""`mma bench rerank`: episode latency, LLM calls and tokens on real 100-item pools with the
embedded model, sequential and in batch (`.batch` with `max_concurrency`), beside RuleRouter-Fuse;
for a local model also the constrained fast path against masked `generate` on the same episodes."""

from __future__ import annotations

import json
import time

import numpy as np

from mma_agent.toolkits.workspace import Workspace


def pool_requests(pipeline: Workspace, pools, n: int) -> list[dict]:
    """Reranker requests of the first `n` pools (user, candidates, first-stage scores)."""
    split = pipeline.split
    return [
        {
            "user_id": str(split.user_ids[pools.users[p]]),
            "candidates": [str(split.item_ids[c]) for c in pools.candidates[p]],
            "first_stage_scores": [float(x) for x in pools.scores[p]],
        }
        for p in range(min(n, len(pools)))
    ]


def _actions(out: dict) -> list[str]:
    return [json.dumps(t["action"], sort_keys=True) for t in out["trace"] if t.get("action")]


def bench_rerank(
    pipeline: Workspace,
    model: str | list[str],
    *,
    episodes: int = 20,
    concurrency: int = 2,
    with_image: bool = True,
    prompts: tuple[str, ...] = ("full", "compact"),
    interactive: str | None = None,
    base_url: str | None = None,
    dtypes: tuple[str, ...] = ("auto",),
) -> dict[str, list[dict]]:
    """Each model (a backend string, or NAME=BACKEND) with each prompt style, MMA-Interactive with
    `interactive` (NAME=BACKEND; default the first model) in the last style, and RuleRouter-Fuse,
    on the same test pools of the full family, one after the
    other in one process; throughput (sequential, `.batch`, and for a local model masked
    `generate` without the constrained fast path) for the first model and style. `dtypes`: each
    local model in each of these ("auto": what the hardware computes fastest, `choose_dtype`;
    "float32" is what a CPU without bf16 arithmetic computes in)."""
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.graphs.state import trace_stats
    from mma_agent.llm import TransformersChatModel, named_backend, resolve_chat_model
    from mma_agent.metrics import ndcg_at_k

    catalogue, kits = pipeline.toolkits(image=with_image)

    def named(spec: str) -> tuple[str, object]:
        name, backend = named_backend(spec)
        served = {"base_url": base_url} if backend.startswith("openai:") else {}  # an OpenAI-compatible server (vLLM, mma serve)
        return name, resolve_chat_model(backend, cache_dir=pipeline.config.workdir / "models", **served)

    models = []
    for spec in [model] if isinstance(model, str) else model:
        name, llm = named(spec)
        for d in dtypes if isinstance(llm, TransformersChatModel) else ("auto",):  # a local model in each dtype asked for
            local = llm if d == "auto" else type(llm)(**{**llm.model_dump(), "dtype": d})  # its own load and cache
            models.append((name if d == "auto" else f"{name}, {d}", local))
    asking = named(interactive) if interactive else models[0]
    pools = pipeline.pools("full", "test")
    requests = pool_requests(pipeline, pools, episodes)
    targets = [str(pipeline.split.item_ids[pools.target(p)]) for p in range(len(requests))]
    relevant = [{str(pipeline.split.item_ids[i]) for i in pools.relevant(p)} for p in range(len(requests))]
    rows, speed = [], []
    runs = [(f"MMA-Auto ({name}), {style} prompt", llm, "auto", style) for name, llm in models for style in prompts]
    runs += [
        (f"MMA-Interactive ({asking[0]}, simulated user), {prompts[-1]} prompt", asking[1], "interactive", prompts[-1]),
        ("RuleRouter-Fuse", None, "rule", prompts[-1]),
    ]
    for label, llm, variant, style in runs:
        graph = create_mma_reranker(llm, catalogue=catalogue, toolkits=kits, variant=variant, prompt=style).compile()
        graph.invoke({**requests[0], "target": targets[0]})  # warm-up: model load, first-call allocations
        lat, outs = [], []
        for req, target in zip(requests, targets, strict=True):
            req = {**req, "target": target} if variant == "interactive" else req
            start = time.perf_counter()
            outs.append(graph.invoke(req))
            lat.append(time.perf_counter() - start)
        usage = [o.get("usage", {}) for o in outs]
        stats = [trace_stats(o) for o in outs]
        ndcg = np.mean([ndcg_at_k(o["ranking"], rel, 10) for o, rel in zip(outs, relevant, strict=True)])
        first = np.mean(
            [ndcg_at_k(r["candidates"], rel, 10) for r, rel in zip(requests, relevant, strict=True)]
        )  # pools are in first-stage order
        total_llm = sum(u.get("llm_ms", 0) for u in usage) / 1000
        rows.append(
            {
                "variant": label,
                "dtype": llm.dtype_choice if isinstance(llm, TransformersChatModel) else ("server's" if llm is not None else ""),
                "episodes": len(outs),
                "p50 s": f"{np.percentile(lat, 50):.3f}",
                "p95 s": f"{np.percentile(lat, 95):.3f}",
                "tool calls/ep": f"{np.mean([s['calls'] for s in stats]):.1f}",
                "ask_user/ep": f"{np.mean([s['ask_user'] for s in stats]):.2f}",
                "LLM calls/ep": f"{np.mean([u.get('llm_calls', 0) for u in usage]):.1f}",
                "prompt tok/ep": f"{np.mean([u.get('input_tokens', 0) for u in usage]):.0f}",
                "gen tok/ep": f"{np.mean([u.get('output_tokens', 0) for u in usage]):.0f}",
                "LLM share of time": f"{100 * total_llm / sum(lat):.0f}%",
                "fallback": f"{np.mean([o['fallback'] for o in outs]):.0%}",
                "NDCG@10 (first stage)": f"{ndcg:.3f} ({first:.3f})",
            }
        )
        if variant == "auto" and style == prompts[-1]:  # throughput of each model in the last style
            start = time.perf_counter()
            graph.batch(requests, config={"max_concurrency": concurrency})
            batch_s = time.perf_counter() - start
            speed.append(
                {"mode": f"{label}: sequential .invoke", "episodes/s": f"{len(requests) / sum(lat):.3f}", "same actions": ""}
            )
            speed.append(
                {
                    "mode": f"{label}: .batch(max_concurrency={concurrency})",
                    "episodes/s": f"{len(requests) / batch_s:.3f}",
                    "same actions": "",
                }
            )
            if isinstance(llm, TransformersChatModel) and not any(
                "masked generate" in r["mode"] for r in speed
            ):  # the fast path vs masked `generate`, once
                llm.fast_constrained = False
                try:
                    start = time.perf_counter()
                    slow = [graph.invoke(req) for req in requests]
                    slow_s = time.perf_counter() - start
                finally:
                    llm.fast_constrained = True
                same = sum(_actions(a) == _actions(b) for a, b in zip(outs, slow, strict=True))
                speed[-2]["same actions"] = f"{same}/{len(outs)} as masked generate"
                speed.append(
                    {
                        "mode": f"{label}: sequential .invoke, masked generate (no fast path)",
                        "episodes/s": f"{len(requests) / slow_s:.3f}",
                        "same actions": "",
                    }
                )
    return {
        "Episode cost on 100-item pools (test, full family; 2 CPU cores), measured one after the other in one run": rows,
        "Throughput, same episodes, measured side by side": speed,
    }
