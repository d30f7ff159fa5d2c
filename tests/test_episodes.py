"""Episode sampling and crash-safe recording (the rule router stands in for the policy: recording
does not depend on which policy acts)."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mma_agent.training.episodes import EpisodeFileError, read_episodes, record_episodes, sample_episodes, train_targets  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from mma_agent.config import PipelineConfig
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.pipeline import Pipeline
    from tests.conftest import fake_toolkits, write_tiny_dataset

    root = write_tiny_dataset(tmp_path_factory.mktemp("d") / "tiny", n_users=21)
    work = tmp_path_factory.mktemp("w")
    cfg = PipelineConfig.model_validate(
        {
            "data": {"path": str(root)},
            "workdir": str(work),
            "pools": {"size": 10},
            "image": {"kind": "thumbnail", "width": 4, "height": 4},
        }
    )
    p = Pipeline(cfg)
    catalogue, kits = fake_toolkits(p.split, work / "cache")
    reranker = create_mma_reranker(None, catalogue=catalogue, toolkits=kits, variant="rule").compile()
    return p, reranker


def test_train_targets_use_only_earlier_train_history(env):
    p, _ = env
    users, items, hists = train_targets(p.split)
    tr = p.split.train
    for u, t, h in zip(users, items, hists):
        ts = tr[(tr.user == u)].set_index("item")["timestamp"]
        assert t not in set(h) and ts[h].max() <= ts[t]


def test_sampling_is_balanced_and_split(env):
    p, _ = env
    eps = sample_episodes(p, seed=0)
    fams = [e["family"] for e in eps]
    counts = {f: fams.count(f) for f in set(fams)}
    assert len(counts) == 7 and max(counts.values()) - min(counts.values()) <= 1
    assert len({e["id"] for e in eps}) == len(eps)
    for e in eps:  # pools as in evaluation: the history excluded, the target never inserted
        assert e["target"] not in e["history"] and not set(e["history"]) & set(e["candidates"])
        assert e["first_stage_scores"] == sorted(e["first_stage_scores"], reverse=True)
    assert any(e["target"] in e["candidates"] for e in eps) and not all(e["target"] in e["candidates"] for e in eps)
    assert {e["part"] for e in eps} == {"support", "query"}
    assert sample_episodes(p, seed=0) == eps


def test_recording_resumes_without_loss_or_duplicates(env, tmp_path):
    p, reranker = env
    eps = sample_episodes(p, seed=0)
    path = tmp_path / "episodes.jsonl"
    header = {"config": "h1", "data": p.split.fingerprint()}

    def crash_after(n):
        seen = []

        def hook(_):
            seen.append(1)
            if len(seen) == n:
                raise KeyboardInterrupt  # a crash mid-run

        return hook

    with pytest.raises(KeyboardInterrupt):
        record_episodes(eps, reranker, path, header, on_record=crash_after(5))
    # a half-written line, as a kill during a write leaves
    with path.open("a") as fh:
        fh.write('{"id": "broken", "rew')
    stats = record_episodes(eps, reranker, path, header)
    assert stats == {"total": len(eps), "already": 5, "recorded": len(eps) - 5}
    _, records = read_episodes(path)
    assert sorted(r["id"] for r in records) == sorted(e["id"] for e in eps)
    assert all(-1.0 <= r["reward"] <= 1.0 for r in records)
    assert record_episodes(eps, reranker, path, header)["recorded"] == 0  # nothing counted twice
    with pytest.raises(EpisodeFileError, match="another config"):
        record_episodes(eps, reranker, path, {"config": "h2", "data": "x"})


def test_malformed_line_names_its_number(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"header": {"a": 1}}\n{"id": "x", "reward": 0.1}\nnot json\n{"id": "y", "reward": 0.2}\n')
    with pytest.raises(EpisodeFileError, match="line 3 is not valid JSON"):
        read_episodes(path)
    path.write_text('{"id": "x"}\n')
    with pytest.raises(EpisodeFileError, match="line 1 must be the header"):
        read_episodes(path)


@pytest.mark.slow
def test_a_killed_recording_process_resumes(env, tmp_path):
    """A real SIGKILL of the recording process, then a resume: every episode exactly once."""
    pytest.importorskip("sentence_transformers")
    p, _ = env
    script = tmp_path / "rec.py"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(p.config.model_dump_json())
    script.write_text(
        textwrap.dedent(f"""
        import json, sys, time
        from mma_agent.config import PipelineConfig
        from mma_agent.graphs.reranker import create_mma_reranker
        from mma_agent.pipeline import Pipeline
        from mma_agent.toolkits import prepare_toolkits
        from mma_agent.training.episodes import record_episodes, sample_episodes
        p = Pipeline(PipelineConfig.model_validate(json.loads(open("{cfg}").read())))
        cat, kits = prepare_toolkits(p.split, p.root / "cache", image_model=None)
        rr = create_mma_reranker(None, catalogue=cat, toolkits=kits, variant="rule").compile()
        slow = (lambda r: time.sleep(0.3)) if sys.argv[1] == "slow" else None
        print(record_episodes(sample_episodes(p, seed=0), rr, "{tmp_path / "e.jsonl"}", {{"config": "k"}}, on_record=slow), flush=True)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script), "slow"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = tmp_path / "e.jsonl"
    import time

    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count(chr(10)) < 4):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, before = read_episodes(out)
    assert 0 < len(before)
    subprocess.run([sys.executable, str(script), "fast"], check=True, capture_output=True)
    _, after = read_episodes(out)
    ids = [r["id"] for r in after]
    assert len(ids) == len(set(ids)) == len(sample_episodes(p, seed=0))


