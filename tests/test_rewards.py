import numpy as np
import pytest

from mma_agent.training.rewards import action_costs, episode_reward, mma_reward

TRACE = [
    {"event": "unknown history ids dropped", "ids": ["x"]},
    {"turn": 1, "action": {"tool": "analyze_text", "args": {}}, "null": False},
    {"turn": 2, "action": {"tool": None, "args": {}}, "invalid": "no_json"},
    {"turn": 3, "action": {"tool": "retrieve_graph", "args": {}}, "null": True},
    {"turn": 4, "action": {"tool": "retrieve_graph", "args": {}}, "invalid": "repeated_null"},
    {"turn": 5, "action": {"tool": "ask_user", "args": {"modality_type": "text", "query": "?"}}, "null": False},
    {"turn": 6, "action": {"tool": "score_candidates", "args": {}}, "observation": "scored"},
]


def test_costs_are_counted_from_the_trace():
    assert action_costs(TRACE) == {"tool_calls": 2, "ask_user": 1, "invalid": 2}


def test_reward_hand_computed():
    # target at rank 3: NDCG@10 = 1/log2(4) = 0.5; costs 2*0.02 + 0.10 + 2*0.20 = 0.54
    out = {"ranking": ["a", "b", "t", "c"], "trace": TRACE}
    assert episode_reward(out, "t") == pytest.approx(0.5 - 0.54)
    # target outside the top 10 and a clean two-tool episode
    clean = {"ranking": [f"x{i}" for i in range(10)] + ["t"], "trace": TRACE[1:2] + TRACE[-1:]}
    assert episode_reward(clean, "t") == pytest.approx(-0.02)
    # target first, no tool: the maximum
    assert episode_reward({"ranking": ["t", "a"], "trace": []}, "t") == pytest.approx(1.0)


def test_trl_style_callable():
    outs = [{"ranking": ["t"], "trace": []}, {"ranking": ["a", "t"], "trace": TRACE[1:2]}]
    r = mma_reward(["c1", "c2"], output=outs, target=["t", "t"], prompts=["p1", "p2"])
    np.testing.assert_allclose(r, [1.0, 1 / np.log2(3) - 0.02])
    with pytest.raises(ValueError, match="one output and target per completion"):
        mma_reward(["c1"], output=outs, target=["t"])
