"""The MMA episode reward (paper Eq. 3) as plain callables in TRL's style.

    reward = NDCG@10 of the final ranking at termination
             - each tool call's cost (its ToolSpec's: 0.02 per automated evidence tool,
               0.10 per ask_user)
             - 0.20 per invalid action (bad JSON, unknown tool, repeating a tool that returned Null)

`episode_reward` scores one reranker output; `mma_reward(completions, **columns)` is the TRL
reward-function form, reading each completion's reranker output and target from the columns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from mma_agent.metrics import ndcg_at_k
from mma_agent.toolkits import tool_vocabulary

if TYPE_CHECKING:
    from mma_agent.toolkits.base import ToolVocabulary

INVALID_COST = 0.20


def _valid_calls(trace: Sequence[dict], tools: ToolVocabulary):
    for step in trace:
        spec = tools.get((step.get("action") or {}).get("tool"))
        if spec is not None and not step.get("invalid"):
            yield spec


def action_costs(trace: Sequence[dict], tools: ToolVocabulary | None = None) -> dict[str, int]:
    """Counts of automated tool calls, questions to the user (non-automated tools) and invalid
    actions in a reranker trace (`tools`: the reranker's vocabulary, by default the built-in one)."""
    tools = tools or tool_vocabulary()
    calls = list(_valid_calls(trace, tools))
    return {
        "tool_calls": sum(s.automated for s in calls),
        "ask_user": sum(not s.automated for s in calls),
        "invalid": sum(bool(s.get("invalid")) for s in trace),
    }


def episode_reward(
    output: dict[str, Any], target: str | Collection[str], k: int = 10, tools: ToolVocabulary | None = None
) -> float:
    """Eq. 3 for one reranker output (`ranking`, `trace`) and its held-out target (or a set of
    relevant items: a query episode's held-out positives)."""
    trace = output.get("trace", [])
    calls = Counter(s.cost for s in _valid_calls(trace, tools or tool_vocabulary()))
    reward = ndcg_at_k(output.get("ranking", []), {target} if isinstance(target, str) else set(target), k)
    for cost in sorted(calls):  # cheapest first: for the built-in tools, exactly ndcg - 0.02 n_tools - 0.10 n_ask
        reward -= cost * calls[cost]
    return reward - INVALID_COST * sum(bool(s.get("invalid")) for s in trace)


def mma_reward(completions: Sequence[Any], *, output: Sequence[dict], target: Sequence[str], **_: Any) -> list[float]:
    """TRL reward function: one reward per completion, from the `output` and `target` columns."""
    if not len(completions) == len(output) == len(target):
        msg = f"mma_reward needs one output and target per completion; got {len(completions)}, {len(output)}, {len(target)}"
        raise ValueError(msg)
    return [episode_reward(o, t) for o, t in zip(output, target, strict=True)]
