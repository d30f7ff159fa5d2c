"""Preference optimisation from recorded episodes: DPO on (better, worse) actions from the same
context, with TRL's DPOTrainer.

A pair is one explored state (`decision_points`: the conversation so far, observations and Nulls
included) with the best next action as `chosen` and the worst as `rejected`, kept when their
values (best reward reachable after each, searched in the real environment) differ by at least
`margin`. Unlike SFT on the best plans, the rejected side shows the policy what costs reward:
scoring after a Null, calling a tool the mask removed, stopping before the useful evidence.

NAPO's in-batch negative sharing is not offered: TRL's DPOTrainer scores each row's own pair, and
sharing negatives across a batch needs a custom loss; one rejected action per state is what
every explored state already gives.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mma_agent.training.decisions import best_action
from mma_agent.training.sft import lora_config, train_and_save

log = logging.getLogger(__name__)


def preference_pairs(points: list[dict], *, margin: float = 0.01) -> list[dict]:
    """TRL conversational preference rows {prompt, chosen, rejected} from explored states."""
    rows = []
    for p in points:
        if len(p["values"]) < 2:
            continue
        best = best_action(p)
        worst = min(p["values"], key=p["values"].get)
        if p["values"][best] - p["values"][worst] >= margin:
            rows.append(
                {
                    "id": p["id"],
                    "prompt": p["prompt"],
                    "chosen": [{"role": "assistant", "content": best}],
                    "rejected": [{"role": "assistant", "content": worst}],
                    "margin": p["values"][best] - p["values"][worst],
                }
            )
    return rows


def train_dpo(
    rows: list[dict],
    base_model: str,
    out_dir: Path,
    *,
    max_steps: int = 30,
    lr: float = 5e-6,
    beta: float = 0.1,
    batch_size: int = 2,
    seed: int = 0,
    lora_layers: int | None = None,
    **config_overrides,
) -> Path:
    """DPO with TRL's DPOTrainer (reference = the starting policy; with LoRA on the top
    `lora_layers` layers, the policy with its adapters off); checkpoints, resume, a curve."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    out_dir = Path(out_dir)
    config = DPOConfig(
        **{
            "output_dir": str(out_dir / "checkpoints"),
            "max_steps": max_steps,
            "learning_rate": lr,
            "beta": beta,
            "per_device_train_batch_size": batch_size,
            "logging_steps": 2,
            "save_strategy": "steps",
            "save_steps": max(1, min(10, max_steps // 2)),
            "save_total_limit": 2,
            "report_to": [],
            "use_cpu": True,
            "bf16": False,
            "max_length": 1024,
            "seed": seed,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 2,
            "activation_checkpointing": False,
            **config_overrides,
        }
    )
    tok = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=tok,
        peft_config=lora_config(lora_layers, model.config.num_hidden_layers),
    )
    return train_and_save(
        trainer,
        tok,
        out_dir,
        "DPO on best vs worst action per explored state",
        {"DPO loss": "loss", "reward accuracy": "rewards/accuracies", "reward margin": "rewards/margins"},
    )
