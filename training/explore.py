"""Search over action plans: every plan through the real graph with a scripted policy, on every support
episode, scored by the paper's Eq. 3 (NDCG@10 minus call costs). Plans that share their steps share
one run (the score node forked by LangGraph time travel); the search resumes from its JSONL after a
kill.
"""

from __future__ import annotations

import contextlib
import itertools
import json
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

    def explore_one(ep: dict) -> dict:
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
        return {"id": ep["id"], "family": ep["family"], "outcomes": [outcomes[tuple(plan)] for plan in plans]}

    return explore_resumably(episodes, explore_one, resume=resume, desc="explore action plans")


def explore_resumably(episodes: list[dict], explore_one, *, resume: Path | None, desc: str) -> list[dict]:
    """`explore_one(ep)` on each episode, in order; `resume`: a JSONL file receiving each finished
    entry as it finishes, so a rerun explores only the episodes not in it."""
    done = _finished_lines(resume) if resume is not None else {}
    explored = []
    with resume.open("a") if resume is not None else contextlib.nullcontext() as sink:
        for ep in tqdm(episodes, desc=desc, unit="ep", initial=sum(e["id"] in done for e in episodes)):
            if ep["id"] in done:
                explored.append(done[ep["id"]])
                continue
            explored.append(explore_one(ep))
            if sink is not None:
                sink.write(json.dumps(explored[-1]) + "\n")
                sink.flush()
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
    prompt the policy reads and how evidence reads in it, the evidence's models, the data), and
    the seconds it took (0 when cached)."""
    from mma_agent.graphs.prompts import observation_prompt, request_prompt, system_prompt
    from mma_agent.modalities import Modality
    from mma_agent.models.relevance import relevance_feature
    from mma_agent.toolkits.evidence import Strength

    tools = tool_vocabulary(toolkits)
    plans = action_plans(tools, interactive=interactive)
    sample = Strength("strong", 1, 2, 10, 2.0, 1)
    shown = [
        system_prompt(tools.names(interactive=interactive), "weights", 8, tools=tools, style=prompt),
        request_prompt(1, 2, style=prompt),
        observation_prompt("o", 1, 8, style=prompt),
        observation_prompt("o", 7, 8, style=prompt),  # the last turn's
        sample.line,  # how evidence reads in a full observation
        sample.brief,  # and in a compact one
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


def summarize(best: list[dict]) -> dict[str, float]:
    """Mean best reward and how often each tool comes first in the best plans."""
    rewards = np.array([b["reward"] for b in best])
    first = [json.loads(b["plan"][0])["tool"] for b in best]
    return {
        "episodes": len(best),
        "mean best reward": float(rewards.mean()),
        **{f"first={s.name}": first.count(s.name) / len(first) for s in tool_vocabulary().automated},
    }
