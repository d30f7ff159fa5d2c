"""`mma bench llm`: a local backend's throughput on the policy calls of real episodes, replayed.

`record` runs MMA-Auto on test pools of the full family and writes every policy call (the
messages, the prefill and the valid completions) to a JSON file; compact prompts carry no item
text, only tool words and strength lines. `replay` feeds those calls to a `transformers:` model
under several settings (device, batching, CUDA graphs, concurrency) one after the other in one
process: each episode's calls in order, `concurrency` episodes at a time. The replay needs
neither the data set nor the toolkits, so it runs on a machine that has only the model (or a
randomly initialised one with the same architecture, to measure speed without the weights).
The graph's own tool work is not in these figures: `mma bench rerank` measures whole episodes.
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mma_agent.toolkits.workspace import Workspace

FORMAT = "mma-policy-calls/1"


def record_policy_calls(pipeline: Workspace, backend: str, out: Path, *, episodes: int = 32) -> dict:
    """Run MMA-Auto with `backend` on the first `episodes` test pools of the full family and write
    its policy calls to `out` (JSON): what `replay` feeds a model."""
    from mma_agent.evals.rerank_bench import pool_requests
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.llm import TransformersChatModel, resolve_chat_model

    model = resolve_chat_model(backend, cache_dir=pipeline.config.workdir / "models")
    if not isinstance(model, TransformersChatModel):
        msg = f"record needs a local transformers: backend (it reads the constrained calls); got {backend!r}"
        raise ValueError(msg)  # noqa: TRY004 - a wrong backend string: the CLI reports ValueErrors as usage errors
    calls: list[dict] = []

    class Recording(TransformersChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            result = super()._generate(messages, stop, run_manager, **kwargs)
            calls.append(
                {
                    "messages": [{"role": m.type, "content": str(m.content)} for m in messages],
                    "prefill": kwargs.get("prefill", ""),
                    "allowed": kwargs.get("allowed_completions"),
                    "reply": result.generations[0].message.content,
                }
            )
            return result

    rec = Recording(**model.model_dump())
    catalogue, kits = pipeline.toolkits()
    graph = create_mma_reranker(rec, catalogue=catalogue, toolkits=kits, backend={"timeout": None}).compile()
    recorded = []
    for req in pool_requests(pipeline, pipeline.pools("full", "test"), episodes):
        calls.clear()
        graph.invoke(req)
        recorded.append(list(calls))
    data = {"format": FORMAT, "backend": backend, "family": "full", "split": "test", "episodes": recorded}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return data


def load_policy_calls(path: Path) -> list[list[dict]]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        msg = f"{path} is not a policy-call recording ({FORMAT}); write one with `mma bench llm-record`"
        raise ValueError(msg)
    return data["episodes"]


def _replay(model: Any, episodes: list[list[dict]], concurrency: int) -> tuple[float, list[float], list[list[str]]]:
    from langchain_core.messages import convert_to_messages

    lat: list[float] = []

    def episode(calls: list[dict]) -> list[str]:
        replies = []
        for c in calls:
            start = time.perf_counter()
            out = model.invoke(
                convert_to_messages(c["messages"]), prefill=c["prefill"], allowed_completions=c["allowed"], stop_strings=["\n"]
            )
            lat.append(time.perf_counter() - start)
            replies.append(str(out.content))
        return replies

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        replies = list(pool.map(episode, episodes))
    return time.perf_counter() - start, lat, replies


def bench_llm(calls_file: Path, model_path: str, settings: list[dict], *, repeats: int = 1) -> dict[str, list[dict]]:
    """Each setting ({"device", "batching", "cuda_graphs", "concurrency", optional "dtype", "tree_pass", "all_logits"
    (the LM head over every prefilled position) and "label"}) replays
    every recorded episode with a `TransformersChatModel` over `model_path`, after two warm-up
    passes over them (model load, graph captures); the best of `repeats` timed passes is reported."""
    import torch

    from mma_agent.llm import TransformersChatModel

    episodes = load_policy_calls(calls_file)
    recorded = [[c["reply"] for c in ep] for ep in episodes]
    n_calls = sum(len(ep) for ep in episodes)
    rows, models, last_only, first, changed = [], {}, {}, None, []
    for s in settings:
        key = (s.get("device"), s.get("batching"), s.get("cuda_graphs", True), s.get("dtype", "auto"), s.get("tree_pass", True))
        if key not in models:
            models[key] = TransformersChatModel(
                model_path=model_path, device=key[0], batching=key[1], cuda_graphs=key[2], dtype=key[3], tree_pass=key[4]
            )
        model = models[key]
        model._load()
        keep = last_only.setdefault(key, model._last_logits)  # what the model computes by default
        model._last_logits = {} if s.get("all_logits") else keep
        for _ in range(2):  # warm-up: model load, and the shapes this setting's passes take (graph captures)
            _replay(model, episodes, s["concurrency"])
        batcher, best = model._batcher, None
        for _ in range(repeats):
            before = dict(batcher.stats) if batcher is not None else {}
            wall, lat, replies = _replay(model, episodes, s["concurrency"])
            used = {k: batcher.stats[k] - v for k, v in before.items()}
            if best is None or wall < best[0]:
                best = (wall, lat, replies, used)
        wall, lat, replies, used = best
        per_pass = used["rows"] / used["passes"] if used.get("passes") else 0.0
        in_passes = used.get("seconds", 0.0) / wall
        same = sum(a == b for a, b in zip(replies, recorded, strict=True))
        first = replies if first is None else first
        same_first = sum(a == b for a, b in zip(replies, first, strict=True))
        rows.append(
            {
                "setting": s.get("label")
                or f"{model.torch_device.type}, batching={bool(batcher)}, concurrency={s['concurrency']}",
                "device": torch.cuda.get_device_name(model.torch_device) if model.torch_device.type == "cuda" else "cpu",
                "dtype": model.compute_dtype,
                "episodes/s": f"{len(episodes) / wall:.2f}",
                "calls/s": f"{n_calls / wall:.1f}",
                "call p50 ms": f"{1000 * statistics.median(lat):.1f}",
                "call p95 ms": f"{1000 * statistics.quantiles(lat, n=20)[-1]:.1f}",
                "rows/pass": f"{per_pass:.1f}" if batcher is not None else "",
                "time in passes": f"{in_passes:.0%}" if batcher is not None else "",
                "graphs (captured while timed)": f"{batcher.stats['captures']} ({used['captures']})"
                if batcher is not None and batcher.cuda_graphs
                else "",
                "same actions as recorded": f"{same}/{len(episodes)}",
                "same as the first row": f"{same_first}/{len(episodes)}",
            }
        )
        for e, (got, want) in enumerate(zip(replies, recorded, strict=True)):
            if got != want:  # the first call that answered differently, and the two answers
                k = next(k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
                changed.append(
                    {"setting": rows[-1]["setting"], "episode": e, "call": k + 1, "recorded": want[k], "replayed": got[k]}
                )
    title = f"Policy calls of {len(episodes)} recorded episodes ({n_calls} calls), replayed on {model_path}, one setting after the other in one run"
    return {title: rows} | (
        {"Episodes whose actions changed: the first call that answered differently": changed} if changed else {}
    )
