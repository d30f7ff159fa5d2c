"""The evaluation graph, its results store, resume after a kill, and the report."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mma_agent.evals.baselines import scores_from_output  # noqa: E402
from mma_agent.evals.environment import EvalEnv, Method  # noqa: E402
from mma_agent.evals.methods import FIRST_STAGE, PROBES, build_methods  # noqa: E402
from mma_agent.evals.report import build_report
from mma_agent.evals.results import cliffs_delta, wilcoxon_p  # noqa: E402
from mma_agent.evals.runner import ALPHAS, build_episodes, fused_metrics, run_eval  # noqa: E402
from mma_agent.evals.store import ResultStore, RunMismatchError  # noqa: E402
from mma_agent.modalities import OOMA_FAMILIES  # noqa: E402

CHEAP = [
    "first-stage",
    "popularity",
    "lightgcn",
    "text-sim",
    "graph-sim",
    "completion-zero",
    "completion-fp",
    "margo",
    "magnet",
    "rule",
    *PROBES,
]


def _setup(root, work):
    from mma_agent.config import PipelineConfig
    from mma_agent.pipeline import Pipeline
    from tests.conftest import fake_toolkits

    cfg = PipelineConfig.model_validate(
        {
            "data": {"path": str(root)},
            "workdir": str(work),
            "pools": {"size": 10},
            "retrievers": {"epochs": 4, "eval_every": 2, "dim": 8},
            "image": {"kind": "thumbnail", "width": 4, "height": 4},
        }
    )
    p = Pipeline(cfg)
    catalogue, kits = fake_toolkits(p.split, work / "cache")
    return p, EvalEnv(p, catalogue, kits)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conftest import write_tiny_dataset

    root = write_tiny_dataset(tmp_path_factory.mktemp("d") / "tiny", n_users=21)
    work = tmp_path_factory.mktemp("w")
    return root, work, *_setup(root, work)


class Crashy(Method):
    """Raises on some families' pools: the run must record it and go on."""

    name, group = "Crashy", "test"

    def score(self, ep):
        if len(ep["family"]) % 2:
            raise RuntimeError("boom")
        return np.arange(len(ep["candidates"]), dtype=float), {}


class SubsetOnly(Method):
    """Flagged as an LLM method (so it runs on the seeded subset); scores the pool in reverse."""

    uses_llm, group = True, "LLM"

    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, ep):
        return -np.arange(len(ep["candidates"]), dtype=float), {}


