"""The states the explored plans pass through, each with the value of every next action: the labels
that SFT (the best action per state), DPO (best against worst) and GRPO (informative states) train
on.
"""

from __future__ import annotations

import json

import numpy as np

from mma_agent.graphs.state import SCORE_TOOL
from mma_agent.toolkits import tool_vocabulary
from mma_agent.toolkits.base import ToolVocabulary


def sft_examples(best: list[dict]) -> list[dict]:
    """TRL conversational prompt-completion rows along each episode's best plan: each action
    given the conversation before it. (Hindsight plans: they never show a Null, see
    `decision_points` for rows that do.)"""
    rows = []
    for b in best:
        msgs = b["messages"]
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                rows.append({"prompt": msgs[:i], "completion": [m]})
    return rows


def decision_points(explored: list[dict]) -> list[dict]:
    """Every state the explored plans pass through, with the value of each next action.

    A state is an episode and the actions taken so far (a prefix); its prompt is the conversation
    at that point, tool observations included, so a state after a Null shows the Null. The value
    of an action is the best reward of any plan continuing with it (exhaustive search in the
    real environment), and `continuation` the rest of that plan.

    Why not just the best plan per episode: the availability mask is hidden from the policy, so
    the hindsight-best plan of a text-masked episode never calls the text tool, and no training
    row ever shows what to do after a Null. Rows from every state teach both the common first
    move (the mode over families) and the recovery after a Null.
    """
    points = []
    for e in explored:
        states: dict[tuple, dict] = {}
        for o in e["outcomes"]:
            plan = o["plan"]
            for k, action in enumerate(plan):
                st = states.setdefault(
                    tuple(plan[:k]),
                    {"prompt": o["messages"][: 2 + 2 * k], "pattern": o["pattern"][:k], "values": {}, "continuation": {}},
                )
                if o["reward"] > st["values"].get(action, -float("inf")):
                    st["values"][action] = o["reward"]
                    st["continuation"][action] = plan[k + 1 :]
        for prefix, st in states.items():
            assert st["prompt"][-1]["role"] == "user", "a decision follows an observation"
            points.append({"id": e["id"], "family": e["family"], "prefix": list(prefix), **st})
    return points


def best_action(point: dict) -> str:
    """The highest-value action (ties: the first listed, i.e. scoring before another tool)."""
    return max(point["values"], key=point["values"].get)


def signature(point: dict) -> tuple:
    """What the policy observed at a state, coarsely: each tool called, whether it answered Null,
    and the word of its strength line (weak / moderate / strong)."""
    from mma_agent.toolkits.evidence import strength_word
    from mma_agent.training.routing import point_pattern

    words = [strength_word(m["content"]) for m in point["prompt"][3::2]]  # the observations after each action
    return tuple((t, null, w) for (t, null), w in zip(point_pattern(point), words, strict=True))


