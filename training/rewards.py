"""The MMA episode reward (paper Eq. 3) as plain callables in TRL's style.

    reward = NDCG@10 of the final ranking at termination
             - 0.02 per automated tool call (analyze_text, analyze_image, retrieve_graph)
             - 0.10 per ask_user
             - 0.20 per invalid action (bad JSON, unknown tool, repeating a tool that returned Null)

`episode_reward` scores one reranker output; `mma_reward(completions, **columns)` is the TRL
reward-function form, reading each completion's reranker output and target from the columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mma_agent.metrics import ndcg_at_k

TOOL_COST, ASK_COST, INVALID_COST = 0.02, 0.10, 0.20
AUTOMATED = ("analyze_text", "analyze_image", "retrieve_graph")


def action_costs(trace: Sequence[dict]) -> dict[str, int]:
    """Counts of automated tool calls, ask_user calls and invalid actions in a reranker trace."""
    counts = {"tool_calls": 0, "ask_user": 0, "invalid": 0}
    for step in trace:
        action = step.get("action") or {}
        if step.get("invalid"):
            counts["invalid"] += 1
        elif action.get("tool") in AUTOMATED:
            counts["tool_calls"] += 1
        elif action.get("tool") == "ask_user":
            counts["ask_user"] += 1
    return counts


def episode_reward(output: dict[str, Any], target: str, k: int = 10) -> float:
    """Eq. 3 for one reranker output (`ranking`, `trace`) and its held-out target."""
    c = action_costs(output.get("trace", []))
    ndcg = ndcg_at_k(output.get("ranking", []), {target}, k)
    return ndcg - TOOL_COST * c["tool_calls"] - ASK_COST * c["ask_user"] - INVALID_COST * c["invalid"]


def mma_reward(completions: Sequence[Any], *, output: Sequence[dict], target: Sequence[str], **_: Any) -> list[float]:
    """TRL reward function: one reward per completion, from the `output` and `target` columns."""
    if not len(completions) == len(output) == len(target):
        msg = f"mma_reward needs one output and target per completion; got {len(completions)}, {len(output)}, {len(target)}"
        raise ValueError(msg)
    return [episode_reward(o, t) for o, t in zip(output, target, strict=True)]