def test_an_llm_method_extends_from_the_seeded_subset_to_every_pool(tiny, tmp_path):
    _, _, p, env = tiny
    store = tmp_path / "s.sqlite"
    cheap = build_methods(["first-stage", "rule", "random-probe", "oracle"], zero_shot="unused", trained={})
    a, b = SubsetOnly("LLM A"), SubsetOnly("LLM B")
    run_eval(p, store, [*cheap, a, b], llm_limit={"*": 1, "full": 2}, env=env)
    every = build_episodes(p, "valid") + build_episodes(p, "test")
    count = lambda m, f=None: sum(r["method"] == m and f in (None, r["family"]) for r in ResultStore(store).rows())  # noqa: E731
    small = count("LLM A")
    assert 0 < small == count("LLM B") < len(every) == count("RuleRouter-Fuse")
    assert count("LLM A", "full") == 4 and count("LLM A", "text-only") == 2  # per-family limits, on valid and test
    text, main = build_report(store, tmp_path / "r1")
    assert [r["method"] for r in main] == ["Ceiling: Recall@100 of the pools", *(m.name for m in cheap)]
    assert (
        "LLM A on 1 text-only, 1 image-only, 1 behaviour-only, 2 full" in text and "seeded subset that the MMA rows ran" in text
    )
    # the same method with every pool: its subset rows are kept, the rest added, nothing twice
    summary = run_eval(p, store, [a], llm_limit=None, env=env)
    assert summary["LLM A"] == {**summary["LLM A"], "new": len(every) - small, "resumed": small}
    assert count("LLM A") == len(every) and set(ResultStore(store).meta()["llm_limit"]["LLM A"].values()) == {None}
    run_eval(p, store, [a], llm_limit=1, env=env)  # a smaller limit later does not shrink the record
    assert set(ResultStore(store).meta()["llm_limit"]["LLM A"].values()) == {None}
    text, main = build_report(store, tmp_path / "r2")
    assert [r["method"] for r in main] == [
        "Ceiling: Recall@100 of the pools",
        FIRST_STAGE,
        "RuleRouter-Fuse",
        "LLM A",
        "Probe: random order",
        "Ceiling: oracle reranker (reads the answers)",
    ]
    assert "and so did LLM A" in text and "LLM B on 1 text-only" in text
    summary = run_eval(p, store, [cheap[0], b], llm_limit={"*": 1, "full": 2}, env=env, fresh={"LLM B"})  # redo B only
    assert summary["LLM B"]["new"] == small and summary["LLM B"]["resumed"] == 0 and summary[cheap[0].name]["new"] == 0
    # a run on fewer splits and families joins the store; rebuilt pools do not
    meta = ResultStore(store).meta()
    run_eval(p, store, [SubsetOnly("LLM C")], llm_limit=None, splits=("test",), families=("text-only",), env=env)
    assert count("LLM C") == len([e for e in build_episodes(p, "test") if e["family"] == "text-only"])
    assert {k: ResultStore(store).meta()[k] for k in ("pools", "families", "first_stage")} == {
        k: meta[k] for k in ("pools", "families", "first_stage")
    }
    db = ResultStore(store)
    db.check_meta({**meta, "pools": {**meta["pools"], "text-only:test": "rebuilt"}}, compare=())
    db.close()
    with pytest.raises(RunMismatchError, match="other pools"):
        run_eval(p, store, [a], llm_limit=None, env=env)
    old = ResultStore(tmp_path / "old.sqlite")
    old.check_meta({"data": meta["data"], "protocols": ["family", "fixed"]}, compare=())
    old.close()
    with pytest.raises(RunMismatchError, match="old target-centred pools"):
        run_eval(p, tmp_path / "old.sqlite", [a], env=env)


def test_an_llm_row_on_fewer_episodes_gets_its_own_paired_table(tiny, tmp_path, monkeypatch):
    from mma_agent.evals import report, tables

    for module in (report, tables):  # the tiny data set has 21 users
        monkeypatch.setattr(module, "MIN_PAIRED", 10)
    _, _, p, env = tiny
    store = tmp_path / "n.sqlite"
    run_eval(
        p,
        store,
        [*build_methods(["first-stage", "random-probe"], zero_shot="unused", trained={}), SubsetOnly("MMA-Auto (T)")],
        llm_limit={"*": 15},
        env=env,
        families=("text-only", "full"),
    )
    run_eval(p, store, [SubsetOnly("LLM listwise (T)")], llm_limit={"*": 10, "full": 12}, env=env, families=("text-only", "full"))
    text, _ = build_report(store, tmp_path / "r", title="t")
    sub = text.split("## Every method on the seeded subset that the MMA rows ran (30 test episodes)")[1].split("##")[0]
    assert "MMA-Auto (T)" in sub and "LLM listwise (T)" not in sub  # not averaged over episodes it did not run
    assert "## Every method on the smaller subset that LLM listwise (T) also ran (22 test episodes)" in text
    assert "(10 episodes both ran)" in text and "(12 episodes both ran)" in text  # tested on what both ran


def reverse_reranker(request: dict) -> dict:
    """A user's own method, as `mma eval run --method tests.test_evals:reverse_reranker` names it:
    the first stage upside down, as a list of scores."""
    return [-x for x in request["first_stage_scores"]]


