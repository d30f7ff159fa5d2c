"""SFT from the best action sequences (rejection sampling / expert iteration), with TRL.

The environment is cheap (tools are vector operations), so for every support episode we run many
action plans through the real graph (every subset of the three automated tools, then each scoring
template) with a scripted policy, keep the highest-reward plan (paper Eq. 3: NDCG@10 minus call
costs), and train the policy on that plan's conversation: each action is a completion given the
conversation before it (TRL prompt-completion format, loss on the completion only).
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mma_agent.training.rewards import episode_reward

log = logging.getLogger(__name__)
AUTOMATED = ("analyze_text", "analyze_image", "retrieve_graph")
GROUP_OF = {"analyze_text": "text", "analyze_image": "image", "retrieve_graph": "graph"}


def action_plans() -> list[list[str]]:
    """Every subset of the automated tools (in a fixed order), each ended by every scoring template
    over the gathered groups (equal weights, or one group)."""
    plans = []
    for r in range(1, len(AUTOMATED) + 1):
        for tools in itertools.combinations(AUTOMATED, r):
            steps = [json.dumps({"tool": t, "args": {}}) for t in tools]
            for w in [{}] + [{GROUP_OF[t]: 1} for t in tools]:
                plans.append([*steps, json.dumps({"tool": "score_candidates", "args": {"weights": w}})])
    return plans


def best_plans(episodes: list[dict], catalogue, toolkits, *, alpha: float = 0.5) -> list[dict]:
    """For each episode, the highest-reward plan's output (ties: the cheaper plan, listed first)."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from mma_agent.graphs.reranker import create_mma_reranker

    plans = action_plans()
    best = []
    for ep in tqdm(episodes, desc="explore action plans", unit="ep"):
        request = {k: ep[k] for k in ("user_id", "history", "candidates", "first_stage_scores", "mask", "target")}
        top = None
        for plan in plans:
            graph = create_mma_reranker(FakeListChatModel(responses=plan), catalogue=catalogue, toolkits=toolkits, alpha=alpha, prefill=False).compile()
            out = graph.invoke(request)
            reward = episode_reward(out, ep["target"])
            if top is None or reward > top["reward"] + 1e-12:
                top = {"id": ep["id"], "family": ep["family"], "reward": reward, "plan": plan, "messages": out["messages"]}
        best.append(top)
    return best


def sft_examples(best: list[dict]) -> list[dict]:
    """TRL conversational prompt-completion rows: each action given the conversation before it."""
    rows = []
    for b in best:
        msgs = b["messages"]
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                rows.append({"prompt": msgs[:i], "completion": [m]})
    return rows


def train_sft(rows: list[dict], base_model: str, out_dir: Path, *, max_steps: int = 60, lr: float = 5e-5, batch_size: int = 4, seed: int = 0) -> Path:
    """Fine-tune with TRL's SFTTrainer; checkpoints every 20 steps, resumes from the last one."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out_dir = Path(out_dir)
    config = SFTConfig(
        output_dir=str(out_dir / "checkpoints"), max_steps=max_steps, learning_rate=lr, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, logging_steps=5, save_strategy="steps", save_steps=max(1, min(20, max_steps // 2)), save_total_limit=2,
        report_to=[], use_cpu=True, bf16=False, max_length=1024, completion_only_loss=True, seed=seed, lr_scheduler_type="cosine",
        warmup_steps=5,
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok)
    resume = any((out_dir / "checkpoints").glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    final = out_dir / "policy"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    history = [h for h in trainer.state.log_history if "loss" in h]
    (out_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    from mma_agent.plots import line_plot

    line_plot({"train loss (completion tokens)": ([h["step"] for h in history], [h["loss"] for h in history])},
              out_dir / "training-curve.png", xlabel="step", ylabel="loss", title="SFT on best action plans")  # fmt: skip
    return final


def summarize(best: list[dict]) -> dict[str, float]:
    rewards = np.array([b["reward"] for b in best])
    first = [json.loads(b["plan"][0])["tool"] for b in best]
    return {"episodes": len(best), "mean best reward": float(rewards.mean()), **{f"first={t}": first.count(t) / len(first) for t in AUTOMATED}}
