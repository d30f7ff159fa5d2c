"""`mma bench ask`: is a clarification question worth its cost? On validation pools, per family
and question kind, the gain in NDCG@10 of the simulated user's target from asking once after
every automated tool answered, against the 0.10 (Eq. 3) that asking costs.

Each plan runs through the real reranker graph with a scripted policy: RuleRouter-Fuse's plan
(every automated tool, then equal weights), and the same plan with one `ask_user` before scoring,
scored with equal weights over all gathered groups or with the answer alone. The simulated user
knows the target, so this is the upper bound of what a question can buy (the diagnostic the
interactive policy is trained against); an app's person answers through the same channel.
"""

from __future__ import annotations

import json
import time

import numpy as np
from tqdm.auto import tqdm

from mma_agent.toolkits.workspace import Workspace

ASK_KINDS = ("text", "image", "behaviour")


def bench_ask(
    pipeline: Workspace, *, families: list[str], pools: int = 100, alpha: float = 0.5, split: str = "valid"
) -> dict[str, list[dict]]:
    from mma_agent.evals.runner import build_episodes
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.graphs.state import SCORE_TOOL, rerank_request
    from mma_agent.llm.scripted import ScriptedChatModel
    from mma_agent.metrics import ndcg_at_k
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.toolkits.base import ASK_COST

    catalogue, kits = pipeline.toolkits()
    tools = tool_vocabulary(kits)
    ask = next(s for s in tools.specs if not s.automated)
    gather = [json.dumps({"tool": s.name, "args": {}}) for s in tools.automated]
    score = {
        "equal": json.dumps({"tool": SCORE_TOOL, "args": {"weights": {}}}),
        "answer alone": json.dumps({"tool": SCORE_TOOL, "args": {"weights": {ask.group: 1}}}),
    }
    plans = {"no question": [*gather, score["equal"]]}
    for kind in ASK_KINDS:
        q = json.dumps({"tool": ask.name, "args": {"modality_type": kind, "query": "What do you feel like?"}})
        for how, line in score.items():
            plans[f"ask {kind}, {how}"] = [*gather, q, line]
    graphs = {
        name: create_mma_reranker(
            ScriptedChatModel(responses=plan),
            catalogue=catalogue,
            toolkits=kits,
            variant="interactive",
            alpha=alpha,
            backend={"prefill": False},
        ).compile()
        for name, plan in plans.items()
    }
    episodes = build_episodes(pipeline, split, families=families, limit=pools)
    ndcg: dict[tuple[str, str], list[float]] = {}
    answered: dict[tuple[str, str], list[bool]] = {}
    in_pool: dict[str, list[bool]] = {}
    start = time.perf_counter()
    for ep in tqdm(episodes, desc="ask bench", unit="ep"):
        request = rerank_request(ep, with_target=True)
        in_pool.setdefault(ep["family"], []).append(ep["target"] in set(ep["candidates"]))
        for name, graph in graphs.items():
            out = graph.invoke(request)
            ndcg.setdefault((ep["family"], name), []).append(ndcg_at_k(out.get("ranking", []), {ep["target"]}, 10))
            null = any(t.get("null") for t in out["trace"] if (t.get("action") or {}).get("tool") == ask.name)
            answered.setdefault((ep["family"], name), []).append(not null)
    seconds = time.perf_counter() - start
    rows = []
    for family in families:
        base = np.array(ndcg.get((family, "no question"), []))
        if not len(base):
            continue
        for name in plans:
            if name == "no question":
                rows.append(
                    {
                        "family": family,
                        "plan": name,
                        "episodes": len(base),
                        "target NDCG@10": f"{base.mean():.4f}",
                        "target in the pool": f"{100 * np.mean(in_pool[family]):.0f}%",
                    }
                )
                continue
            x = np.array(ndcg[family, name])
            gain = x - base
            held = np.array(in_pool[family])
            rows.append(
                {
                    "family": family,
                    "plan": name,
                    "episodes": len(x),
                    "target NDCG@10": f"{x.mean():.4f}",
                    "answered": f"{100 * np.mean(answered[family, name]):.0f}%",
                    "mean gain": f"{gain.mean():+.4f}",
                    f"gain > {ASK_COST:.2f}": f"{100 * np.mean(gain > ASK_COST):.0f}%",
                    "mean gain, pools holding the target": f"{gain[held].mean():+.4f} ({held.sum()})" if held.any() else "",
                    "worth it (gain > cost)": "yes" if gain.mean() > ASK_COST else "no",
                }
            )
    title = f"Asking once after every automated tool, {split} pools ({pools} per family), alpha {alpha}; {seconds:.0f} s"
    return {title: rows}