def _reverse_graph():
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class S(TypedDict, total=False):
        candidates: list
        first_stage_scores: list
        user_id: str
        history: list
        mask: dict
        mma_scores: dict

    g = StateGraph(S)
    g.add_node("score", lambda s: {"mma_scores": {c: -x for c, x in zip(s["candidates"], s["first_stage_scores"], strict=True)}})
    g.add_edge(START, "score")
    g.add_edge("score", END)
    return g


reverse_graph = _reverse_graph()  # uncompiled: the evaluation compiles it


def test_a_users_own_method_runs_through_the_same_evaluation(tiny, tmp_path, capsys):
    _, _, p, env = tiny
    from mma_agent.cli import main as cli

    store = tmp_path / "u.sqlite"
    methods = build_methods(
        ["first-stage"],
        zero_shot="unused",
        trained={},
        user=["tests.test_evals:reverse_reranker", "tests.test_evals:reverse_graph"],
    )
    run_eval(p, store, methods, env=env)
    rows = ResultStore(store).rows()
    by = lambda m: {(r["split"], r["family"], r["pool"]): r for r in rows if r["method"] == m}  # noqa: E731
    fn, graph = by("tests.test_evals:reverse_reranker"), by("tests.test_evals:reverse_graph")
    assert fn and set(fn) == set(graph) == set(by(FIRST_STAGE)) and all(r["status"] == "ok" for r in fn.values())
    assert all(
        fn[k]["metrics"]["0.0"] == graph[k]["metrics"]["0.0"] for k in fn
    )  # the same scores, as a list and as a graph's id map
    text, main = build_report(store, tmp_path / "r")
    assert "tests.test_evals:reverse_reranker" in [r["method"] for r in main]
    assert next(r for r in main if r["method"] == "tests.test_evals:reverse_graph")["group"] == "user method"
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        build_methods([], zero_shot="unused", trained={}, user=["tests.test_evals:nope"])
    assert (
        cli(
            [
                "eval",
                "run",
                "--run",
                str(tmp_path / "x.sqlite"),
                "--method",
                "no_such_pkg.mod:f",
                "--workdir",
                str(p.config.workdir),
                "--data",
                str(p.config.data.path),
            ]
        )
        == 2
    )
    assert "cannot import 'no_such_pkg.mod'" in capsys.readouterr().err


def test_outputs_a_users_method_may_return():
    cands = ["a", "b", "c"]
    assert list(scores_from_output([0.1, 0.9, 0.5], cands)) == [0.1, 0.9, 0.5]
    assert list(scores_from_output(["c", "a"], cands)) == [1.0, 0.0, 2.0]  # a ranking; b unranked, last
    assert list(scores_from_output({"b": 3.0, "a": 1.0}, cands)) == [1.0, 3.0, 0.0]
    assert scores_from_output({"fallback": True, "ranking": cands}, cands) is None
    assert list(scores_from_output({"mma_scores": {"a": 2.0, "b": 1.0, "c": 0.0}}, cands)) == [2.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="2 scores for 3 candidates"):
        scores_from_output([1.0, 2.0], cands)


def test_fused_metrics_at_alpha_one_is_the_first_stage():
    first = np.array([0.9, 0.1, 0.5])
    m = fused_metrics(first, np.array([0.0, 1.0, 0.2]), ["a", "b", "c"], ["b"])
    assert set(m) == {str(a) for a in ALPHAS}
    assert m["1.0"]["hr@10"] == 1.0 and m["1.0"]["ndcg@10"] == pytest.approx(1 / np.log2(4))  # b third by first stage
    assert m["0.0"]["ndcg@10"] == 1.0  # b first by the method
    assert fused_metrics(first, None, ["a", "b", "c"], ["b"])["0.0"] == m["1.0"]


