"""SFT from the best actions found by search (rejection sampling / expert iteration), with TRL.

The environment is cheap (tools are vector operations), so for every support episode we run every
action plan through the real graph (each ordered sequence of the three automated tools, then each
scoring template) with a scripted policy and score it with the paper's Eq. 3 (NDCG@10 minus call
costs). Every state the plans pass through gets the value of each next action (`decision_points`),
and the policy is trained on the best action at each state: a completion given the conversation
before it (TRL prompt-completion format, loss on the completion only). The same table feeds DPO
(`preference.py`) and GRPO (`grpo.py`).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mma_agent.graphs.state import SCORE_TOOL, rerank_request
from mma_agent.toolkits import tool_vocabulary
from mma_agent.toolkits.base import ToolVocabulary
from mma_agent.training.rewards import episode_reward
from mma_agent.util import atomic_write_text, json_digest

log = logging.getLogger(__name__)
def action_plans(tools: ToolVocabulary | None = None) -> list[list[str]]:
    """Every ordered sequence of distinct automated tools (order matters: what the policy saw when
    it chose), each ended by every entry of the weight menu over its groups (what constrained
    decoding allows after those tools answered): with the three built-in evidence tools,
    3 x 2 + 6 x 5 + 6 x 10 = 96 plans."""
    tools = tools or tool_vocabulary()
    plans = []
    for r in range(1, len(tools.automated) + 1):
        for specs in itertools.permutations(tools.automated, r):
            steps = [json.dumps({"tool": s.name, "args": {}}) for s in specs]
            for w in tools.weight_menu(s.group for s in specs):
                plans.append([*steps, json.dumps({"tool": SCORE_TOOL, "args": {"weights": w}})])
    return plans


def explore_plans(episodes: list[dict], catalogue, toolkits, *, alpha: float = 0.5, plans: list[list[str]] | None = None) -> list[dict]:
    """Run every action plan on every episode through the real graph (a scripted policy). One
    entry per episode: its id, family and a list of {plan, reward, messages} in plan order."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from mma_agent.graphs.reranker import create_mma_reranker

    plans = plans or action_plans()
    explored = []
    for ep in tqdm(episodes, desc="explore action plans", unit="ep"):
        request = rerank_request(ep)
        outcomes = []
        for plan in plans:
            graph = create_mma_reranker(FakeListChatModel(responses=plan), catalogue=catalogue, toolkits=toolkits, alpha=alpha, prefill=False).compile()
            out = graph.invoke(request)
            outcomes.append({"plan": plan, "reward": episode_reward(out, ep["target"]), "messages": out["messages"]})
        explored.append({"id": ep["id"], "family": ep["family"], "outcomes": outcomes})
    return explored


def explore_support(pipeline, support: list[dict], catalogue, toolkits, *, name: str = "support") -> tuple[list[dict], float]:
    """`explore_plans` on episodes (the support part, or `name="query"` for the held-out part),
    cached under the workdir by content (the episodes and their pools, the plan space, the
    evidence's models, the data), and the seconds it took (0 when cached)."""
    from mma_agent.masks import Modality
    from mma_agent.relevance import relevance_feature

    learned = sorted((m for m in Modality if relevance_feature(m) in catalogue.features), key=relevance_feature)  # the evidence's learned channels
    key = json_digest([[(e["id"], e["candidates"], e["first_stage_scores"]) for e in support], action_plans(), pipeline.split.fingerprint(),
                       [relevance_feature(m) for m in learned], [str(pipeline.relevance_path(m)) for m in learned]])  # fmt: skip
    path = pipeline.root / "explore" / f"{name}-{key}.json"
    start = time.perf_counter()
    if path.is_file():
        explored = json.loads(path.read_text())
    else:
        explored = explore_plans(support, catalogue, toolkits)
        atomic_write_text(path, json.dumps(explored))
    return explored, time.perf_counter() - start


def best_of(explored: list[dict]) -> list[dict]:
    """Each episode's highest-reward plan (ties: the cheaper plan, listed first)."""
    best = []
    for e in explored:
        top = max(e["outcomes"], key=lambda o: (o["reward"], -len(o["plan"])))  # max keeps the first of equals
        best.append({"id": e["id"], "family": e["family"], **top})
    return best


def best_plans(episodes: list[dict], catalogue, toolkits, *, alpha: float = 0.5) -> list[dict]:
    """For each episode, the highest-reward plan's output (ties: the cheaper plan, listed first)."""
    return best_of(explore_plans(episodes, catalogue, toolkits, alpha=alpha))


def sft_examples(best: list[dict]) -> list[dict]:
    """TRL conversational prompt-completion rows along each episode's best plan: each action
    given the conversation before it. (Hindsight plans: they never show a Null, see
    `decision_points` for rows that do.)"""
    rows = []
    for b in best:
        msgs = b["messages"]
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                rows.append({"prompt": msgs[:i], "completion": [m]})
    return rows


