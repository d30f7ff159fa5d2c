import pytest

from mma_agent.cli import main
from mma_agent.util import format_table


def test_data_stats_on_generic_format(tiny_root, tmp_path, capsys):
    assert main(["data", "stats", "--data", str(tiny_root), "--workdir", str(tmp_path / "w"), "--check-images"]) == 0
    out = capsys.readouterr().out
    assert "| users" in out and "| no poster" in out and "| unreadable poster" in out


def test_pipeline_end_to_end_on_tiny_data(tiny_root, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "retrievers:\n  epochs: 4\n  eval_every: 2\n  dim: 8\npools:\n  size: 10\n  first_stage:\n    full: behaviour\n"
        "    cold-user: image+text\nimage:\n  kind: thumbnail\n  width: 4\n  height: 4\n"
    )
    args = ["pipeline", "--config", str(cfg), "--data", str(tiny_root), "--workdir", str(tmp_path / "w")]
    assert main(args) == 0
    out = capsys.readouterr().out
    for needle in (
        "First-stage retrievers",
        "| lightgcn",
        "Candidate pools (protocol v2)",
        "| text-only",
        "First-stage candidates",
        "| text+image+behaviour",
        "Learned relevance channels",
        "| behaviour | behaviour-only",
    ):
        assert needle in out
    full = next(x for x in out.splitlines() if x.startswith("| test ") and "| full " in x)
    assert "LightGCN (behaviour)" in full  # the config's choice for the full family, not validation's
    cold = next(x for x in out.splitlines() if x.startswith("| test ") and "| cold-user " in x)
    assert "RRF(text + image)" in cold
    # a second run resumes from the saved artefacts
    assert main(args) == 0
    assert "cached" in capsys.readouterr().out