def test_statistics_on_hand_computed_cases():
    assert cliffs_delta(np.array([2, 3]), np.array([1, 1])) == 1.0
    assert cliffs_delta(np.array([1, 2]), np.array([2, 1])) == 0.0
    assert wilcoxon_p(np.ones(5), np.ones(5)) == 1.0
    from scipy.stats import wilcoxon

    a, b = np.array([0.5, 0.2, 0.9, 0.4, 0.7, 0.3]), np.array([0.1, 0.25, 0.3, 0.2, 0.6, 0.0])
    assert wilcoxon_p(a, b) == pytest.approx(wilcoxon(a, b).pvalue)


def test_run_stores_every_episode_records_crashes_and_reports(tiny, tmp_path):
    _, _, p, env = tiny
    methods = build_methods(CHEAP, zero_shot="unused", trained={}) + [Crashy()]
    store = tmp_path / "run.sqlite"
    run_eval(p, store, methods, limit=3, env=env, seeds=(0, 1))
    eps = build_episodes(p, "valid", limit=3) + build_episodes(p, "test", limit=3)
    rows = ResultStore(store).rows()
    n_seeds = {m.name: 2 if m.stochastic else 1 for m in methods}
    assert len(rows) == len(eps) * sum(n_seeds.values())
    assert {r["seed"] for r in rows if r["method"].startswith("MARGO")} == {0, 1}
    crashy = [r for r in rows if r["method"] == "Crashy"]
    assert {r["status"] for r in crashy if len(r["family"]) % 2} == {"error"} and all(
        "boom" in r["error"] for r in crashy if len(r["family"]) % 2
    )
    assert {r["status"] for r in crashy if not len(r["family"]) % 2} == {"ok"}
    # masked modalities: retrievers and the text tool fall back to the first stage instead of scoring
    pop = {(r["family"], r["status"]) for r in rows if r["method"] == "Popularity"}
    assert ("text-only", "fallback") in pop and ("full", "ok") in pop
    text = [r for r in rows if r["method"] == "Single modality: text" and r["family"] == "image-only"]
    assert text and all(r["status"] == "fallback" for r in text)
    first = {(r["split"], r["protocol"], r["family"], r["pool"]): r["metrics"] for r in rows if r["method"] == FIRST_STAGE}
    for r in rows:  # a fallback is exactly the first-stage ranking
        if r["status"] != "ok":
            assert r["metrics"]["0.0"] == first[r["split"], r["protocol"], r["family"], r["pool"]]["0.0"]
    # a rerun adds nothing
    summary = run_eval(p, store, methods, limit=3, env=env, seeds=(0, 1))
    assert all(s["new"] == 0 for s in summary.values()) and len(ResultStore(store).rows()) == len(rows)
    with pytest.raises(RunMismatchError, match="other settings"):
        run_eval(p, store, methods, limit=2, env=env)
    text_md, main = build_report(store, tmp_path / "report")
    assert (tmp_path / "report" / "report.md").read_text() == text_md
    assert (tmp_path / "report" / "by-family.png").is_file()
    assert {
        "OOMA",
        *OOMA_FAMILIES,
        "full",
        "full H@10",
        "full N@20",
        "full N@10 (pools with a relevant)",
        "> best probe (OOMA/full)",
    } <= set(main[1])
    header = next(line for line in text_md.splitlines() if line.startswith("| method"))
    assert (
        "full N@10 (pools with a relevant)" in header and "> best probe (OOMA/full)" in header
    )  # the ceiling row first does not cut columns
    names = [r["method"] for r in main]
    probes = [m.name for m in methods if m.group in ("protocol probe", "ceiling")]
    assert names == ["Ceiling: Recall@100 of the pools", *(m.name for m in methods if m.name not in probes), *probes]
    # the ceiling row is the pools' Recall@100; no ranking exceeds what the oracle reaches
    oracle = next(r for r in main if r["method"].startswith("Ceiling: oracle"))
    assert all(r[f] <= oracle[f] + 1e-9 for r in main[1:] for f in OOMA_FAMILIES if r[f] != "")
    assert all(0 <= main[0][f] <= 1 for f in OOMA_FAMILIES)
    assert "### text-only: first stage" in text_md and "Recall@100 (ceiling)" in text_md
    assert next(r for r in main if r["method"] == "Crashy")["errors"] > 0
    assert next(r for r in main if r["method"].startswith("MAGNET"))["seeds (OOMA sd)"].startswith("2 (")
    assert "Routing diagnostics" in text_md and "RuleRouter-Fuse" in text_md


