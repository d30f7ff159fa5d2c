"""The lookup control and the per-state routing diagnostic, on handmade explored states."""

import json

import pytest

from mma_agent.toolkits import tool_vocabulary
from mma_agent.training.routing import LookupRouter, point_pattern, router_policy, routing_diagnostic, state_kind, trace_pattern

TEXT = json.dumps({"tool": "analyze_text", "args": {}})
GRAPH = json.dumps({"tool": "retrieve_graph", "args": {}})
EQUAL = json.dumps({"tool": "score_candidates", "args": {"weights": {}}})


def _point(family: str, prefix: list[str], nulls: list[bool], values: dict[str, float]) -> dict:
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "start"}]
    for action, null in zip(prefix, nulls, strict=True):
        prompt += [
            {"role": "assistant", "content": action},
            {"role": "user", "content": "Observation: Null: no text" if null else "Observation: History ..."},
        ]
    pattern = [[json.loads(a)["tool"], null] for a, null in zip(prefix, nulls, strict=True)]
    return {
        "id": f"{family}:{len(prefix)}",
        "family": family,
        "prefix": prefix,
        "prompt": prompt,
        "pattern": pattern,
        "values": values,
        "continuation": {},
    }


def test_patterns_and_state_kinds_read_what_the_policy_saw():
    p = _point("text-only", [GRAPH, TEXT], [True, False], {EQUAL: 0.1})
    assert (
        point_pattern(p) == (("retrieve_graph", True), ("analyze_text", False))
        and state_kind(point_pattern(p)) == "after evidence"
    )
    trace = [
        {"turn": 1, "action": {"tool": "retrieve_graph", "args": {}}, "null": True, "observation": "Null"},
        {"turn": 2, "action": {"tool": None}, "invalid": "json"},
    ]
    assert (
        trace_pattern(trace) == (("retrieve_graph", True),)
        and state_kind(()) == "start"
        and state_kind((("a", True),)) == "after a Null"
    )


def test_the_lookup_picks_the_best_mean_action_per_pattern_and_falls_back_to_the_rule(tmp_path):
    points = [
        _point("text-only", [], [], {TEXT: 0.30, GRAPH: 0.10}),
        _point("behaviour-only", [], [], {TEXT: 0.05, GRAPH: 0.20}),
        _point("text-only", [GRAPH], [True], {TEXT: 0.30, EQUAL: 0.0}),
        _point("behaviour-only", [GRAPH], [False], {TEXT: 0.10, EQUAL: 0.22}),
    ]
    lookup = LookupRouter.fit(points)
    assert lookup.table[()] == TEXT  # mean .175 against .15
    assert lookup.table[(("retrieve_graph", True),)] == TEXT and lookup.table[(("retrieve_graph", False),)] == EQUAL
    tools = tool_vocabulary()
    trace = [{"action": {"tool": "retrieve_graph", "args": {}}, "null": False}]
    assert lookup(tools, trace) == json.loads(EQUAL)
    unseen = [{"action": {"tool": "analyze_image", "args": {}}, "null": False}]
    assert lookup(tools, unseen) == {"tool": "analyze_text", "args": {}}  # RuleRouter-Fuse's next tool
    lookup.save(tmp_path / "t.json")
    assert LookupRouter.load(tmp_path / "t.json").table == lookup.table

    rows = {
        (r["policy"], r["family"], r["state"]): r
        for r in routing_diagnostic(
            points, {"lookup": router_policy(lookup, tools), "always text": lambda p: TEXT, "broken": lambda p: None}
        )
    }
    assert rows["lookup", "all", "all"]["accuracy"] == "75%"  # the start state of behaviour-only is the one it gets wrong
    assert rows["lookup", "behaviour-only", "start"]["regret"] == "0.1500"
    assert rows["always text", "behaviour-only", "after evidence"]["regret"] == "0.1200"
    assert rows["broken", "all", "all"]["accuracy"] == "0%" and rows["broken", "all", "all"]["unexplored actions"] == "100%"
    spaced = routing_diagnostic(
        points[:1], {"spaced": lambda p: '{"args": {},   "tool": "analyze_text"}'}
    )  # spelling does not matter
    assert spaced[-1]["accuracy"] == "100%"


def test_state_samples_keep_every_kind():
    from mma_agent.training.routing import sample_states

    points = (
        [_point("full", [], [], {EQUAL: 0.0})] * 3
        + [_point("full", [GRAPH], [True], {EQUAL: 0.0})] * 6
        + [_point("full", [GRAPH], [False], {EQUAL: 0.0})] * 90
    )
    picked = sample_states(points, 30, seed=1)
    kinds = [state_kind(point_pattern(p)) for p in picked]
    assert len(picked) == 30 and kinds.count("start") == 3 and kinds.count("after a Null") == 3
    assert sample_states(points, 0) is points and sample_states(points, 500) is points


IMAGE = json.dumps({"tool": "analyze_image", "args": {}})
TEXT_ONLY = json.dumps({"tool": "score_candidates", "args": {"weights": {"text": 1}}})


