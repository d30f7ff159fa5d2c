"""Compare policies on query episodes: mean reward and NDCG@10 per family, failed-call rate and
turns per episode (the paper's routing diagnostics)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from tqdm.auto import tqdm

from mma_agent.graphs.state import rerank_request, trace_stats
from mma_agent.metrics import ndcg_at_k
from mma_agent.training.rewards import episode_reward


def evaluate_policies(policies: dict, episodes: list[dict]) -> list[dict]:
    """policies: name -> compiled reranker. One row per (policy, family), plus an 'all' row."""
    rows = []
    for name, graph in policies.items():
        by = defaultdict(list)
        for ep in tqdm(episodes, desc=f"eval {name}", unit="ep"):
            out = graph.invoke(rerank_request(ep))
            stats = trace_stats(out)
            by[ep["family"]].append(
                {
                    "reward": episode_reward(out, ep["target"]),
                    "ndcg": ndcg_at_k(out["ranking"], {ep["target"]}, 10),
                    **{k: stats[k] for k in ("calls", "failed", "fallback", "turns")},
                }
            )
        for fam, rs in [*sorted(by.items()), ("all", [r for group in by.values() for r in group])]:
            calls = sum(r["calls"] for r in rs)
            rows.append(
                {
                    "policy": name,
                    "family": fam,
                    "episodes": len(rs),
                    "mean reward": float(np.mean([r["reward"] for r in rs])),
                    "NDCG@10": float(np.mean([r["ndcg"] for r in rs])),
                    "failed calls": f"{100 * sum(r['failed'] for r in rs) / max(calls, 1):.0f}%",
                    "turns/ep": f"{np.mean([r['turns'] for r in rs]):.1f}",
                    "fallback": f"{100 * np.mean([r['fallback'] for r in rs]):.0f}%",
                }
            )
    return rows