def test_action_plans_cover_tool_subsets_and_scoring():
    from mma_agent.training.explore import action_plans

    plans = action_plans()
    assert len(plans) == 96  # ordered: 3 singletons x 2 + 6 pairs x 5 + 6 triples x 10 (the weight menu over the gathered groups)
    assert len({tuple(p) for p in plans}) == 96
    assert all(json.loads(p[-1])["tool"] == "score_candidates" for p in plans)


def test_best_plans_and_sft_rows(env):
    p, _ = env
    from mma_agent.training.decisions import sft_examples
    from mma_agent.training.explore import best_plans
    from tests.conftest import fake_toolkits

    catalogue, kits = fake_toolkits(p.split, p.root / "cache")
    eps = [e for e in sample_episodes(p, per_family=1, seed=0)][:3]
    best = best_plans(eps, catalogue, kits)
    for b, e in zip(best, eps):
        assert b["id"] == e["id"] and json.loads(b["plan"][-1])["tool"] == "score_candidates"
    rows = sft_examples(best)
    assert len(rows) == sum(len(b["plan"]) for b in best)
    assert rows[0]["prompt"][0]["role"] == "system" and rows[0]["completion"][0]["role"] == "assistant"
    assert rows[0]["completion"][0]["content"] == best[0]["plan"][0]


@pytest.fixture(scope="module")
def explored(env):
    p, _ = env
    from mma_agent.training.explore import explore_plans
    from tests.conftest import fake_toolkits

    catalogue, kits = fake_toolkits(p.split, p.root / "cache")
    eps = [e for e in sample_episodes(p, per_family=1, seed=0) if e["family"] in ("full", "image-only", "text-only")]
    return eps, catalogue, kits, explore_plans(eps, catalogue, kits)


def test_decision_points_value_every_action_from_every_state(explored):
    from mma_agent.training.decisions import best_action, decision_points, decision_sft_rows

    eps, _, _, ex = explored
    points = decision_points(ex)
    assert len(points) == len(eps) * 16  # root, 3 singles, 6 ordered pairs, 6 ordered triples
    for e, pts in zip(ex, [points[i : i + 16] for i in range(0, len(points), 16)], strict=True):
        root = next(p for p in pts if p["prefix"] == [])
        # a state's value of an action is the best reward of any plan continuing with it
        for a, v in root["values"].items():
            assert v == pytest.approx(max(o["reward"] for o in e["outcomes"] if o["plan"][0] == a))
        assert root["values"][best_action(root)] == pytest.approx(max(o["reward"] for o in e["outcomes"]))
        for p in pts:  # the prompt is the conversation up to that decision, observations included
            assert len(p["prompt"]) == 2 + 2 * len(p["prefix"])
            assert [m["content"] for m in p["prompt"] if m["role"] == "assistant"] == p["prefix"]
    # in the image-only family (text masked) the text tool answers Null, and a state shows it
    img = next(p for p in points if p["family"] == "image-only" and p["prefix"] == ['{"tool": "analyze_text", "args": {}}'])
    assert "Null" in img["prompt"][-1]["content"]
    rows = decision_sft_rows(points, states="all")
    assert len(rows) == len(points) and rows[0]["completion"][0]["content"] == best_action(points[0])
    path = decision_sft_rows(points, states="path")
    firsts = [r for r in path if len(r["prompt"]) == 2]
    assert len(firsts) == len(eps)  # every episode's start state, once
    # every path ends with a scoring action, and a Null state is followed by something other than the Null tool
    assert sum(json.loads(r["completion"][0]["content"])["tool"] == "score_candidates" for r in path) >= len(eps)
    nulls = [r for r in path if "Null" in r["prompt"][-1]["content"] and len(r["prompt"]) == 4]
    assert nulls and all(r["completion"][0]["content"] != r["prompt"][2]["content"] for r in nulls)


