"""One tool vocabulary: a toolkit declares its tools once, and everything else is derived.

A toy toolkit defined here, and passed to the factory like any other, is offered in the prompt
and the native schemas, completed by constrained decoding, weighed by score_candidates, called by
the rule router, costed by the reward and explored by training's plan space, with no other file
touched.
"""

import json
from typing import ClassVar

import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from pydantic import BaseModel

from mma_agent.graphs.policy import completions, tool_schemas  # noqa: E402
from mma_agent.graphs.reranker import create_mma_reranker  # noqa: E402
from mma_agent.toolkits import tool_vocabulary  # noqa: E402
from mma_agent.toolkits.base import EpisodeContext, Evidence, Toolkit, ToolSpec, ToolVocabulary  # noqa: E402
from mma_agent.training.explore import action_plans  # noqa: E402
from mma_agent.training.rewards import action_costs, episode_reward  # noqa: E402


class CountArgs(BaseModel):
    pass


class ToyToolkit(Toolkit):
    """Evidence from the number in each item id (m39 is the strongest)."""

    name = "toy"
    modality = None
    TOOLS: ClassVar = (
        ToolSpec(
            name="count_items",
            args=CountArgs,
            description="Toy evidence: the number in each candidate's id.",
            prompt="count_items {}: toy evidence, the number in each id.",
            group="toy",
            channels=("number",),
            cost=0.05,
        ),
    )

    def __init__(self, channel: str = "number") -> None:
        super().__init__()
        self.channel = channel

    def count_items(self, ctx: EpisodeContext) -> Evidence:
        spec = self.spec("count_items")
        number = np.array([float(ctx.item_id(int(i))[1:]) for i in ctx.candidates])
        return Evidence(spec.name, "Counted.", {f"{spec.group}_{self.channel}": number})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from mma_agent.data.dataset import load_dataset
    from mma_agent.data.splits import split_dataset
    from tests.conftest import fake_toolkits, write_tiny_dataset

    split = split_dataset(load_dataset(write_tiny_dataset(tmp_path_factory.mktemp("d") / "tiny")))
    catalogue, kits = fake_toolkits(split, tmp_path_factory.mktemp("cache"))
    return catalogue, {**kits, "toy": ToyToolkit()}


def _request():
    cands = [f"m{i}" for i in range(0, 40, 3)]
    return {"user_id": "u0", "candidates": cands, "first_stage_scores": [float(-i) for i in range(len(cands))]}


def test_builtin_vocabulary_is_what_the_reranker_always_offered():
    """Without request words, the vocabulary a reranker offers is exactly the one it offered before
    it read requests; the request tools count only for a request that has words."""
    tools = tool_vocabulary()
    assert [s.name for s in tools.specs] == [
        "analyze_text", "match_text", "analyze_image", "match_poster", "retrieve_graph", "follow_titles", "ask_user"
    ]  # fmt: skip
    assert tools.names(interactive=False) == ["analyze_text", "analyze_image", "retrieve_graph"]
    asked = tools.for_request("something dark")
    assert asked.names(interactive=False) == [
        "analyze_text",
        "match_text",
        "analyze_image",
        "match_poster",
        "retrieve_graph",
        "follow_titles",
    ]
    assert list(asked.groups) == ["text", "text_request", "image", "image_request", "graph", "graph_request", "ask"]
    assert tools.for_request(None) == tools and tools.for_request("   ") == tools
    assert tools.groups == {
        "text": ("text_learned", "text_max", "text_mean"),
        "image": ("image_learned", "image_max", "image_mean"),
        "graph": ("graph_learned", "graph_ppr", "graph_co"),
        "ask": ("ask_behaviour", "ask_text", "ask_image"),
    }
    assert [tools.owner(s.name) for s in tools.specs] == ["text", "text", "image", "image", "graph", "graph", "clarify"]
    assert [s.cost for s in tools.specs] == [0.02] * 6 + [0.10]
    assert len(action_plans()) == 96


def test_the_weight_menu_is_derived_from_the_groups_and_offered_only_over_gathered_evidence():
    tools = tool_vocabulary()
    menu = tools.weight_menu()
    assert menu[:5] == [{}, {"text": 1}, {"image": 1}, {"graph": 1}, {"ask": 1}]
    assert {"text": 0.75, "graph": 0.25} in menu and {"text": 0.25, "graph": 0.75} in menu and len(menu) == 1 + 4 + 6 * 2
    assert tools.weight_menu(["graph", "text", "nonsense"]) == [
        {},
        {"text": 1},
        {"graph": 1},
        {"text": 0.75, "graph": 0.25},
        {"text": 0.25, "graph": 0.75},
    ]
    offered = tools.names(interactive=False)
    assert not [
        c for c in completions(tools, offered, []) if c.startswith("score_candidates")
    ]  # nothing gathered, tools untried: no scoring
    nulls = [{"action": {"tool": s.name, "args": {}}, "null": True} for s in tools.automated]
    assert not [c for c in completions(tools, offered, nulls[:2]) if c.startswith("score_candidates")]  # a tool is still untried
    assert completions(tools, offered, nulls) == [
        'score_candidates", "args": {"weights": {}}}'
    ]  # every tool answered Null: the fallback
    assert completions(tools, offered, [], last_turn=True) == [
        'score_candidates", "args": {"weights": {}}}'
    ]  # the last turn always scores
    trace = [
        {"action": {"tool": "analyze_text", "args": {}}, "null": False},
        {"action": {"tool": "analyze_image", "args": {}}, "null": True},
        {"action": {"tool": "retrieve_graph", "args": {}}, "null": False},
    ]
    scoring = [c for c in completions(tools, tools.names(interactive=False), trace, last_turn=True)]
    assert 'score_candidates", "args": {"weights": {"text": 0.25, "graph": 0.75}}}' in scoring and len(scoring) == 5
    assert not any('"image"' in c for c in scoring)  # a Null answer gathered nothing to weigh


