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
from mma_agent.toolkits.workspace import Workspace
from mma_agent.training.rewards import episode_reward
from mma_agent.util import atomic_write_text, json_digest, read_jsonl

log = logging.getLogger(__name__)


def action_plans(tools: ToolVocabulary | None = None, *, interactive: bool = False) -> list[list[str]]:
    """Every ordered sequence of distinct automated tools (order matters: what the policy saw when
    it chose), each ended by every entry of the weight menu over its groups (what constrained
    decoding allows after those tools answered): with the three built-in evidence tools,
    3 x 2 + 6 x 5 + 6 x 10 = 96 plans.

    interactive: also each sequence (the empty one included) followed by one question per
    argument template of each non-automated tool (ask_user about text, image or behaviour), then
    each entry of the menu over the sequence's groups and the question's: 3 x (2 + 3 x 5 + 6 x 10
    + 6 x 17) = 537 more. Asking is the last step before scoring: what a question adds is judged
    on the evidence gathered before it."""
    tools = tools or tool_vocabulary()
    line = lambda name, args: json.dumps({"tool": name, "args": args})
    plans = []
    asks = [s for s in tools.specs if not s.automated] if interactive else []
    for r in range(0 if asks else 1, len(tools.automated) + 1):
        for specs in itertools.permutations(tools.automated, r):
            steps = [line(s.name, {}) for s in specs]
            groups = [s.group for s in specs]
            if steps:
                plans += [[*steps, line(SCORE_TOOL, {"weights": w})] for w in tools.weight_menu(groups)]
            for ask in asks:
                for args in ask.arg_templates:
                    plans += [
                        [*steps, line(ask.name, args), line(SCORE_TOOL, {"weights": w})]
                        for w in tools.weight_menu([*groups, ask.group])
                    ]
    return plans


def explore_plans(
    episodes: list[dict],
    catalogue,
    toolkits,
    *,
    alpha: float = 0.5,
    plans: list[list[str]] | None = None,
    prompt: str = "compact",
    resume: Path | None = None,
) -> list[dict]:
    """Run every action plan on every episode through the real graph (a scripted policy). One
    entry per episode: its id, family and a list of {plan, reward, messages, pattern} in plan
    order (`pattern`: each tool called and whether it answered Null, what the policy observed).
    `resume`: a JSONL file that receives each episode's entry as it finishes; a run killed
    midway and started again with it explores only the episodes not in it (a line cut by the
    kill is dropped).

    Plans that share their steps before scoring share one run: the graph runs the steps once
    with a checkpointer, then each scoring action forks the checkpoint before the score node
    (LangGraph time travel), so every reward still comes from the graph's own score node."""
    from langgraph.checkpoint.memory import InMemorySaver

    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.graphs.state import POLICY, SCORE
    from mma_agent.llm.scripted import ScriptedChatModel
    from mma_agent.training.routing import trace_pattern

    plans = plans or action_plans()
    runs: dict[tuple[str, ...], list[str]] = {}
    for plan in plans:
        runs.setdefault(tuple(plan[:-1]), []).append(plan[-1])
    tools = tool_vocabulary(toolkits)
    saver = InMemorySaver()  # one graph per run of steps, compiled once; each episode's thread is dropped after it
    graphs = {
        steps: create_mma_reranker(
            ScriptedChatModel(responses=[*steps, finals[0]]),
            catalogue=catalogue,
            toolkits=toolkits,
            alpha=alpha,
            backend={"prefill": False},
            prompt=prompt,
            variant="interactive" if any(not tools.get(json.loads(a)["tool"]).automated for a in steps) else "auto",
        ).compile(checkpointer=saver)
        for steps, finals in runs.items()
    }
    done = _finished_lines(resume) if resume is not None else {}
    sink = resume.open("a") if resume is not None else None
    explored = []
    for ep in tqdm(episodes, desc="explore action plans", unit="ep", initial=sum(e["id"] in done for e in episodes)):
        if ep["id"] in done:
            explored.append(done[ep["id"]])
            continue
        request = rerank_request(ep)
        outcomes = {}
        for k, (steps, finals) in enumerate(runs.items()):
            graph = graphs[steps]
            config = {"configurable": {"thread_id": f"{ep['id']}#{k}"}}
            first = graph.invoke(request, config)
            before_score = next(s for s in graph.get_state_history(config) if s.next == (SCORE,))
            for final in finals:
                if final == finals[0]:
                    out = first
                else:
                    fork = graph.update_state(before_score.config, {"action": json.loads(final)}, as_node=POLICY)
                    out = graph.invoke(None, fork)
                messages = [*out["messages"][:-1], {"role": "assistant", "content": final}]
                outcomes[(*steps, final)] = {
                    "plan": [*steps, final],
                    "reward": episode_reward(out, ep["target"]),
                    "messages": messages,
                    "pattern": [list(x) for x in trace_pattern(out["trace"])],
                }
            saver.delete_thread(config["configurable"]["thread_id"])
        explored.append({"id": ep["id"], "family": ep["family"], "outcomes": [outcomes[tuple(plan)] for plan in plans]})
        if sink is not None:
            sink.write(json.dumps(explored[-1]) + "\n")
            sink.flush()
    if sink is not None:
        sink.close()
    return explored


