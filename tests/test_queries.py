"""Query episodes from data: facet queries that describe a kind of item and never the target, the
users' own tags, and what a data set without a field skips."""

import dataclasses

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mma_agent.config import PipelineConfig
    from mma_agent.evals.runner import build_episodes
    from mma_agent.pipeline import Pipeline
    from tests.conftest import write_tiny_dataset

    root = write_tiny_dataset(tmp_path_factory.mktemp("d") / "tiny", n_users=21)
    cfg = {
        "data": {"path": str(root)},
        "workdir": str(tmp_path_factory.mktemp("w")),
        "pools": {"size": 10, "first_stage": {"full": "behaviour"}},
        "retrievers": {"epochs": 2, "eval_every": 1, "dim": 8},
        "image": {"clip": {"embed_dim": 16, "image_size": 64, "context_length": 32, "epochs": 2, "batch_size": 16}},
    }
    p = Pipeline(PipelineConfig.model_validate(cfg))
    return p, build_episodes(p, "test", families=["full"])


def test_facet_queries_never_give_the_target_away_and_fit_enough_items(tiny):
    from mma_agent.training.queries import facet_queries, leaks

    p, episodes = tiny
    made = facet_queries(p, episodes, seed=0, min_items=3)
    assert made.episodes and all(e["query_fits"] >= 3 for e in made.episodes)
    assert [e for e in made.episodes if leaks(p, e)] == []
    assert all(
        e["query_source"] in e["relevant"] for e in made.episodes
    )  # relevance stays protocol v2's: the user's held-out items
    again = facet_queries(p, episodes, seed=0, min_items=3)
    assert [e["query"] for e in again.episodes] == [e["query"] for e in made.episodes]  # seeded


def test_the_leak_check_can_fail(tiny):
    from mma_agent.training.queries import display_title, leaks

    p, episodes = tiny
    item = episodes[0]["relevant"][0]
    title = p.dataset.items.set_index("item_id").loc[item, "title"]
    assert leaks(p, {"query": f"something like {display_title(title)}", "query_source": item})
    assert leaks(p, {"query": f"item {item} please", "query_source": item})


def test_real_tags_are_the_users_own_words_and_a_data_set_without_tags_skips_them(tiny):
    from mma_agent.training.queries import real_tag_queries

    p, episodes = tiny
    made = real_tag_queries(p, episodes)
    tags = p.dataset.tags
    for e in made.episodes:
        mine = tags[(tags.user_id == e["user_id"]) & (tags.item_id == e["query_source"])]["tag"]
        assert e["query"] == ", ".join(dict.fromkeys(mine)) and e["query_source"] in e["relevant"]
    bare = dataclasses.replace(p.dataset, tags=p.dataset.tags.iloc[0:0])
    p.__dict__["dataset"] = bare
    try:
        none = real_tag_queries(p, episodes)
    finally:
        p.__dict__.pop("dataset")
    assert none.episodes == [] and "no user tags" in none.skipped["real tags"]


def test_the_llm_subset_report_pairs_mma_auto_with_the_rows_on_the_same_episodes(tiny, tmp_path):
    """Wiring only (a scripted policy that reads the request, then scores): the real model's row is
    `mma eval queries --llm`, in evals/results/query/llm-subset.md."""
    import json

    from mma_agent.evals.query_eval import llm_subset_report
    from mma_agent.evals.runner import build_episodes
    from mma_agent.llm.scripted import ScriptedChatModel
    from mma_agent.training.queries import facet_queries

    p, _ = tiny
    sets = {
        f"{s}-facet-seed0-n3": facet_queries(p, build_episodes(p, s, families=["full"]), min_items=3).episodes
        for s in ("valid", "test")
    }
    plan = [json.dumps({"tool": "match_text", "args": {}}), json.dumps({"tool": "score_candidates", "args": {"weights": {}}})]
    tables = llm_subset_report(p, sets, ScriptedChatModel(responses=plan), tmp_path, per_family=3, min_items=3)
    rows, tests, usage = tables.values()
    assert [r["row"] for r in rows][-1].startswith("MMA-Auto") and all(t["episodes"] == 3 for t in tests)
    assert rows[0]["row"].startswith("Ceiling: Recall@100")
    assert usage[0]["share of episodes calling one"] == "100%" and (tmp_path / "llm-subset.md").is_file()
