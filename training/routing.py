"""Routing without an LLM, and how well any policy routes, per state.

The **lookup control** is the honest question of whether the LLM adds anything: a table from the
availability pattern a policy has observed (which tools it called, in order, and which answered
Null) to the action with the best mean value over the support episodes' explored states
(`decisions.decision_points`: the value of an action is the best Eq. 3 reward of any plan continuing
with it). It routes through the reranker graph like RuleRouter-Fuse (`create_mma_reranker(...,
variant="rule", router=table)`); a pattern it never saw falls back to RuleRouter-Fuse's rule.

The **routing diagnostic** scores a policy's greedy action at held-out explored states against the
best-valued action: accuracy, and regret (the value lost), per family and state kind (the start,
after a Null, after evidence). It runs in minutes and is the training loop's main signal; full
episodes confirm it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mma_agent.graphs.policy import rule_action
from mma_agent.toolkits.base import ToolVocabulary
from mma_agent.util import atomic_write_text

Pattern = tuple[tuple[str, bool], ...]  # (tool, answered Null) per call so far, in order


def trace_pattern(trace: Sequence[dict]) -> Pattern:
    """The availability pattern a policy has observed in a reranker trace."""
    return tuple(
        (t["action"]["tool"], bool(t.get("null"))) for t in trace if t.get("action") and t["action"].get("tool") and "null" in t
    )


def point_pattern(point: dict) -> Pattern:
    """The availability pattern at an explored state (`decisions.decision_points`' "pattern")."""
    return tuple((str(t), bool(null)) for t, null in point["pattern"])


def pattern_trace(pattern: Pattern) -> list[dict]:
    """A minimal reranker trace showing a pattern (what a router or the constrained decoder reads)."""
    return [{"action": {"tool": t, "args": {}}, "null": null} for t, null in pattern]


def valid_actions(point: dict, tools: ToolVocabulary, *, interactive: bool = False) -> set[str]:
    """The actions constrained decoding allows at an explored state (`graphs.policy.completions`
    on the pattern the policy observed), in the canonical spelling of the plans."""
    from mma_agent.graphs.policy import PREFILL, completions

    out = set()
    for c in completions(tools, tools.names(interactive=interactive), pattern_trace(point_pattern(point))):
        a = json.loads(PREFILL + c)
        out.add(json.dumps({"tool": a["tool"], "args": a["args"]}))
    return out


def state_kind(pattern: Pattern) -> str:
    return "start" if not pattern else "after a Null" if pattern[-1][1] else "after evidence"


@dataclass
class LookupRouter:
    """Availability pattern -> the action (a JSON action line) with the best mean value on support."""

    table: dict[Pattern, str] = field(default_factory=dict)
    support: dict[Pattern, int] = field(default_factory=dict)  # explored states behind each entry

    @classmethod
    def fit(cls, points: list[dict], tools: ToolVocabulary | None = None, *, interactive: bool = False) -> LookupRouter:
        """From explored states; only actions constrained decoding allows at a state count (the
        LLM policy's constraint, so both choose from the same actions)."""
        from mma_agent.toolkits import tool_vocabulary

        tools = tools or tool_vocabulary()
        values: dict[Pattern, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for p in points:
            valid = valid_actions(p, tools, interactive=interactive)
            for action, v in p["values"].items():
                if action in valid:
                    values[point_pattern(p)][action].append(v)
        table, support = {}, {}
        for pattern, acts in values.items():
            n = max(len(v) for v in acts.values())
            means = {a: float(np.mean(v)) for a, v in acts.items() if len(v) == n}  # actions explored at every such state
            table[pattern] = max(means, key=means.get)
            support[pattern] = n
        return cls(table, support)

    def __call__(self, tools: ToolVocabulary, trace: list[dict]) -> dict:
        action = self.table.get(trace_pattern(trace))
        return json.loads(action) if action is not None else rule_action(tools, trace)

    def save(self, path: Path) -> None:
        rows = [{"pattern": [list(x) for x in k], "action": a, "states": self.support[k]} for k, a in self.table.items()]
        atomic_write_text(Path(path), json.dumps(rows, indent=1))

    @classmethod
    def load(cls, path: Path) -> LookupRouter:
        rows = json.loads(Path(path).read_text())
        key = lambda r: tuple((t, bool(n)) for t, n in r["pattern"])  # noqa: E731
        return cls({key(r): r["action"] for r in rows}, {key(r): int(r["states"]) for r in rows})


def sample_states(points: list[dict], n: int | None, seed: int = 0) -> list[dict]:
    """A seeded subset of `n` states (all when n is 0, None or at least their number), each state
    kind in proportion but at least a third of `n` split over the kinds that exist, so the start
    and Null-recovery states are not crowded out by the many states after evidence."""
    if not n or n >= len(points):
        return points
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(points):
        by[state_kind(point_pattern(p))].append(i)
    floor = n // (3 * len(by))
    take = {k: max(floor, round(n * len(v) / len(points))) for k, v in by.items()}
    while sum(take.values()) > n:  # the floors pushed it over: trim the largest kind
        take[max(take, key=take.get)] -= 1
    keep = sorted(int(i) for k, v in by.items() for i in rng.permutation(v)[: take[k]])
    return [points[i] for i in keep]


def routing_diagnostic(points: list[dict], policies: dict[str, Callable[[dict], str | None]]) -> list[dict]:
    """Per policy, family and state kind: how often its action at an explored state is the
    best-valued one, and the mean value it loses (regret). `policies` map a state to its action
    line (None: no valid action, counted as a miss with the state's worst value lost)."""
    from tqdm.auto import tqdm

    rows = []
    for name, act in policies.items():
        by: dict[tuple[str, str], list[tuple[bool, float, bool]]] = defaultdict(list)
        for p in tqdm(points, desc=f"route {name}", unit="state"):
            values = p["values"]
            best = max(values.values())
            a = act(p)
            chosen = _normalise(a) if a is not None else None
            canon = {_normalise(k): v for k, v in values.items()}
            explored = chosen in canon
            value = canon[chosen] if explored else min(values.values())
            kind = state_kind(point_pattern(p))
            for key in ((p["family"], kind), (p["family"], "all"), ("all", kind), ("all", "all")):
                by[key].append((explored and value >= best - 1e-12, best - value, explored))
        for (family, kind), rs in sorted(by.items(), key=lambda kv: (kv[0][0] == "all", kv[0][0], kv[0][1])):
            rows.append(
                {
                    "policy": name,
                    "family": family,
                    "state": kind,
                    "states": len(rs),
                    "accuracy": f"{100 * np.mean([r[0] for r in rs]):.0f}%",
                    "regret": f"{np.mean([r[1] for r in rs]):.4f}",
                    "unexplored actions": f"{100 * np.mean([not r[2] for r in rs]):.0f}%",
                }
            )
    return rows


def _normalise(action: str) -> str | None:
    """An action line in one canonical spelling (key order, spacing); None if it does not parse."""
    try:
        a = json.loads(action)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(a, dict):
        return None
    return json.dumps({"tool": a.get("tool"), "args": a.get("args", {})}, sort_keys=True)


def router_policy(router: Callable[[ToolVocabulary, list[dict]], dict], tools: ToolVocabulary) -> Callable[[dict], str]:
    """A state -> action function for a trace router (RuleRouter-Fuse, the lookup control)."""

    def act(point: dict) -> str:
        return json.dumps(router(tools, pattern_trace(point_pattern(point))))

    return act


def llm_policy(model, tools: ToolVocabulary, *, interactive: bool = False) -> Callable[[dict], str | None]:
    """A state -> action function for a chat model, constrained as the reranker constrains it."""
    from mma_agent.graphs.policy import Policy, completions

    policy = Policy(model, prefill=True, timeout=None)
    offered = tools.names(interactive=interactive)

    def act(point: dict) -> str | None:
        reply, meta = policy.ask(point["prompt"], completions(tools, offered, pattern_trace(point_pattern(point))))
        action = Policy.action(reply, meta)
        if action.get("tool") is None:
            return None
        return json.dumps({"tool": action["tool"], "args": action.get("args", {})})

    return act
