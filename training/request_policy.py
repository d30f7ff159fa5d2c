"""Training the policy to read the person's request: facet query episodes of the validation
split's "fit" half of the users, the plan space of a request, and action labels pooled by the kind
of request.

Episodes. The validation facet query episodes of `mma eval queries` (protocol v2 pools and
relevance: all of the user's held-out validation positives, the query's source among them, never
the facet), of the users in the "fit" half (`training.queries.validation_half`), a seeded draw of
`per_family` per family split 80/20 into support and query. Their held-out items are out of sample
for every evidence tool: the train split's are not (the graph and the learned relevance were
fitted on them, so a policy trained there learns that behaviour evidence always wins). The
"select" half chooses the policy's alpha; the test split is only evaluated; the users' own tags
(real words) are never trained on.

Plans. The history tools in vocabulary order (what the policy observes: each answers evidence or
Null under the family's mask), then no request tool, one, or all of them, each reading the whole request, then
scoring with each entry of the weight menu over the groups gathered. Plans that share their
steps share one run: the score node is forked by LangGraph time travel, as in
`training.explore`, so every reward comes from the graph's own score node.

Labels. One target's NDCG is a noisy value, and the per-pool best plan does not transfer (the
split-half oracle of `mma eval queries`), so the labels are pooled and shrunk towards one plan.
The prior is the plan that reads everything: every request tool, equal weights (the fixed fusion's
choice on most families). An availability pattern (what the history tools answered) gets its own
fixed choice, the (request option, weight entry) with the best mean NDCG@10 over its episodes (the
best mean Eq. 3 reward among ties), only where that transfers: chosen on one half of the pattern's
episodes it beats the prior on the other half, both ways round (a paired one-sided Wilcoxon test
at TRANSFER_P each way: higher means alone pass by chance one time in four). A kind of request gets its own
choice the same way against its pattern's label (at least `min_states` episodes each); elsewhere
the label stays. A choice among a menu's many entries on a few hundred episodes that does not
transfer is noise: measured, the unshrunk labels scored below the fixed fusion in every family
(`evals/results/query/imitation/report.md`). The policy never sees the kind: it reads it from the words.

Why NDCG@10 and not Eq. 3's reward: Eq. 3 charges 0.02 per tool call, more than reading the
request adds to NDCG@10 on average here (`evals/results/query/report.md`), so under it the best
plan never reads the request. Both are stored per plan; `evals/results/query/request-labels.md` shows what each teaches.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mma_agent.toolkits.base import ToolVocabulary


ANY_KIND = "*"  # label_table's key for a family's label whatever the kind of request


def fit_episodes(valid_episodes: list[dict], *, per_family: int | None = 100, seed: int = 0) -> list[dict]:
    """The training episodes among validation facet query episodes: the "fit" half's users, a seeded
    draw of `per_family` per family (None: all), the first 80% of each draw support, the rest query.
    Each gets an `id` (split|family|pool) and a `part`."""
    from mma_agent.training.queries import validation_draw

    episodes = []
    for family, drawn in validation_draw(valid_episodes, "fit", per_family, seed=seed).items():
        n_support = int(round(0.8 * len(drawn)))
        episodes += [
            {**e, "id": f"{e['split']}|{family}|{e['pool']}", "part": "support" if j < n_support else "query"}
            for j, e in enumerate(drawn)
        ]
    return episodes


def request_options(tools) -> list[str]:
    """The request part of the plan space: "" (no request tool), each request tool alone, and every
    request tool ("+"-joined, in vocabulary order: the fixed fusion's choice on most families)."""
    names = [s.name for s in tools.automated if s.reads_request is not None]
    return ["", *names, *(["+".join(names)] if len(names) > 1 else [])]


def option_tools(option: str) -> list[str]:
    """The request tools one request option calls, in order."""
    return option.split("+") if option else []


def _action(tool: str, args: dict) -> str:
    return json.dumps({"tool": tool, "args": args})


def explore_request_plans(
    episodes: list[dict], catalogue, toolkits, *, alpha: float = 0.5, resume: Path | None = None
) -> list[dict]:
    """Every plan of the request plan space on every episode through the real graph (a scripted
    policy). One entry per episode: its id, family, kind, and per request option (`request_options`)
    the conversation before scoring, the pattern observed, and each weight
    entry's reward (Eq. 3 against the episode's relevant items) and NDCG@10. `resume`: a JSONL file
    receiving each finished entry; a rerun explores only the episodes not in it."""
    from langgraph.checkpoint.memory import InMemorySaver

    from mma_agent.graphs.policy import gathered_groups
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.graphs.state import POLICY, SCORE, SCORE_TOOL, rerank_request
    from mma_agent.llm.scripted import ScriptedChatModel
    from mma_agent.metrics import ndcg_at_k
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.training.explore import explore_resumably
    from mma_agent.training.rewards import episode_reward
    from mma_agent.training.routing import trace_pattern

    tools = tool_vocabulary(toolkits).for_request("words")
    history = [_action(s.name, {}) for s in tools.automated if s.reads_request is None]
    options = request_options(tools)
    equal = _action(SCORE_TOOL, {"weights": {}})
    saver = InMemorySaver()
    graphs = {
        r: create_mma_reranker(
            ScriptedChatModel(responses=[*history, *(_action(t, {}) for t in option_tools(r)), equal]),
            catalogue=catalogue,
            toolkits=toolkits,
            alpha=alpha,
            backend={"prefill": False},
        ).compile(checkpointer=saver)
        for r in options
    }

    def explore_one(ep: dict) -> dict:
        request = rerank_request(ep, with_target=False)
        runs = {}
        for r, graph in graphs.items():
            config = {"configurable": {"thread_id": f"{ep['id']}#{r}"}}
            first = graph.invoke(request, config)
            before = next(s for s in graph.get_state_history(config) if s.next == (SCORE,))
            rewards, ndcg = {}, {}
            for w in tools.weight_menu(gathered_groups(tools, first["trace"])):
                out = (
                    first
                    if not w
                    else graph.invoke(
                        None,
                        graph.update_state(
                            before.config, {"action": {"tool": SCORE_TOOL, "args": {"weights": w}}}, as_node=POLICY
                        ),
                    )
                )
                rewards[json.dumps(w)] = episode_reward(out, set(ep["relevant"]))
                ndcg[json.dumps(w)] = ndcg_at_k(out["ranking"], set(ep["relevant"]), 10)
            runs[r] = {
                "messages": first["messages"][:-1],
                "pattern": [list(x) for x in trace_pattern(first["trace"])],
                "rewards": rewards,
                "ndcg": ndcg,
            }
            saver.delete_thread(config["configurable"]["thread_id"])
        return {"id": ep["id"], "family": ep["family"], "kind": ep["query_kind"], "query": ep["query"], "runs": runs}

    return explore_resumably(episodes, explore_one, resume=resume, desc="explore request plans")


def request_kind(kind: str) -> str:
    """A query's kind with its facet types in a fixed order ("era+anchor" and "anchor+era" pool together)."""
    return "+".join(sorted(kind.split("+")))


def pooled_request_labels(explored: list[dict], *, min_states: int = 8) -> dict[str, tuple[str, str]]:
    """Episode id -> (request option, weights JSON): the prior (every request tool, equal weights),
    else its availability pattern's choice, else its kind's, each only where it transfers between
    halves (see the module's docstring)."""
    by_pattern: dict[tuple, list[dict]] = defaultdict(list)
    for e in explored:
        by_pattern[_pattern(e)].append(e)
    labels = {}
    for eps in by_pattern.values():
        prior = (max(eps[0]["runs"], key=lambda r: len(option_tools(r))), "{}")
        fixed = _transferred(eps, prior, min_states)
        by_kind: dict[str, list[dict]] = defaultdict(list)
        for e in eps:
            by_kind[request_kind(e["kind"])].append(e)
        for kind_eps in by_kind.values():
            labels |= dict.fromkeys((e["id"] for e in kind_eps), _transferred(kind_eps, fixed, min_states))
    return labels


TRANSFER_P = (
    0.05  # a choice transfers where it beats its baseline on the other half at this one-sided Wilcoxon p, both ways round
)


def _transferred(eps: list[dict], baseline: tuple[str, str], min_states: int) -> tuple[str, str]:
    """The best choice over `eps` where it transfers, else `baseline`: with at least `min_states`
    episodes, the choice made on one half (by id) beats the baseline on the other half, both ways
    round, each by a paired one-sided Wilcoxon test at TRANSFER_P (a mean that is higher by chance
    passes one half in two; the test, about one in twenty)."""
    if len(eps) < min_states:
        return baseline
    half = {e["id"]: i % 2 for i, e in enumerate(sorted(eps, key=lambda e: e["id"]))}
    a = [e for e in eps if half[e["id"]] == 0]
    b = [e for e in eps if half[e["id"]] == 1]
    return _choice(eps) if _beats(b, _choice(a), baseline) and _beats(a, _choice(b), baseline) else baseline


def _beats(eps: list[dict], choice: tuple[str, str], baseline: tuple[str, str]) -> bool:
    """Whether `choice` scores a higher NDCG@10 than `baseline` on `eps`, paired, one-sided Wilcoxon p < TRANSFER_P."""
    from scipy.stats import wilcoxon

    if choice == baseline:
        return False
    mine, theirs = _ndcgs(eps, choice), _ndcgs(eps, baseline)
    if mine is None:
        return False
    if theirs is None:
        return True
    d = mine - theirs
    return bool(np.any(d != 0)) and float(wilcoxon(d, zero_method="wilcox", alternative="greater").pvalue) < TRANSFER_P


def _ndcgs(eps: list[dict], choice: tuple[str, str]) -> np.ndarray | None:
    """Each episode's NDCG@10 under one (request option, weights JSON), None where one lacks it."""
    r, w = choice
    if any(r not in e["runs"] or w not in e["runs"][r]["ndcg"] for e in eps):
        return None
    return np.array([e["runs"][r]["ndcg"][w] for e in eps], dtype=float)


def label_table(explored: list[dict], labels: dict[str, tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """(family, kind of request) -> the labels' most common (request option, weights JSON) there:
    the labels as a lookup table, what SFT imitates, to run on episodes no exploration saw
    (`mma eval queries --label-table`, through `table_label`). (family, ANY_KIND) holds the family's
    most common label, for kinds the exploration never met. Ties: the first in sorted order."""
    from collections import Counter

    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for e in explored:
        for kind in (request_kind(e["kind"]), ANY_KIND):
            counts[(e["family"], kind)][labels[e["id"]]] += 1
    return {key: max(sorted(c), key=lambda label: c[label]) for key, c in sorted(counts.items())}


def table_label(table: dict[tuple[str, str], tuple[str, str]], family: str, kind: str) -> tuple[str, str]:
    """One episode's (request option, weights JSON) from `label_table`: its kind's, else its family's,
    else no request tool with equal weights."""
    return table.get((family, request_kind(kind)), table.get((family, ANY_KIND), ("", "{}")))


def follows_label(actions: list[dict], label: tuple[str, str], request_tools: Collection[str]) -> tuple[bool, bool]:
    """Whether a policy's actions on one episode follow its (request option, weights JSON) label: the
    request tools it called, as a set, are the option's; and, with those, its last scoring weights are the label's."""
    from mma_agent.graphs.state import SCORE_TOOL

    option, w = label
    same_tools = sorted({a.get("tool") for a in actions if a.get("tool") in request_tools}) == sorted(option_tools(option))
    scores = [a for a in actions if a.get("tool") == SCORE_TOOL]
    weights = (scores[-1].get("args") or {}).get("weights", {}) if scores else None
    return same_tools, same_tools and weights == json.loads(w)


def _pattern(e: dict) -> tuple:
    return tuple((t, bool(null)) for t, null in e["runs"][""]["pattern"])


def _mean(eps: list[dict], choice: tuple[str, str]) -> tuple[float, float]:
    """Mean NDCG@10 and mean Eq. 3 reward of one (request option, weights JSON) over episodes
    (-inf where one lacks it)."""
    ndcg = _ndcgs(eps, choice)
    if ndcg is None:
        return -np.inf, -np.inf
    r, w = choice
    return float(ndcg.mean()), float(np.mean([e["runs"][r]["rewards"][w] for e in eps]))


def _choice(eps: list[dict]) -> tuple[str, str]:
    """The (request option, weights JSON) with the best mean NDCG@10 over `eps`, the best mean
    reward among ties (fewer tool calls); then the first."""
    best, value = ("", "{}"), (-np.inf, -np.inf)
    for r in eps[0]["runs"]:
        for w in eps[0]["runs"][r]["ndcg"]:
            v = _mean(eps, (r, w))
            if (round(v[0], 12), v[1]) > (round(value[0], 12), value[1] + 1e-12):
                best, value = (r, w), v
    return best


def request_sft_rows(
    explored: list[dict],
    labels: dict[str, tuple[str, str]],
    *,
    history_share: float = 1.0,
    seed: int = 0,
    tools: ToolVocabulary | None = None,
) -> list[dict]:
    """TRL conversational prompt-completion rows along each episode's labelled plan: every action
    given the conversation before it, the request tool's action reading the whole request in the
    words constrained decoding completes (`request_parts(query)[0]`); the weights once more from
    the conversation with the words withheld, which is where the reranker reads them
    (`graphs.prompts.withhold_request`).

    `history_share`: the share of episodes (a seeded draw) whose history-tool rows are kept. Every
    labelled plan calls the history tools in the same order, so those rows teach one fixed prefix and
    are most of the tokens; the rows after them (which request tools, then the weights) are the
    decisions, and every episode keeps those.

    `tools` (the reranker's vocabulary): each row also carries `allowed`, the continuations
    constrained decoding offers at its state, so SFT puts its loss on the tokens where they differ
    (`training.sft.choice_token_rows`)."""
    from mma_agent.graphs.policy import completions, scoring_only
    from mma_agent.graphs.prompts import withhold_request
    from mma_agent.graphs.state import SCORE_TOOL
    from mma_agent.toolkits.base import request_parts

    if not 0.0 <= history_share <= 1.0:
        raise ValueError(f"history_share must be in [0, 1], got {history_share}")
    keep_history = np.random.default_rng(seed).random(len(explored)) < history_share
    rows = []
    for e, with_history in zip(explored, keep_history, strict=True):
        r, w = labels[e["id"]]
        n_history = len(e["runs"][""]["pattern"])  # the plan without a request tool calls the history tools only
        messages = [dict(m) for m in e["runs"][r]["messages"]]
        parts = request_parts(e["query"])
        whole = parts[0]
        vocab = tools.for_request(e["query"]) if tools is not None else None
        for m in messages:
            tool = json.loads(m["content"]).get("tool") if m["role"] == "assistant" else None
            if tool in option_tools(r):
                m["content"] = _action(tool, {"words": whole})
        messages.append({"role": "assistant", "content": _action(SCORE_TOOL, {"weights": json.loads(w)})})
        actions = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        pattern = e["runs"][r]["pattern"]
        for k, i in enumerate(actions):
            if not (with_history or k >= n_history):
                continue
            row = {"prompt": messages[:i], "completion": [messages[i]]}
            if vocab is not None:
                trace = [
                    {"action": json.loads(messages[j]["content"]), "null": bool(null)}
                    for j, (_, null) in zip(actions[:k], pattern, strict=False)
                ]
                row["allowed"] = completions(vocab, vocab.names(interactive=False), trace, parts=parts)
            rows.append(row)
            if i == actions[-1]:  # the weights, asked again with the words withheld (as the reranker does)
                again = {**row, "prompt": withhold_request(messages[:i], e["query"])}
                if "allowed" in row:
                    again["allowed"] = scoring_only(row["allowed"])
                rows.append(again)
    return rows