def pooled_values(
    points: list[dict], tools: ToolVocabulary | None = None, *, interactive: bool = False, min_states: int = 8
) -> list[dict]:
    """Less noisy action values, and continuations a policy could actually follow.

    Each state's value of an action becomes its mean over the states that share the state's
    signature (`signature`: the pattern and strength words the policy observed) where at least
    `min_states` share it, else over the states sharing the pattern alone. A scoring action is
    worth its plan's Eq. 3 reward. A tool call is worth what the state after it is worth when the
    policy then acts on these pooled values itself: the state's reward under the action with the
    best pooled value there (computed from the deepest states up). Only actions valid at the
    state (what constrained decoding allows) count.

    Why: one target's NDCG is a noisy value (for most pools no plan reaches the target, so every
    action ties up to its cost and the cheapest wins the label); and `decision_points` values a
    tool call by the best plan after it for this very target, a continuation chosen in hindsight,
    which overvalues every action that leaves more choices open (asking, the last step of every
    plan, was never the label, because any tool before it kept the option to ask). Pooling asks
    which action does best on average given what the policy can see; backing up through the
    pooled choices values a call by what a policy that cannot see the target gets after it."""
    from mma_agent.training.routing import point_pattern, valid_actions

    tools = tools or tool_vocabulary()
    worth: dict[tuple, float] = {}  # (episode, prefix) -> the state's reward under the pooled choices
    out: dict[int, dict] = {}
    for depth in sorted({len(p["prefix"]) for p in points}, reverse=True):
        layer = [p for p in points if len(p["prefix"]) == depth]
        own: dict[int, dict[str, float]] = {}
        valid_at: dict[tuple, set[str]] = {}  # the same for every state of a pattern
        for p in layer:
            pattern = point_pattern(p)
            if pattern not in valid_at:
                valid_at[pattern] = valid_actions(p, tools, interactive=interactive)
            valid = valid_at[pattern]
            q = {}
            for action, v in p["values"].items():
                if action not in valid:
                    continue
                if json.loads(action)["tool"] == SCORE_TOOL:
                    q[action] = v
                elif (p["id"], (*p["prefix"], action)) in worth:
                    q[action] = worth[p["id"], (*p["prefix"], action)]
            own[id(p)] = q
        by_sig: dict[tuple, list[dict]] = {}
        by_pattern: dict[tuple, list[dict]] = {}
        for p in layer:
            by_sig.setdefault(signature(p), []).append(p)
            by_pattern.setdefault(point_pattern(p), []).append(p)
        means: dict[int, dict[str, float]] = {}
        for p in layer:
            group = by_sig[signature(p)]
            group = group if len(group) >= min_states else by_pattern[point_pattern(p)]
            if id(group) not in means:
                acts = [a for a in own[id(group[0])] if all(a in own[id(q)] for q in group)]
                means[id(group)] = {a: float(np.mean([own[id(q)][a] for q in group])) for a in acts}
            values = means[id(group)] or own[id(p)] or p["values"]
            choice = max(values, key=values.get)
            worth[p["id"], tuple(p["prefix"])] = own[id(p)].get(choice, max(own[id(p)].values(), default=0.0))
            out[id(p)] = {**p, "values": values, "pooled": len(group)}
    return [out[id(p)] for p in points]


def decision_sft_rows(points: list[dict], *, states: str = "balanced", seed: int = 0, per_depth: int = 120) -> list[dict]:
    """Prompt-completion rows: the best action at explored states (pass `pooled_values(points)`
    for less noisy labels).

    states="balanced" (default): `per_depth` rows for each number of actions taken so far (the
    start, after one tool, after two, ...), drawn round-robin over the signature-and-label classes
    at that depth (what the policy observed, and what it should do), a different state of the
    class each time, seeded: every kind of decision is learned (the start, each recovery after
    a Null, each stop), not just the commonest (15 of an episode's 16 states follow a tool call,
    and most of them three calls deep, where a policy rarely is). states="path": per episode, the
    states along the best-action path from the start, plus the path after each tool that answered
    Null. states="all": every explored state. A first run trained on all states learned to score
    at once: the start state was 6% of the rows and the policy scored before gathering anything.
    """
    from mma_agent.training.routing import point_pattern

    if states not in ("balanced", "path", "all"):
        raise ValueError(f"states={states!r}; choose 'balanced', 'path' or 'all'")
    row = lambda p: {"prompt": p["prompt"], "completion": [{"role": "assistant", "content": best_action(p)}]}  # noqa: E731
    if states == "all":
        return [row(p) for p in points]
    if states == "balanced":
        rng = np.random.default_rng(seed)
        depths: dict[int, dict[tuple, list[dict]]] = {}
        for p in points:
            depths.setdefault(len(p["prefix"]), {}).setdefault((signature(p), best_action(p)), []).append(p)
        rows = []
        for _, classes in sorted(depths.items()):
            queues = [[ps[i] for i in rng.permutation(len(ps))] for ps in classes.values()]
            queues = [queues[i] for i in rng.permutation(len(queues))]
            picked: list[dict] = []
            while len(picked) < per_depth and any(queues):
                for q in queues:
                    if q and len(picked) < per_depth:
                        picked.append(q.pop())
            rows += [row(p) for p in picked]
        return rows
    by_episode: dict[str, dict[tuple, dict]] = {}
    for p in points:
        by_episode.setdefault(p["id"], {})[tuple(p["prefix"])] = p
    rows = []
    for table in by_episode.values():
        starts = [()] + [prefix for prefix, p in table.items() if len(prefix) == 1 and point_pattern(p)[0][1]]
        seen = set()
        for prefix in starts:
            while prefix in table and prefix not in seen:
                seen.add(prefix)
                p = table[prefix]
                rows.append(row(p))
                action = best_action(p)
                if json.loads(action)["tool"] == SCORE_TOOL:
                    break
                prefix = (*prefix, action)
    return rows
