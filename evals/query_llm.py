"""MMA-Auto on query episodes: a policy on every episode of a query set, one at a time and timed,
into a resumable store.

The store is one JSONL file per policy under the workdir (`queries/llm/<name>.jsonl`): a header
naming the backend and a fingerprint of its weights, then one line per finished episode (its key,
the policy's unfused scores per candidate, what it did, its wall time), appended and flushed. A
rerun skips the episodes already in it, so a kill loses at most the episode in flight and nothing
is counted twice; a store written by other weights is an error naming both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mma_agent.metrics import ndcg_of_scores
from mma_agent.toolkits.workspace import Workspace


class QueryStoreError(ValueError):
    """A policy's query store belongs to other weights, or is malformed; the message says which."""


def episode_key(e: dict) -> str:
    """One query episode's key: its split, family, pool, the query's kind and source."""
    return f"{e['split']}|{e['family']}|{e['pool']}|{e['query_kind']}|{e['query_source']}"


def weights_fingerprint(backend: str) -> str:
    """The backend string, and for a local folder of weights its files' names, sizes and times."""
    from mma_agent.util import json_digest

    _, _, name = backend.partition(":")
    folder = Path(name)
    if not folder.is_dir():
        return backend
    files = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in folder.glob("*.safetensors"))
    return f"{backend}#{json_digest(files)}"


def read_store(path: Path, header: dict | None = None) -> dict[str, dict]:
    """The records of a policy's store by episode key (a half-written last line is cut off)."""
    from mma_agent.util import read_jsonl

    if not path.is_file() or not path.stat().st_size:
        return {}
    lines = read_jsonl(path, repair=True, error=QueryStoreError)
    if not lines or "header" not in lines[0][1]:
        msg = f"{path}: line 1 must be the store's header; is this a query store?"
        raise QueryStoreError(msg)
    if header is not None and lines[0][1]["header"] != header:
        msg = f"{path} holds episodes of {lines[0][1]['header']}, not {header}: pass another --llm NAME or move the file"
        raise QueryStoreError(msg)
    return {rec["key"]: rec for _, rec in lines[1:]}


def run_policy(pipeline: Workspace, episodes: list[dict], model: Any, path: Path, *, desc: str = "MMA-Auto") -> dict[str, dict]:
    """Run MMA-Auto with `model` (a backend string or a chat model; compact prompt) on every episode
    not yet in the store at `path`, one at a time (each record's wall time is one request's
    latency), and return every record."""
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.graphs.state import rerank_request, trace_stats
    from mma_agent.llm import resolve_chat_model
    from mma_agent.toolkits import tool_vocabulary

    backend = model if isinstance(model, str) else type(model).__name__
    header = {"backend": backend, "weights": weights_fingerprint(backend)}
    done = read_store(path, header)
    todo = [e for e in episodes if episode_key(e) not in done]
    if not todo:
        return done
    catalogue, kits = pipeline.toolkits()
    request_tools = {s.name for s in tool_vocabulary(kits).specs if s.reads_request}
    chat = resolve_chat_model(model, cache_dir=pipeline.config.workdir / "models")
    graph = create_mma_reranker(chat, catalogue=catalogue, toolkits=kits).compile()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        if not done:
            fh.write(json.dumps({"header": header}) + "\n")
        for e in tqdm(todo, desc=desc, unit="ep", initial=len(episodes) - len(todo), total=len(episodes), mininterval=5):
            start = time.perf_counter()
            out = graph.invoke(rerank_request(e, with_target=False))
            seconds = time.perf_counter() - start
            scores = out.get("mma_scores")
            stats = trace_stats(out)
            rec = {
                "key": episode_key(e),
                "mma": [scores[c] for c in e["candidates"]] if scores else None,
                "request_tools": sum((t.get("action") or {}).get("tool") in request_tools for t in out["trace"]),
                "calls": stats["calls"],
                "fallback": stats["fallback"],
                "reason": stats["reason"],
                "seconds": round(seconds, 4),
                "actions": [json.dumps(t["action"]) for t in out["trace"] if t.get("action")],
            }
            done[rec["key"]] = rec
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
    return done


def llm_grid(episodes: list[dict], records: dict[str, dict], alphas: tuple[float, ...]) -> np.ndarray:
    """NDCG@10 per episode and alpha of the policy's scores fused with the first stage (the first
    stage where it fell back; NaN rows for episodes it has not run)."""
    from mma_agent.graphs.fusion import fuse

    out = np.full((len(episodes), len(alphas)), np.nan)
    for i, e in enumerate(episodes):
        rec = records.get(episode_key(e))
        if rec is None:
            continue
        first = np.asarray(e["first_stage_scores"], dtype=float)
        mma = None if rec["mma"] is None else np.asarray(rec["mma"], dtype=float)
        for j, a in enumerate(alphas):
            out[i, j] = ndcg_of_scores(first if mma is None else fuse(first, mma, a), e["candidates"], set(e["relevant"]))
    return out


def usage_row(
    name: str,
    episodes: list[dict],
    records: dict[str, dict],
    labels: dict[tuple[str, str], tuple[str, str]] | None = None,
    request_tools: Collection[str] = (),
) -> dict[str, Any]:
    """What a policy did on these episodes, and its per-episode wall time. With `labels`
    (`training.request_policy.label_table`): how often it followed them (`follows_label`)."""
    from mma_agent.training.request_policy import follows_label, table_label

    ran = [(e, records[episode_key(e)]) for e in episodes if episode_key(e) in records]
    if not ran:
        return {"policy": name, "episodes": 0}
    recs = [r for _, r in ran]
    secs = np.array([r["seconds"] for r in recs])
    req = np.array([r["request_tools"] for r in recs])
    follows = {}
    if labels is not None:
        hits = np.array(
            [
                follows_label(
                    [json.loads(a) for a in r["actions"]], table_label(labels, e["family"], e["query_kind"]), request_tools
                )
                for e, r in ran
            ]
        )
        follows = {"follows its labels: request tools / and weights": f"{hits[:, 0].mean():.0%} / {hits[:, 1].mean():.0%}"}
    return {
        "policy": name,
        "episodes": len(recs),
        "request-tool calls/ep": f"{req.mean():.2f}",
        "share calling one": f"{(req > 0).mean():.0%}",
        "tool calls/ep": f"{np.mean([r['calls'] for r in recs]):.1f}",
        "fallback": f"{np.mean([r['fallback'] for r in recs]):.1%}",
        "p50 s": f"{np.median(secs):.3f}",
        "p90 s": f"{np.quantile(secs, 0.9):.3f}",
        **follows,
    }