def test_preference_pairs_prefer_the_higher_value_action(explored):
    from mma_agent.training.decisions import decision_points
    from mma_agent.training.preference import preference_pairs

    points = decision_points(explored[3])
    pairs = preference_pairs(points, margin=0.01)
    assert pairs, "some state must separate its actions"
    by_state = {(p["id"], json.dumps(p["prompt"])): p for p in points}
    for r in pairs:
        vals = by_state[r["id"], json.dumps(r["prompt"])]["values"]
        assert vals[r["chosen"][0]["content"]] - vals[r["rejected"][0]["content"]] >= 0.01
    assert len(preference_pairs(points, margin=10.0)) == 0


def test_environment_reward_replays_actions_in_the_real_graph(explored):
    from mma_agent.training.decisions import decision_points
    from mma_agent.training.grpo import EnvironmentReward, grpo_rows

    eps, catalogue, kits, ex = explored
    points = decision_points(ex)
    reward = EnvironmentReward(eps, catalogue, kits)
    rows = grpo_rows(points)
    for p, row in zip(points[:16], rows[:16], strict=True):
        acts = list(p["values"])
        got = reward(
            [[{"role": "assistant", "content": a}] for a in acts],
            episode_id=[row["episode_id"]] * len(acts),
            prefix=[row["prefix"]] * len(acts),
            continuations=[row["continuations"]] * len(acts),
        )
        # playing a searched action then its best continuation reproduces the searched value
        assert got == pytest.approx([p["values"][a] for a in acts])
    # garbage costs the invalid-action penalty (then the episode is scored with equal weights)
    bad = reward(["not json"], episode_id=[rows[0]["episode_id"]], prefix=["[]"], continuations=["{}"])[0]
    ok = reward(
        ['{"tool": "score_candidates", "args": {"weights": {}}}'],
        episode_id=[rows[0]["episode_id"]],
        prefix=["[]"],
        continuations=["{}"],
    )[0]
    assert bad < ok - 0.1


def _smollm2(models):
    """The embedded SmolLM2's folder in the `smollm2_models` fixture's folder; skips without TRL."""
    pytest.importorskip("trl")
    from mma_agent.llm import smollm2_folder

    return str(smollm2_folder(models))


@pytest.mark.slow
def test_train_dpo_and_grpo_run_and_save_loadable_policies(explored, tmp_path, smollm2_models):
    from mma_agent.llm import resolve_chat_model
    from mma_agent.training.decisions import decision_points
    from mma_agent.training.grpo import EnvironmentReward, grpo_rows, train_grpo
    from mma_agent.training.preference import preference_pairs, train_dpo

    base = _smollm2(smollm2_models)
    eps, catalogue, kits, ex = explored
    points = decision_points(ex)
    final = train_dpo(preference_pairs(points)[:4], base, tmp_path / "dpo", max_steps=2, batch_size=2)
    assert (final / "model.safetensors").is_file() and (tmp_path / "dpo" / "training-curve.png").is_file()
    reward = EnvironmentReward(eps, catalogue, kits)
    final = train_grpo(
        grpo_rows(points)[:4],
        reward,
        base,
        tmp_path / "grpo",
        max_steps=1,
        num_generations=2,
        prompts_per_step=1,
        max_completion_length=8,
    )
    assert reward.calls == 2 and (final / "model.safetensors").is_file()
    assert resolve_chat_model(f"transformers:{final}", max_new_tokens=2).invoke("hi").usage_metadata["output_tokens"] <= 2


