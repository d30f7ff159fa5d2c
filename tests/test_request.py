"""The request boundary: every malformed request is a first-stage fallback naming the field, in
exactly the first-stage order of the valid part of the pool; never an exception into the app.
A seeded property test (hypothesis) throws generated requests at the compiled graph."""

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mma_agent.graphs.guard import guard_input  # noqa: E402
from mma_agent.graphs.request import parse_request, valid_pairs  # noqa: E402
from mma_agent.graphs.reranker import create_mma_reranker  # noqa: E402
from mma_agent.util import minmax  # noqa: E402

KNOWN = [f"m{i}" for i in range(40)]


@pytest.fixture(scope="module")
def tiny_kits(tmp_path_factory):
    from mma_agent.data.dataset import load_dataset
    from mma_agent.data.splits import split_dataset
    from tests.conftest import fake_toolkits, write_tiny_dataset

    split = split_dataset(load_dataset(write_tiny_dataset(tmp_path_factory.mktemp("d") / "tiny")))
    return fake_toolkits(split, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def rule(tiny_kits):
    catalogue, kits = tiny_kits
    return create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule").compile()


def _req(**kw):
    return {"user_id": "u0", "candidates": ["m0", "m3", "m6"], "first_stage_scores": [0.1, 0.3, 0.2], **kw}


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"candidates": "m0m3m6"}, "candidates: must be a list, got str"),
        ({"candidates": [{"id": "m0"}, "m3", "m6"]}, "candidates: position 0 is {'id': 'm0'}"),
        ({"first_stage_scores": [10**400, 0.3, 0.2]}, "first_stage_scores: position 0 is 1000"),
        ({"first_stage_scores": [True, 0.3, 0.2]}, "first_stage_scores: position 0 is True"),
        ({"max_turns": "abc"}, "max_turns: 'abc' is not a turn budget"),
        ({"max_turns": 0}, "max_turns: 0 is not a turn budget"),
        ({"max_turns": float("nan")}, "max_turns: nan"),
        ({"mask": {"text": "no"}}, "mask: {'text': 'no'} must map"),
        ({"history": None, "user_id": 7}, "user_id: unknown user '7'"),
        ({"history": 5}, "history: must be a list, got int"),
        ({"target": ["318"]}, "target: ['318'] is not an id"),
        ({"candidates": None}, "candidates: must be a list, got NoneType"),
    ],
)
def test_malformed_fields_are_named(rule, patch, needle):
    out = rule.invoke(_req(**patch))
    assert out["fallback"] and needle in out["reason"], out["reason"]


def test_fallback_ranks_the_valid_part_in_first_stage_order(rule):
    out = rule.invoke(_req(candidates=["m0", {"x": 1}, "m6", "m0"], first_stage_scores=[0.1, 0.9, 0.2, 0.5]))
    assert out["fallback"] and out["ranking"] == ["m6", "m0"] and out["scores"] == [0.2, 0.1]
    assert valid_pairs("m0m3", [1, 2]) == ([], [])


def test_numpy_and_integer_inputs_are_accepted(rule):
    out = rule.invoke(
        _req(candidates=np.array(["m0", "m3", "m6"]), first_stage_scores=np.array([0.1, 0.3, 0.2], dtype=np.float32))
    )
    assert not out["fallback"] and sorted(out["ranking"]) == ["m0", "m3", "m6"]
    req, problem = parse_request(_req(user_id=np.int64(3), max_turns=np.int32(4), mask={"text": np.bool_(False)}))
    assert problem is None and req.user_id == "3" and req.max_turns == 4 and req.mask == {"text": False}


def test_extreme_scores_keep_their_order(rule):
    out = rule.invoke(_req(first_stage_scores=[1.7e308, -1.7e308, 1e308]))
    assert not out["fallback"] and np.isfinite(out["scores"]).all()
    assert np.array_equal(minmax(np.array([1.7e308, -1.7e308, 0.0])), [1.0, 0.0, 0.5])


def test_a_duplicate_at_the_end_of_a_large_pool_is_found_in_linear_time():
    cands = [f"x{i}" for i in range(9_999)] + ["x0"]
    _, problem = parse_request({"candidates": cands, "first_stage_scores": [0.0] * len(cands)})
    assert problem == "candidates: duplicate item id 'x0'; each candidate must appear once"


