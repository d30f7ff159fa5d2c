"""Online RL: GRPO with TRL's GRPOTrainer, the reward computed by playing the sampled action in the
real reranker graph.

Each prompt is an explored state (`decision_points`: the conversation so far, tool observations
and Nulls included). For every prompt GRPO samples a group of actions from the current policy;
`EnvironmentReward` plays each one in the real graph (tools, scoring, fusion, invalid-action
handling), finishes the episode with the best continuation found by search after that action
(the episode simply ends if the action was to score), and returns the Eq. 3 reward. GRPO's
group-relative advantage then moves probability towards the actions that did better than their
siblings from the same state.

Why GRPO and not the paper's PPO: PPO needs a value model as large as the policy and
its own training, twice the memory and compute on two CPU cores, and our rewards are sparse,
per-episode numbers for which a learned critic is noisy; GRPO's baseline is the mean reward of
the group sampled from the same state, which the cheap environment gives exactly.

Why not TRL's multi-turn `environment_factory`/`tools`: that path renders tools through the
model's chat template and parses tool calls with a per-template response schema; the embedded
SmolLM2's template has no tool support, and our action format is plain JSON text. Bootstrapping
each turn from the searched continuation keeps the rollouts in the real environment without it.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from mma_agent.graphs.state import SCORE_TOOL, rerank_request
from mma_agent.llm.actions import ActionError, parse_action
from mma_agent.training.rewards import episode_reward
from mma_agent.training.sft import train_and_save

log = logging.getLogger(__name__)
EQUAL_SCORE = json.dumps({"tool": SCORE_TOOL, "args": {"weights": {}}})


def canonical(text: str) -> str | None:
    """An action's canonical JSON (the form plans are written in), or None if it is not one."""
    try:
        a = parse_action(text)
    except ActionError:
        return None
    return json.dumps({"tool": a.tool, "args": a.args})


def informative_states(points: list[dict], *, margin: float, seed: int = 0) -> list[dict]:
    """Decision points where the choice matters (best and worst next action at least `margin`
    apart: GRPO learns nothing from a group whose rewards are all equal), shuffled by `seed`."""
    informative = [pt for pt in points if max(pt["values"].values()) - min(pt["values"].values()) >= margin]
    random.Random(seed).shuffle(informative)
    return informative


def grpo_rows(points: list[dict]) -> list[dict]:
    """GRPO prompts: one per explored state, with what the reward needs to replay it."""
    return [
        {
            "prompt": p["prompt"],
            "episode_id": p["id"],
            "prefix": json.dumps(p["prefix"]),
            "continuations": json.dumps({canonical(a) or a: rest for a, rest in p["continuation"].items()}),
        }
        for p in points
    ]


class EnvironmentReward:
    """TRL reward function: each completion's Eq. 3 reward from the real reranker graph."""

    __name__ = "mma_environment_reward"  # TRL logs rewards under the function's name

    def __init__(self, episodes: list[dict], catalogue, toolkits, *, alpha: float = 0.5) -> None:
        self.episodes = {e["id"]: e for e in episodes}
        self.catalogue, self.toolkits, self.alpha = catalogue, toolkits, alpha
        self.calls = 0

    def play(self, episode_id: str, prefix: list[str], action: str, continuations: dict[str, list[str]]) -> tuple[float, dict]:
        from mma_agent.graphs.reranker import create_mma_reranker
        from mma_agent.llm.scripted import ScriptedChatModel

        ep = self.episodes[episode_id]
        key = canonical(action)
        rest = continuations.get(key, [EQUAL_SCORE]) if key is not None else [EQUAL_SCORE]
        if key is not None and json.loads(key)["tool"] == SCORE_TOOL:
            rest = []
        plan = [*prefix, action, *rest]
        graph = create_mma_reranker(
            ScriptedChatModel(responses=plan),
            catalogue=self.catalogue,
            toolkits=self.toolkits,
            alpha=self.alpha,
            backend={"prefill": False},
        ).compile()
        out = graph.invoke(rerank_request(ep))
        self.calls += 1
        return episode_reward(out, ep["target"]), out

    def __call__(
        self, completions: list[Any], *, episode_id: list[str], prefix: list[str], continuations: list[str], **_: Any
    ) -> list[float]:
        rewards = []
        for c, eid, pre, cont in zip(completions, episode_id, prefix, continuations, strict=True):
            text = c[-1]["content"] if isinstance(c, list) else str(c)
            rewards.append(self.play(eid, json.loads(pre), text, json.loads(cont))[0])
        return rewards


def train_grpo(
    rows: list[dict],
    reward: EnvironmentReward,
    base_model: str,
    out_dir: Path,
    *,
    max_steps: int = 20,
    lr: float = 1e-6,
    num_generations: int = 4,
    prompts_per_step: int = 2,
    seed: int = 0,
    **config_overrides,
) -> Path:
    """GRPO with TRL's GRPOTrainer; checkpoints, resume, and a reward curve beside the policy."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    out_dir = Path(out_dir)
    config = GRPOConfig(
        **{
            "output_dir": str(out_dir / "checkpoints"),
            "max_steps": max_steps,
            "learning_rate": lr,
            "num_generations": num_generations,
            "per_device_train_batch_size": num_generations * prompts_per_step,
            "max_completion_length": 32,
            "temperature": 1.0,
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": max(1, min(10, max_steps // 2)),
            "save_total_limit": 2,
            "report_to": [],
            "use_cpu": True,
            "bf16": False,
            "seed": seed,
            "lr_scheduler_type": "constant",
            "log_completions": False,
            "activation_checkpointing": False,
            **config_overrides,
        }
    )
    tok = AutoTokenizer.from_pretrained(base_model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(base_model)
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    return train_and_save(
        trainer,
        tok,
        out_dir,
        "GRPO in the reranker environment",
        {"mean reward": "reward", "reward std within group": "reward_std"},
    )