def _finished_lines(path: Path) -> dict[str, dict]:
    """The entries of an exploration's JSONL by id, after cutting a last line a kill left unfinished."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        return {}
    return {e["id"]: e for _, e in read_jsonl(path, repair=True)}


def explore_support(
    pipeline: Workspace,
    support: list[dict],
    catalogue,
    toolkits,
    *,
    name: str = "support",
    interactive: bool = False,
    prompt: str = "compact",
) -> tuple[list[dict], float]:
    """`explore_plans` on episodes (the support part, or `name="query"` for the held-out part),
    cached under the workdir by content (the episodes and their pools, the plan space, the
    prompt the policy reads, the evidence's models, the data), and the seconds it took (0 when
    cached)."""
    from mma_agent.graphs.prompts import observation_prompt, request_prompt, system_prompt
    from mma_agent.modalities import Modality
    from mma_agent.models.relevance import relevance_feature

    tools = tool_vocabulary(toolkits)
    plans = action_plans(tools, interactive=interactive)
    shown = [
        system_prompt(tools.names(interactive=interactive), "weights", 8, tools=tools, style=prompt),
        request_prompt(1, 2, style=prompt),
        observation_prompt("o", 1, 8, style=prompt),
    ]
    learned = sorted(
        (m for m in Modality if relevance_feature(m) in catalogue.features), key=relevance_feature
    )  # the evidence's learned channels
    key = json_digest(
        [
            [(e["id"], e["candidates"], e["first_stage_scores"]) for e in support],
            plans,
            shown,
            pipeline.split.fingerprint(),
            [relevance_feature(m) for m in learned],
            [str(pipeline.relevance_path(m)) for m in learned],
        ]
    )
    path = pipeline.root / "explore" / f"{name}-{key}.json"
    start = time.perf_counter()
    if path.is_file():
        explored = json.loads(path.read_text())
    else:
        parts = path.with_suffix(".parts.jsonl")  # episodes finished before a kill
        explored = explore_plans(support, catalogue, toolkits, plans=plans, prompt=prompt, resume=parts)
        atomic_write_text(path, json.dumps(explored))
        parts.unlink()
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
                st = states.setdefault(
                    tuple(plan[:k]),
                    {"prompt": o["messages"][: 2 + 2 * k], "pattern": o["pattern"][:k], "values": {}, "continuation": {}},
                )
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


def signature(point: dict) -> tuple:
    """What the policy observed at a state, coarsely: each tool called, whether it answered Null,
    and the word of its strength line (weak / moderate / strong)."""
    from mma_agent.toolkits.base import strength_word
    from mma_agent.training.routing import point_pattern

    words = [strength_word(m["content"]) for m in point["prompt"][3::2]]  # the observations after each action
    return tuple((t, null, w) for (t, null), w in zip(point_pattern(point), words, strict=True))


def pooled_values(
    points: list[dict], tools: ToolVocabulary | None = None, *, interactive: bool = False, min_states: int = 8
) -> list[dict]:
    """Less noisy action values, and continuations a policy could actually follow.

    Each state's value of an action becomes its mean over the states that share the state's
    signature (`signature`: the pattern and strength words the policy observed) where at least
    `min_states` share it, else over the states sharing the pattern alone. A scoring action is
    worth its plan's Eq. 3 reward. A tool call is worth what the state after it is worth when the
    policy then acts on these pooled values itself: the state's reward under the action with the
    best pooled value there (computed from the deepest states up). Only actions valid at the
    state (what constrained decoding allows) count.

    Why: one target's NDCG is a noisy value (for most pools no plan reaches the target, so every
    action ties up to its cost and the cheapest wins the label); and `decision_points` values a
    tool call by the best plan after it for this very target, a continuation chosen in hindsight,
    which overvalues every action that leaves more choices open (asking, the last step of every
    plan, was never the label, because any tool before it kept the option to ask). Pooling asks
    which action does best on average given what the policy can see; backing up through the
    pooled choices values a call by what a policy that cannot see the target gets after it."""
    from mma_agent.training.routing import point_pattern, valid_actions

    tools = tools or tool_vocabulary()
    worth: dict[tuple, float] = {}  # (episode, prefix) -> the state's reward under the pooled choices
    out: dict[int, dict] = {}
    for depth in sorted({len(p["prefix"]) for p in points}, reverse=True):
        layer = [p for p in points if len(p["prefix"]) == depth]
        own: dict[int, dict[str, float]] = {}
        valid_at: dict[tuple, set[str]] = {}  # the same for every state of a pattern
        for p in layer:
            pattern = point_pattern(p)
            if pattern not in valid_at:
                valid_at[pattern] = valid_actions(p, tools, interactive=interactive)
            valid = valid_at[pattern]
            q = {}
            for action, v in p["values"].items():
                if action not in valid:
                    continue
                if json.loads(action)["tool"] == SCORE_TOOL:
                    q[action] = v
                elif (p["id"], (*p["prefix"], action)) in worth:
                    q[action] = worth[p["id"], (*p["prefix"], action)]
            own[id(p)] = q
        by_sig: dict[tuple, list[dict]] = {}
        by_pattern: dict[tuple, list[dict]] = {}
        for p in layer:
            by_sig.setdefault(signature(p), []).append(p)
            by_pattern.setdefault(point_pattern(p), []).append(p)
        means: dict[int, dict[str, float]] = {}
        for p in layer:
            group = by_sig[signature(p)]
            group = group if len(group) >= min_states else by_pattern[point_pattern(p)]
            if id(group) not in means:
                acts = [a for a in own[id(group[0])] if all(a in own[id(q)] for q in group)]
                means[id(group)] = {a: float(np.mean([own[id(q)][a] for q in group])) for a in acts}
            values = means[id(group)] or own[id(p)] or p["values"]
            choice = max(values, key=values.get)
            worth[p["id"], tuple(p["prefix"])] = own[id(p)].get(choice, max(own[id(p)].values(), default=0.0))
            out[id(p)] = {**p, "values": values, "pooled": len(group)}
    return [out[id(p)] for p in points]


def decision_sft_rows(points: list[dict], *, states: str = "balanced", seed: int = 0, per_depth: int = 120) -> list[dict]:
    """Prompt-completion rows: the best action at explored states (pass `pooled_values(points)`
    for less noisy labels).

    states="balanced" (default): `per_depth` rows for each number of actions taken so far (the
    start, after one tool, after two, ...), drawn round-robin over the signature-and-label classes
    at that depth (what the policy observed, and what it should do), a different state of the
    class each time, seeded: every kind of decision is learned (the start, each recovery after
    a Null, each stop), not just the commonest (15 of an episode's 16 states follow a tool call,
    and most of them three calls deep, where a policy rarely is). states="path": per episode, the
    states along the best-action path from the start, plus the path after each tool that answered
    Null. states="all": every explored state. A first run trained on all states learned to score
    at once: the start state was 6% of the rows and the policy scored before gathering anything.
    """
    from mma_agent.training.routing import point_pattern

    if states not in ("balanced", "path", "all"):
        raise ValueError(f"states={states!r}; choose 'balanced', 'path' or 'all'")
    row = lambda p: {"prompt": p["prompt"], "completion": [{"role": "assistant", "content": best_action(p)}]}  # noqa: E731
    if states == "all":
        return [row(p) for p in points]
    if states == "balanced":
        rng = np.random.default_rng(seed)
        depths: dict[int, dict[tuple, list[dict]]] = {}
        for p in points:
            depths.setdefault(len(p["prefix"]), {}).setdefault((signature(p), best_action(p)), []).append(p)
        rows = []
        for _, classes in sorted(depths.items()):
            queues = [[ps[i] for i in rng.permutation(len(ps))] for ps in classes.values()]
            queues = [queues[i] for i in rng.permutation(len(queues))]
            picked: list[dict] = []
            while len(picked) < per_depth and any(queues):
                for q in queues:
                    if q and len(picked) < per_depth:
                        picked.append(q.pop())
            rows += [row(p) for p in picked]
        return rows
    by_episode: dict[str, dict[tuple, dict]] = {}
    for p in points:
        by_episode.setdefault(p["id"], {})[tuple(p["prefix"])] = p
    rows = []
    for table in by_episode.values():
        starts = [()] + [prefix for prefix, p in table.items() if len(prefix) == 1 and point_pattern(p)[0][1]]
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


def lora_config(top_layers: int | None, n_layers: int, r: int = 16):
    """PEFT LoRA on every projection of the top `top_layers` decoder layers (None: no LoRA, a
    full fine-tune). Measured on these two cores (SmolLM2-135M, batch 8 x 220 tokens, one run):
    a full fine-tune step 14.9 s, LoRA on all 30 layers 22.3 s, LoRA on the top 6 layers 6.5 s,
    the forward pass alone 4.5 s: the backward pass stops at the lowest adapted layer."""
    if not top_layers:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        layers_to_transform=list(range(max(0, n_layers - top_layers), n_layers)),
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


def train_sft(
    rows: list[dict],
    base_model: str,
    out_dir: Path,
    *,
    max_steps: int = 60,
    lr: float = 5e-5,
    batch_size: int = 4,
    seed: int = 0,
    lora_layers: int | None = None,
    **config_overrides,
) -> Path:
    """Fine-tune with TRL's SFTTrainer (LoRA on the top `lora_layers` layers, merged into the
    saved policy, or a full fine-tune); checkpoints, resumes from the last one. Any other
    `SFTConfig` field passes through `config_overrides` (e.g. num_train_epochs with max_steps=-1)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out_dir = Path(out_dir)
    config = SFTConfig(
        **{
            "output_dir": str(out_dir / "checkpoints"),
            "max_steps": max_steps,
            "learning_rate": lr,
            "per_device_train_batch_size": batch_size,
            "gradient_accumulation_steps": 1,
            "logging_steps": min(5, max_steps),
            "save_strategy": "steps",
            "save_steps": max(1, min(20, max_steps // 2)),
            "save_total_limit": 2,
            "report_to": [],
            "use_cpu": True,
            "bf16": False,
            "max_length": 1024,
            "completion_only_loss": True,
            "seed": seed,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 5,
            "activation_checkpointing": False,  # TRL's default recomputes activations, and with LoRA makes the backward pass run through every layer (the name transformers 5 gives gradient checkpointing)
            **config_overrides,
        }
    )
    tok = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora_config(lora_layers, model.config.num_hidden_layers),
    )
    return train_and_save(trainer, tok, out_dir, "SFT on best actions", {"train loss (completion tokens)": "loss"})


def train_and_save(trainer, tok, out_dir: Path, title: str, curves: dict[str, str]) -> Path:
    """Train (resuming from the newest checkpoint under out_dir/checkpoints, if any), then save the
    policy folder, the log history and a training-curve plot beside it. Shared by SFT, DPO and GRPO."""
    from mma_agent.plots import line_plot

    resume = any((out_dir / "checkpoints").glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    final = out_dir / "policy"
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # LoRA: the policy folder holds the merged model, loadable as transformers:<folder>
        model = model.merge_and_unload()
    model.save_pretrained(str(final))
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
    return {
        "episodes": len(best),
        "mean best reward": float(rewards.mean()),
        **{f"first={s.name}": first.count(s.name) / len(first) for s in tool_vocabulary().automated},
    }