ids = st.one_of(
    st.sampled_from(KNOWN),
    st.text(max_size=3),
    st.integers(-5, 50),
    st.none(),
    st.booleans(),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
scores = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**400), 10**400),
    st.none(),
    st.text(max_size=2),
    st.booleans(),
)
pools = st.one_of(
    st.lists(ids, max_size=12),
    st.lists(st.sampled_from(KNOWN), min_size=1, max_size=12, unique=True),
    st.text(max_size=4),
    st.none(),
    st.integers(),
)
requests = st.fixed_dictionaries(
    {"candidates": pools},
    optional={
        "first_stage_scores": st.one_of(
            st.lists(scores, max_size=12), st.lists(st.floats(-1e6, 1e6), min_size=12, max_size=12), st.none(), st.floats()
        ),
        "user_id": st.one_of(
            st.sampled_from(["u0", "u1", "nobody"]), st.integers(), st.none(), st.lists(st.text(max_size=2), max_size=2)
        ),
        "history": st.one_of(st.lists(ids, max_size=5), st.none(), st.integers(), st.text(max_size=3)),
        "max_turns": st.one_of(st.integers(-3, 40), st.floats(), st.text(max_size=2), st.none()),
        "mask": st.one_of(
            st.none(),
            st.dictionaries(
                st.sampled_from(["text", "image", "behaviour", "txt"]), st.one_of(st.booleans(), st.text(max_size=2)), max_size=3
            ),
        ),
        "target": st.one_of(st.sampled_from(KNOWN), st.none(), st.integers(), st.lists(st.text(max_size=2), max_size=2)),
    },
)


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests)
def test_no_request_raises_and_every_fallback_is_the_first_stage_order(rule, request):
    out = rule.invoke(request)
    ranking = out["ranking"]
    assert isinstance(ranking, list) and all(isinstance(r, str) for r in ranking) and len(set(ranking)) == len(ranking)
    if out["fallback"]:
        assert out["reason"]
        assert (ranking, out["scores"]) == valid_pairs(request.get("candidates"), request.get("first_stage_scores"))
    else:
        assert sorted(ranking) == sorted(request["candidates"]) and all(math.isfinite(s) for s in out["scores"])


@pytest.mark.parametrize("request_", [[], ["u0"], "u0", 7, 3.5, b"x", ("m0",), {"m0", "m3"}, np.arange(3)])
def test_a_guarded_request_that_is_not_a_mapping_falls_back_with_its_reason(rule, request_):
    import asyncio

    guarded = guard_input(rule)
    for out in (guarded.invoke(request_), asyncio.run(guarded.ainvoke(request_)), guarded.batch([request_])[0]):
        assert out["fallback"] and out["ranking"] == [] and "expected a mapping of the RerankInput fields" in out["reason"]
        assert type(request_).__name__ in out["reason"]
    chunks = list(guarded.stream(request_, stream_mode="values"))
    assert chunks[-1]["fallback"] and "expected a mapping" in chunks[-1]["reason"]


def test_the_factory_is_plain_langgraph(rule):
    """No class swapping: `.compile()` is LangGraph's own, and LangGraph's own error answers a
    non-mapping input on the plain graph (the guard is the one documented wrapper)."""
    from langgraph.errors import InvalidUpdateError
    from langgraph.graph.state import CompiledStateGraph

    assert type(rule) is CompiledStateGraph
    with pytest.raises(InvalidUpdateError):
        rule.invoke(["m0"])


def test_none_on_a_thread_with_nothing_to_resume_falls_back(tiny_kits):
    """The reproduction: None on a new thread raised EmptyInputError, through invoke and abatch."""
    import asyncio

    from langgraph.checkpoint.memory import InMemorySaver

    catalogue, kits = tiny_kits
    graph = create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule")
    saved = guard_input(graph.compile(checkpointer=InMemorySaver()))
    new = {"configurable": {"thread_id": "new"}}
    out = saved.invoke(None, new)
    assert out["fallback"] and "thread 'new' has nothing to resume" in out["reason"]
    outs = asyncio.run(saved.abatch([None, None], [new, {"configurable": {"thread_id": "other"}}]))
    assert all(o["fallback"] and "nothing to resume" in o["reason"] for o in outs)
    assert "no checkpointer" in guard_input(graph.compile()).invoke(None)["reason"]
    done = saved.invoke(_req(), {"configurable": {"thread_id": "done"}})  # a finished thread has nothing to resume either
    assert not done["fallback"]
    assert "nothing to resume" in saved.invoke(None, {"configurable": {"thread_id": "done"}})["reason"]


def test_catalogue_indices_given_rank_as_the_ids_do(rule, tiny_kits):
    """Evaluation hands in the indices it holds; the ranking is the one the ids give."""
    by_ids = rule.invoke(_req())
    index = tiny_kits[0].split.item_index
    given = rule.invoke(_req(catalogue_indices={"candidates": np.array([index["m0"], index["m3"], index["m6"]])}))
    assert given["ranking"] == by_ids["ranking"] and given["mma_scores"] == by_ids["mma_scores"]
    for bad, needle in [
        ({"candidates": np.array([0, 3])}, "one per candidate"),
        ({"candidates": np.array([0, 3, 10_000])}, "outside the catalogue"),
        ({"candidates": np.array([0.5, 1.0, 2.0])}, "integer array"),
        ({"history": np.array([1])}, "catalogue_indices.candidates: missing"),
        ([0, 3, 6], "expected a mapping"),
    ]:
        out = rule.invoke(_req(catalogue_indices=bad))
        assert out["fallback"] and needle in out["reason"] and out["ranking"] == ["m3", "m6", "m0"]