def test_killed_run_resumes_to_the_same_numbers(tiny, tmp_path):
    root, work, p, env = tiny
    methods = build_methods(["first-stage", "rule", "completion-fp"], zero_shot="unused", trained={})
    clean = tmp_path / "clean.sqlite"
    run_eval(p, clean, methods, limit=4, env=env)
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from pathlib import Path
        from tests.test_evals import _setup
        from mma_agent.evals.methods import build_methods
        from mma_agent.evals.runner import run_eval
        p, env = _setup(Path({str(root)!r}), Path({str(work)!r}))
        methods = build_methods(["first-stage", "rule", "completion-fp"], zero_shot="unused", trained={{}})
        if sys.argv[1] == "slow":
            for m in methods:
                score = m.score
                m.score = lambda ep, score=score: (time.sleep(0.05), score(ep))[1]
        run_eval(p, Path({str(tmp_path / "killed.sqlite")!r}), methods, limit=4, env=env)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script), "slow"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import sqlite3
    import time

    deadline, n = time.time() + 180, 0
    while time.time() < deadline and n < 20:
        time.sleep(0.2)
        try:
            n = sqlite3.connect(tmp_path / "killed.sqlite").execute("SELECT COUNT(*) FROM results").fetchone()[0]
        except sqlite3.Error:
            n = 0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(ResultStore(tmp_path / "killed.sqlite").rows())
    assert 0 < partial < len(ResultStore(clean).rows())
    subprocess.run([sys.executable, str(script), "fast"], check=True, capture_output=True)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(ResultStore(tmp_path / "killed.sqlite").rows()) == strip(ResultStore(clean).rows())
    a = build_report(clean, tmp_path / "a")[1]
    b = build_report(tmp_path / "killed.sqlite", tmp_path / "b")[1]
    assert [{k: v for k, v in r.items() if k != "ms/ep"} for r in a] == [{k: v for k, v in r.items() if k != "ms/ep"} for r in b]
    assert json.loads(json.dumps(a))  # the report rows are plain data


def test_imputations_on_a_hand_computed_case():
    from mma_agent.evals.baselines import CompletionFusion

    anchor = np.eye(4, dtype=np.float32)[[0, 0, 0, 1, 1, 1]] + 1e-3 * np.arange(6, dtype=np.float32)[:, None]
    target = np.arange(12, dtype=np.float32).reshape(6, 2)
    items, bank = np.array([0]), np.array([1, 2, 3, 4, 5])
    expect = np.array([3.0, 4.0]) / 5.0  # the mean of bank items 1 and 2, its two nearest, unit-normed
    for how in ("neighbour-mean", "feature-propagation"):
        m = CompletionFusion(how, k=2)
        assert np.allclose(m._impute(anchor, target, items, bank), expect, atol=1e-6), how
    assert np.allclose(CompletionFusion("mean")._impute(anchor, target, items, bank), target[bank].mean(axis=0))