def test_bad_input_gives_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["data", "stats", "--data", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("pools:\n  sise: 10\n")
    assert main(["data", "stats", "--config", str(cfg)]) == 2
    assert "sise" in capsys.readouterr().err


def test_corrupt_poster_is_counted(tiny_root, tmp_path, capsys):
    (tiny_root / "posters" / "0.jpg").write_bytes(b"not a jpeg")
    assert main(["data", "stats", "--data", str(tiny_root), "--workdir", str(tmp_path / "w"), "--check-images"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| unreadable poster"))
    assert line.split("|")[2].strip() == "1"


def test_format_table():
    assert format_table([{"a": 1, "b": 0.5}]).splitlines()[2] == "| 1 | 0.5000 |"
    assert format_table([{"a": 1}, {"a": 2, "b": "x"}]).splitlines()[2:] == [
        "| 1 |   |",
        "| 2 | x |",
    ]  # a reference row with fewer columns
    with pytest.raises(SystemExit):
        main(["retrieve", "--only", "svd"])


def test_every_command_routes_to_its_own_handler():
    from mma_agent.cli import build_parser

    cases = {
        ("bench", "rerank"): "cmd_bench_rerank",
        ("pipeline",): "cmd_pipeline",
        ("train", "sft"): "cmd_train_sft",
        ("train", "dpo"): "cmd_train_dpo",
        ("train", "grpo"): "cmd_train_grpo",
        ("train", "eval"): "cmd_train_eval",
        ("eval", "run"): "cmd_eval_run",
        ("eval", "report", "main"): "cmd_eval_report",
        ("serve",): "cmd_serve",
    }
    for argv, handler in cases.items():
        assert build_parser().parse_args(list(argv)).func.__name__ == handler


def test_train_commands_chain_their_policies(tiny_root, tmp_path, capsys, monkeypatch):
    """sft -> dpo -> grpo: each starts from the previous stage's policy folder (trainers stubbed:
    their own tests run them for real; this checks the command wiring)."""
    pytest.importorskip("sentence_transformers")
    import mma_agent.cli as cli
    import mma_agent.cli.train as cli_train
    import mma_agent.training.grpo as grpo
    import mma_agent.training.preference as pref
    import mma_agent.training.sft as sft
    from mma_agent.toolkits import prepare_toolkits
    from mma_agent.training.episodes import sample_episodes

    def episodes_and_kits(args):
        p = cli._pipeline(args)
        catalogue, kits = prepare_toolkits(p.split, p.root / "cache", image_model=None)
        return p, catalogue, kits, sample_episodes(p, per_family=args.per_family, seed=args.seed)

    seen = []

    def fake_trainer(stage):
        def train(rows, *args, **kwargs):
            base, out = (args[1], args[2]) if stage == "grpo" else (args[0], args[1])
            seen.append((stage, len(rows), str(base), kwargs))
            (out / "policy").mkdir(parents=True, exist_ok=True)
            (out / "policy" / "config.json").write_text("{}")
            return out / "policy"

        return train

    monkeypatch.setattr(cli_train, "_episodes_and_kits", episodes_and_kits)
    monkeypatch.setattr(sft, "train_sft", fake_trainer("sft"))
    monkeypatch.setattr(pref, "train_dpo", fake_trainer("dpo"))
    monkeypatch.setattr(grpo, "train_grpo", fake_trainer("grpo"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "retrievers:\n  epochs: 2\n  eval_every: 1\n  dim: 8\npools:\n  size: 10\n  first_stage:\n    full: behaviour\n"
        "image:\n  kind: thumbnail\n  width: 4\n  height: 4\n"
    )
    common = [
        "--config",
        str(cfg),
        "--data",
        str(tiny_root),
        "--workdir",
        str(tmp_path / "w"),
        "--per-family",
        "2",
        "--base",
        str(tmp_path / "base"),
    ]
    assert main(["train", "sft", *common, "--trl", "gradient_accumulation_steps=2"]) == 0
    assert main(["train", "dpo", *common[:-2]]) == 0
    assert main(["train", "grpo", *common[:-2]]) == 0
    assert [s[0] for s in seen] == ["sft", "dpo", "grpo"]
    assert seen[0][2] == str(tmp_path / "base") and seen[0][3]["gradient_accumulation_steps"] == 2
    assert seen[1][2].endswith("train/sft/policy") and seen[2][2].endswith("train/dpo/policy")
    assert all(n > 0 for _, n, _, _ in seen)
    assert seen[0][3]["lora_layers"] == 6 and seen[1][3]["lora_layers"] == 6  # LoRA on the top layers by default
    # the interactive policy: ask_user in the plan space, its own folders, its own chain
    assert main(["train", "sft", "--interactive", *common, "--lora-layers", "0", "--per-family", "1"]) == 0
    assert main(["train", "dpo", "--interactive", *common[:-2], "--per-family", "1"]) == 0
    assert seen[-2][3]["lora_layers"] == 0 and seen[-1][2].endswith("train/sft-interactive/policy")
    assert main(["train", "sft", *common, "--trl", "no_equals_sign"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_the_embedded_policy_is_the_trained_one_or_a_clear_error(tiny_root, tmp_path):
    """`Pipeline.policy()` is the SFT policy that the main job trains (where `mma train sft` puts
    it); before it is trained, an error naming the commands that train it."""
    from mma_agent.config import PipelineConfig
    from mma_agent.pipeline import Pipeline

    p = Pipeline(PipelineConfig.model_validate({"data": {"path": str(tiny_root)}, "workdir": str(tmp_path)}))
    with pytest.raises(FileNotFoundError, match=r"scripts/main\.sh.*mma train sft"):
        p.policy()
    with pytest.raises(FileNotFoundError, match="mma train sft --interactive"):
        p.policy(interactive=True)
    folder = p.root / "train" / "sft" / "policy"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert p.policy() == f"transformers:{folder}"
    assert p.train_dir("dpo", interactive=True) == p.root / "train" / "dpo-interactive"


@pytest.mark.slow
def test_bench_llm_replays_recorded_policy_calls(tmp_path, capsys, smollm2_models):
    """`mma bench llm` replays a recording in every setting; the setting that decodes as the
    recording did (the prefix-cache path, same weights and dtype) gives back its actions, and a
    file that is not a recording is a clear error."""
    import json

    from langchain_core.messages import HumanMessage, SystemMessage

    from mma_agent.evals.llm_bench import FORMAT
    from mma_agent.llm import TransformersChatModel
    from tests.conftest import random_smollm2

    folder = str(random_smollm2(tmp_path, smollm2_models))
    model = TransformersChatModel(model_path=folder, batching=False)
    menu = ['analyze_text", "args": {}}', 'retrieve_graph", "args": {}}', 'score_candidates", "args": {"weights": {}}}']
    episodes = []
    for i in range(3):
        msgs = [SystemMessage("Route evidence."), HumanMessage(f"History: {10 * i + 3} items. Pool: 100 candidates.")]
        reply = model.invoke(msgs, prefill='{"tool": "', allowed_completions=menu).content
        episodes.append(
            [
                {
                    "messages": [{"role": m.type, "content": m.content} for m in msgs],
                    "prefill": '{"tool": "',
                    "allowed": menu,
                    "reply": reply,
                }
            ]
        )
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps({"format": FORMAT, "episodes": episodes}))
    assert main(["bench", "llm", str(calls), "--model-path", folder, "--concurrency", "2", "--batch-on-cpu"]) == 0
    table = capsys.readouterr().out
    rows = [r for r in table.splitlines() if r.startswith("| cpu")]
    assert len(rows) == 4 and "| 3/3 " in rows[0]  # sequential, lock-step, one pass per call, batched passes
    calls.write_text("{}")
    assert main(["bench", "llm", str(calls), "--model-path", folder]) == 2
    assert "not a policy-call recording" in capsys.readouterr().err