def decision_points(explored: list[dict]) -> list[dict]:
    """Every state the explored plans pass through, with the value of each next action.

    A state is an episode and the actions taken so far (a prefix); its prompt is the conversation
    at that point, tool observations included, so a state after a Null shows the Null. The value
    of an action is the best reward of any plan continuing with it (exhaustive search in the
    real environment), and `continuation` the rest of that plan.

    Why not just the best plan per episode: the availability mask is hidden from the policy, so
    the hindsight-best plan of a text-masked episode never calls the text tool, and no training
    row ever shows what to do after a Null. Rows from every state teach both the common first
    move (the mode over families) and the recovery after a Null.
    """
    points = []
    for e in explored:
        states: dict[tuple, dict] = {}
        for o in e["outcomes"]:
            plan = o["plan"]
            for k, action in enumerate(plan):
                st = states.setdefault(tuple(plan[:k]), {"prompt": o["messages"][: 2 + 2 * k], "values": {}, "continuation": {}})
                if o["reward"] > st["values"].get(action, -float("inf")):
                    st["values"][action] = o["reward"]
                    st["continuation"][action] = plan[k + 1 :]
        for prefix, st in states.items():
            assert st["prompt"][-1]["role"] == "user", "a decision follows an observation"
            points.append({"id": e["id"], "family": e["family"], "prefix": list(prefix), **st})
    return points


def best_action(point: dict) -> str:
    """The highest-value action (ties: the first listed, i.e. scoring before another tool)."""
    return max(point["values"], key=point["values"].get)


def decision_sft_rows(points: list[dict], *, states: str = "path") -> list[dict]:
    """Prompt-completion rows: the best action at explored states.

    states="path" (default): per episode, the states along the best-action path from the start,
    plus the path after each tool that answered Null (the recovery the hidden mask calls for).
    states="all": every explored state. A first run trained on all states learned to score at
    once: 15 of an episode's 16 states follow a tool call, where scoring is usually best, so the
    start state was 6% of the rows and the policy scored before gathering anything.
    """
    if states not in ("path", "all"):
        raise ValueError(f"states={states!r}; choose 'path' or 'all'")
    row = lambda p: {"prompt": p["prompt"], "completion": [{"role": "assistant", "content": best_action(p)}]}  # noqa: E731
    if states == "all":
        return [row(p) for p in points]
    by_episode: dict[str, dict[tuple, dict]] = {}
    for p in points:
        by_episode.setdefault(p["id"], {})[tuple(p["prefix"])] = p
    rows = []
    for table in by_episode.values():
        starts = [()] + [prefix for prefix, p in table.items() if len(prefix) == 1 and "Null" in p["prompt"][-1]["content"]]
        seen = set()
        for prefix in starts:
            while prefix in table and prefix not in seen:
                seen.add(prefix)
                p = table[prefix]
                rows.append(row(p))
                action = best_action(p)
                if json.loads(action)["tool"] == SCORE_TOOL:
                    break
                prefix = (*prefix, action)
    return rows


def train_sft(rows: list[dict], base_model: str, out_dir: Path, *, max_steps: int = 60, lr: float = 5e-5, batch_size: int = 4, seed: int = 0,
              **config_overrides) -> Path:  # fmt: skip
    """Fine-tune with TRL's SFTTrainer; checkpoints, resumes from the last one. Any other
    `SFTConfig` field passes through `config_overrides`."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out_dir = Path(out_dir)
    config = SFTConfig(**{
        "output_dir": str(out_dir / "checkpoints"), "max_steps": max_steps, "learning_rate": lr, "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": 1, "logging_steps": min(5, max_steps), "save_strategy": "steps", "save_steps": max(1, min(20, max_steps // 2)),
        "save_total_limit": 2, "report_to": [], "use_cpu": True, "bf16": False, "max_length": 1024, "completion_only_loss": True, "seed": seed,
        "lr_scheduler_type": "cosine", "warmup_steps": 5, **config_overrides,
    })  # fmt: skip
    tok = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok)
    return train_and_save(trainer, tok, out_dir, "SFT on best actions", {"train loss (completion tokens)": "loss"})


def train_and_save(trainer, tok, out_dir: Path, title: str, curves: dict[str, str]) -> Path:
    """Train (resuming from the newest checkpoint under out_dir/checkpoints, if any), then save the
    policy folder, the log history and a training-curve plot beside it. Shared by SFT, DPO and GRPO."""
    from mma_agent.plots import line_plot

    resume = any((out_dir / "checkpoints").glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    final = out_dir / "policy"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    log_history = trainer.state.log_history
    (out_dir / "log_history.json").write_text(json.dumps(log_history, indent=1))
    series = {}
    for label, key in curves.items():
        pts = [(h["step"], h[key]) for h in log_history if key in h]
        if pts:
            series[label] = ([s for s, _ in pts], [v for _, v in pts])
    if series:
        line_plot(series, out_dir / "training-curve.png", xlabel="step", ylabel="value", title=title)
    return final


def summarize(best: list[dict]) -> dict[str, float]:
    """Mean best reward and how often each tool comes first in the best plans."""
    rewards = np.array([b["reward"] for b in best])
    first = [json.loads(b["plan"][0])["tool"] for b in best]
    return {"episodes": len(best), "mean best reward": float(rewards.mean()), **{f"first={s.name}": first.count(s.name) / len(first) for s in tool_vocabulary().automated}}