def test_alpha_on_paired_pools_chooses_from_the_episodes_every_method_ran():
    """A row run on every pool and a row run on a subset pick their alphas from the same
    validation episodes with alpha_on="paired" (own: each from all it ran)."""
    from mma_agent.evals.results import Results

    def row(method, pool, split, by_alpha):
        return {
            "method": method,
            "split": split,
            "family": "full",
            "pool": pool,
            "seed": 0,
            "status": "ok",
            "metrics": {a: {"ndcg@10": v} for a, v in by_alpha.items()},
        }

    rows = [row("everywhere", p, "valid", {"0.0": 0.9, "0.5": 0.1} if p >= 2 else {"0.0": 0.2, "0.5": 0.3}) for p in range(6)]
    rows += [row("subset", p, "valid", {"0.0": 0.1, "0.5": 0.2}) for p in range(2)]
    rows += [row(m, 9, "test", {"0.0": 0.4, "0.5": 0.6}) for m in ("everywhere", "subset")]
    own, paired = Results(rows, {}), Results(rows, {}, alpha_on="paired")
    assert own.alpha["everywhere", "full"] == "0.0" and paired.alpha["everywhere", "full"] == "0.5"
    assert own.alpha["subset", "full"] == paired.alpha["subset", "full"] == "0.5"
    assert paired.valid_pools == {("full", 0), ("full", 1)} and own.valid_pools is None
    assert paired.test("everywhere") == {("full", 9): 0.6}
    with pytest.raises(ValueError, match="alpha_on"):
        Results(rows, {}, alpha_on="mine")


def test_relevant_halves_are_the_same_for_every_method_and_split_the_set():
    from mma_agent.evals.runner import relevant_halves

    rel = [f"i{k}" for k in range(7)]
    a, b = relevant_halves(rel)
    assert relevant_halves(rel[::-1]) == (a, b) and a | b == set(rel) and not a & b and len(a) == 3
    assert relevant_halves(["only"]) is None
    metrics = fused_metrics(np.arange(7.0), np.arange(7.0)[::-1], rel, rel[:2])
    assert {"ndcg@10 half-a", "ndcg@10 half-b"} <= set(metrics["0.5"])


def _row(method, split, pool, values, halves=None):
    metrics = {}
    for a, v in values.items():
        metrics[a] = {"ndcg@10": v}
        if halves is not None:
            metrics[a] |= {"ndcg@10 half-a": halves[a][0], "ndcg@10 half-b": halves[a][1]}
    return {"method": method, "split": split, "family": "full", "pool": pool, "seed": 0, "metrics": metrics}


def test_the_routing_ceiling_picks_on_validation_and_reads_test_halves():
    """Arithmetic on hand-made rows: A is better on validation, B on test; the oracle takes the best
    per pool; with halves that disagree the split-half transfer falls below the fixed choice."""
    from mma_agent.evals.routing import routing_ceiling

    rows, rng = [], np.random.default_rng(0)
    for pool in range(30):
        rows += [_row("A", "valid", pool, {"0.5": 0.5}), _row("B", "valid", pool, {"0.5": 0.2})]
        a_test, b_test = (0.3, 0.4) if pool % 2 else (0.6, 0.1)
        ha, hb = (0.9, 0.0), (0.0, 0.9)  # each half prefers another method: in-hindsight picks do not transfer
        rows += [_row("A", "test", pool, {"0.5": a_test}, {"0.5": ha}), _row("B", "test", pool, {"0.5": b_test}, {"0.5": hb})]
    rows.append(_row("Probe: x", "test", 0, {"0.5": 1.0}))
    meta = {"groups": {"Probe: x": "protocol probe"}, "fused": {"Probe: x": False}, "uses_llm": {}}
    features = {(s, "full", p): rng.normal(size=5) for s in ("valid", "test") for p in range(30)}
    (row,) = routing_ceiling(rows, meta, features)
    assert row["it is"] == "A, alpha 0.5" and row["best fixed choice (chosen on validation)"] == f"{np.mean([0.3, 0.6]):.4f}"
    assert row["oracle: best choice per pool (hindsight)"] == f"{np.mean([0.4, 0.6]):.4f}"
    assert row["split-half oracle / fixed, same halves"] == "0.0000 / 0.4500" and row[
        "halves agree on the best choice"
    ].startswith("0%")
    assert row["router follows the fixed choice"] == "100%"  # valid says A on every pool: nothing to route