@pytest.mark.slow
def test_train_sft_runs_saves_and_resumes(env, tmp_path, smollm2_models, caplog):
    from mma_agent.llm import resolve_chat_model
    from mma_agent.training.sft import train_sft

    base = _smollm2(smollm2_models)
    rows = [
        {
            "prompt": [{"role": "system", "content": "Answer with JSON."}, {"role": "user", "content": "Pick a tool."}],
            "completion": [{"role": "assistant", "content": '{"tool": "analyze_text", "args": {}}'}],
            # the continuations constrained decoding offers: the loss goes on the tokens where they differ
            "allowed": ['analyze_text", "args": {}}', 'analyze_image", "args": {}}'],
        }
    ] * 4
    final = train_sft(rows, str(base), tmp_path / "run", max_steps=2, batch_size=2)
    assert (final / "model.safetensors").is_file() and (tmp_path / "run" / "training-curve.png").is_file()
    # the trained policy is a folder the transformers: backend loads
    out = resolve_chat_model(f"transformers:{final}", max_new_tokens=4).invoke("hi")
    assert out.usage_metadata["output_tokens"] <= 4
    # the same inputs again: the finished checkpoint is resumed, nothing is trained again
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-2" / "model.safetensors"
    trained = ckpt.stat().st_mtime_ns
    train_sft(rows, str(base), tmp_path / "run", max_steps=2, batch_size=2)
    assert ckpt.stat().st_mtime_ns == trained
    # other rows (say, the prompt's format changed): the old checkpoints are not resumed as the new policy
    other = [{**r, "completion": [{"role": "assistant", "content": '{"tool": "analyze_image", "args": {}}'}]} for r in rows]
    with caplog.at_level(logging.WARNING, logger="mma_agent.training.sft"):
        train_sft(other, str(base), tmp_path / "run", max_steps=2, batch_size=2)
    assert "other training inputs" in caplog.text and ckpt.stat().st_mtime_ns != trained


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint(tmp_path, smollm2_models):
    """SIGKILL an SFT run after its first checkpoint; the rerun resumes there: every step is
    trained and logged exactly once, and the policy is saved."""
    base = _smollm2(smollm2_models)
    run = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.getcwd())!r})
        from pathlib import Path
        from mma_agent.training.sft import train_sft
        rows = [{{"prompt": [{{"role": "user", "content": "Pick a tool."}}],
                  "completion": [{{"role": "assistant", "content": '{{"tool": "analyze_text", "args": {{}}}}'}}]}}] * 8
        train_sft(rows, {base!r}, Path({str(run)!r}), max_steps=6, batch_size=2, logging_steps=1, save_steps=2, save_total_limit=5)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time

    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "policy").exists(), "killed before the end"
    first_ckpt = (run / "checkpoints" / "checkpoint-2" / "model.safetensors").stat().st_mtime_ns
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    history = json.loads((run / "log_history.json").read_text())
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == sorted(set(steps)) and steps[-1] == 6 and min(steps) <= 2
    # resumed, not restarted: the first checkpoint was not written again
    assert (run / "checkpoints" / "checkpoint-2" / "model.safetensors").stat().st_mtime_ns == first_ckpt
    assert (run / "policy" / "model.safetensors").is_file()


def test_informative_states_keep_the_choices_that_matter():
    from mma_agent.training.grpo import informative_states

    points = [{"values": {"a": 0.5, "b": 0.5}}, {"values": {"a": 0.1, "b": 0.4}}, {"values": {"a": 0.3}}]
    assert informative_states(points, margin=0.1) == [points[1]]  # equal values, or one action: nothing to learn
    many = [{"values": {"a": 0.0, "b": float(i)}} for i in range(1, 30)]
    shuffled = informative_states(many, margin=0.5, seed=1)
    assert (
        shuffled == informative_states(many, margin=0.5, seed=1)
        and shuffled != many
        and sorted(shuffled, key=lambda p: p["values"]["b"]) == many
    )


def test_forked_exploration_scores_each_plan_as_a_plain_run_does(explored):
    """Plans sharing their steps share one run and fork before the score node; each reward must
    be what running that plan alone gives, asking the simulated user included."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.training.explore import action_plans, explore_plans
    from mma_agent.training.rewards import episode_reward

    eps, catalogue, kits, _ = explored
    plans = [p for p in action_plans(interactive=True) if len(p) == 3 and '"ask_user"' in p[1]][
        :12
    ]  # one tool, a question, each score
    out = explore_plans(eps[:1], catalogue, kits, plans=plans)[0]["outcomes"]
    for o in out[::3]:
        alone = create_mma_reranker(
            FakeListChatModel(responses=o["plan"]),
            catalogue=catalogue,
            toolkits=kits,
            backend={"prefill": False},
            variant="interactive",
        )
        run = alone.compile().invoke(eps[0])
        assert o["reward"] == pytest.approx(episode_reward(run, eps[0]["target"])) and [list(x) for x in o["pattern"]] == [
            [t["action"]["tool"], t["null"]] for t in run["trace"] if "null" in t
        ]
    assert all(o["reward"] <= 1 - 0.02 - 0.10 + 1e-9 for o in out)  # a tool and a question paid for


def test_exploration_resumes_after_a_kill(explored, tmp_path):
    """Each explored episode is appended as it finishes; a rerun reuses those, drops the line a
    kill cut short, and explores only the rest (same results as one uninterrupted run)."""
    import json

    from mma_agent.training.explore import explore_plans

    eps, catalogue, kits, whole = explored
    parts = tmp_path / "explore" / "support.parts.jsonl"
    parts.parent.mkdir()
    kept = {**whole[0], "kept": True}  # marks the entry that must not be recomputed
    parts.write_text(json.dumps(kept) + "\n" + json.dumps(whole[1])[:50])  # the second line was cut by the kill
    out = explore_plans(eps[:2], catalogue, kits, resume=parts)
    assert out[0] == kept and out[1] == whole[1]
    lines = parts.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1]) == whole[1]