def test_a_toy_toolkit_is_offered_everywhere(env):
    catalogue, kits = env
    tools = tool_vocabulary(kits)
    assert tools.names(interactive=False)[-1] == "count_items" and tools.owner("count_items") == "toy"
    assert [f["function"]["name"] for f in tool_schemas(tools, tools.names(interactive=False), "weights")][-2:] == [
        "count_items",
        "score_candidates",
    ]
    assert 'count_items", "args": {}}' in completions(tools, tools.names(interactive=False), [])
    after = completions(tools, tools.names(interactive=False), [{"action": {"tool": "count_items", "args": {}}, "null": False}])
    assert 'score_candidates", "args": {"weights": {"toy": 1}}}' in after and 'count_items", "args": {}}' not in after
    # every ordering of r of the 4 tools, each scored with the menu over its r groups: 1 + r + r (r - 1) entries
    assert len(action_plans(tools)) == 4 * 2 + 12 * 5 + 24 * 10 + 24 * 17

    plan = [
        json.dumps({"tool": "count_items", "args": {}}),
        json.dumps({"tool": "score_candidates", "args": {"weights": {"toy": 1}}}),
    ]
    out = (
        create_mma_reranker(
            FakeListChatModel(responses=plan), catalogue=catalogue, toolkits=kits, alpha=0.0, backend={"prefill": False}
        )
        .compile()
        .invoke(_request())
    )
    assert "- count_items: toy evidence" in out["messages"][0]["content"]  # the compact prompt: its brief line
    full = (
        create_mma_reranker(
            FakeListChatModel(responses=plan), catalogue=catalogue, toolkits=kits, backend={"prefill": False}, prompt="full"
        )
        .compile()
        .invoke(_request())
    )
    assert (
        "- count_items {}: toy evidence, the number in each id." in full["messages"][0]["content"]
    )  # the full prompt: its prompt line
    assert '"toy": w' in out["messages"][0]["content"]  # score_candidates names its group
    assert not out["fallback"] and out["ranking"] == sorted(_request()["candidates"], key=lambda c: -int(c[1:]))
    assert episode_reward(out, "m39", tools=tools) == pytest.approx(1.0 - 0.05)
    assert action_costs(out["trace"], tools) == {"tool_calls": 1, "ask_user": 0, "invalid": 0}

    rule = create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule").compile().invoke(_request())
    assert [t["action"]["tool"] for t in rule["trace"]] == [
        "analyze_text",
        "analyze_image",
        "retrieve_graph",
        "count_items",
        "score_candidates",
    ]


def test_undeclared_channels_and_names_are_refused(env):
    catalogue, kits = env
    from mma_agent.modalities import Mask

    rogue = ToyToolkit(channel="secret")
    ctx = EpisodeContext(catalogue.view(Mask()), np.array([0]), np.array([1, 2, 3]))
    ev = rogue.call("count_items", ctx)
    assert ev.null and "toy_secret" in ev.observation and rogue.errors["undeclared_channel"] == 1
    with pytest.raises(ValueError, match="declared by more than one toolkit"):
        ToolVocabulary.of([("a", ToyToolkit), ("b", ToyToolkit)])
    with pytest.raises(ValueError, match="declares channels"):
        ToyToolkit.spec("count_items").channel("secret")


def test_the_last_turn_allows_only_scoring():
    tools = tool_vocabulary()
    every = completions(tools, tools.names(interactive=True), [])
    last = completions(tools, tools.names(interactive=True), [], last_turn=True)
    assert len(every) == 3 + 3 and last == [
        'score_candidates", "args": {"weights": {}}}'
    ]  # nothing gathered yet: scoring only on the last turn


def test_a_router_replaces_the_rule_without_an_llm(env):
    catalogue, kits = env
    calls = []

    def graph_then_score(tools, trace):
        calls.append(len(trace))
        return (
            {"tool": "retrieve_graph", "args": {}}
            if not trace
            else {"tool": "score_candidates", "args": {"weights": {"graph": 1}}}
        )

    out = (
        create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule", router=graph_then_score)
        .compile()
        .invoke(_request())
    )
    assert (
        [t["action"]["tool"] for t in out["trace"]] == ["retrieve_graph", "score_candidates"]
        and calls == [0, 1]
        and not out["fallback"]
    )