def _observed(point: dict, words: list[str]) -> dict:
    """The point with a strength line in each evidence observation."""
    prompt = [dict(m) for m in point["prompt"]]
    for m, w in zip(prompt[3::2], words, strict=True):
        if w:
            m["content"] = f"Strength: {w} (top 10 z=1.0). (turn 1/8)"
    return {**point, "prompt": prompt}


def test_pooled_values_average_what_the_policy_observed_and_back_up_its_own_choices():
    from mma_agent.training.decisions import pooled_values, signature

    def episode(i, word, text_only, equal):  # a start state and the state after a text call that answered
        root = {**_point("full", [], [], {TEXT: 9.9, GRAPH: 0.3}), "id": f"e{i}"}  # hindsight values of tool calls are not used
        after = {**_observed(_point("full", [TEXT], [False], {TEXT_ONLY: text_only, EQUAL: equal}), [word]), "id": f"e{i}"}
        return [root, after]

    pts = [
        *episode(0, "strong", 0.5, 0.1),
        *episode(1, "strong", 0.0, 0.1),
        *episode(2, "strong", 0.4, 0.1),
        *episode(3, "weak", 0.0, 0.2),
        *episode(4, "weak", 0.1, 0.2),
    ]
    null = {**_point("image-only", [TEXT], [True], {EQUAL: -0.02, IMAGE: 0.5}), "id": "e5"}
    null_next = {**_point("image-only", [TEXT, IMAGE], [True, False], {EQUAL: 0.3, TEXT_ONLY: 0.9}), "id": "e5"}
    assert signature(pts[1]) == (("analyze_text", False, "strong"),) and signature(null) == (("analyze_text", True, None),)
    pooled = pooled_values([*pts, null, null_next], min_states=3)
    assert (
        pooled[1]["values"] == pytest.approx({TEXT_ONLY: 0.3, EQUAL: 0.1}) and pooled[1]["pooled"] == 3
    )  # its signature: 3 states
    assert (
        pooled[7]["values"] == pytest.approx({TEXT_ONLY: 0.2, EQUAL: 0.14}) and pooled[7]["pooled"] == 5
    )  # too few weak ones: the pattern
    # the start: a text call is worth what each episode gets after it when the policy then scores on text alone, as pooled
    assert pooled[0]["values"] == pytest.approx({TEXT: (0.5 + 0.0 + 0.4 + 0.0 + 0.1) / 5}) and pooled[0]["pooled"] == 5
    # after a Null: scoring on nothing is not an action while a tool is untried; the image call is worth its state's valid score
    assert pooled[10]["values"] == pytest.approx({IMAGE: 0.3}) and pooled[11]["values"] == pytest.approx({EQUAL: 0.3})


def test_balanced_rows_draw_every_depth_and_every_class():
    from mma_agent.training.decisions import decision_sft_rows

    start = [_point("full", [], [], {TEXT: 0.2, GRAPH: 0.1})] * 50
    deep = [_point("full", [TEXT], [False], {TEXT_ONLY: 0.3, GRAPH: 0.1})] * 40 + [
        _point("full", [TEXT], [True], {GRAPH: 0.1, IMAGE: 0.0})
    ] * 2
    rows = decision_sft_rows(start + deep, per_depth=10, seed=3)
    answers = [r["completion"][0]["content"] for r in rows]
    assert len(rows) == 20 and answers.count(TEXT) == 10  # ten of the start, ten one call deep
    assert answers.count(GRAPH) == 2 and answers.count(TEXT_ONLY) == 8  # the rare recovery class gets all its states
    with pytest.raises(ValueError, match="states='most'"):
        decision_sft_rows(start, states="most")


def test_interactive_plans_ask_once_then_score_over_the_answer():
    from mma_agent.training.explore import action_plans

    tools = tool_vocabulary()
    auto, inter = action_plans(tools), action_plans(tools, interactive=True)
    assert len(auto) == 96 and len(inter) == 96 + 3 * (2 + 3 * 5 + 6 * 10 + 6 * 17)
    asks = [p for p in inter if any(json.loads(a)["tool"] == "ask_user" for a in p)]
    assert all(json.loads(p[-2])["tool"] == "ask_user" for p in asks) and [json.loads(a)["tool"] for a in asks[0]] == [
        "ask_user",
        "score_candidates",
    ]
    assert {json.loads(p[0])["args"].get("modality_type") for p in asks if len(p) == 2} == {"text", "image", "behaviour"}


def test_pool_features_are_finite_for_a_pool_of_ten_or_fewer():
    import warnings

    import numpy as np

    from mma_agent.evals.routing import FEATURES, pool_features

    ep = {"first_stage_scores": [3.0, 2.0, 1.0], "hist_idx": [0, 1], "cand_idx": [0, 1, 2]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = pool_features(ep, np.log1p(np.array([5.0, 1.0, 0.0])))
    assert len(x) == len(FEATURES) and np.isfinite(x).all() and x[2] == 0.0
