"""The methods the evaluation graphs compare, behind one interface.

Every method scores one episode's pool: `score(ep)` returns the method's own score per candidate
(aligned with `ep["candidates"]`, before fusion) or None when it cannot score this episode (its
modality is masked, the agent fell back, ...), plus an info dict for diagnostics. The runner fuses
with the first-stage scores for every alpha of a grid (Eq. 2) and stores the metrics of each, so
alpha is picked on validation afterwards without re-running anything. None means the first-stage
ranking, which is what an embedding app gets from a method that cannot help.

Rows (see `build_methods`):
- first stage: the pool's own first-stage scores; each CF retriever (Popularity, ItemKNN, BPR-MF,
  LightGCN) re-scoring the pool where behaviour is visible.
- single modality: one evidence tool (text, image, graph) and nothing else, through the real graph.
- completion: late fusion of text, image and behaviour similarity to the user's history, with the
  masked modalities' item features completed from a bank of other catalogue items: zero, mean,
  neighbour-mean (the k nearest bank items in a visible modality) or feature propagation over the
  kNN graph of a visible modality (Malitesta et al.). Like every completion method, these read
  the masked modality of *other* items (the bank); the agent methods never do.
- trained multimodal: scaled-down MARGO-style and MAGNET-style models (`fusion_models.py`).
- LLM listwise: the backend model orders the first-stage top window by titles (RankGPT style).
- probes and ceiling (never fused): user-blind protocol probes (random, popularity, lowest
  first-stage score, pool centrality per modality) and the oracle reranker.
- the user's own rerankers (`UserMethod`, `mma eval run --method package.module:attr`).
- agents: RuleRouter-Fuse, the lookup control (the best action per observed availability pattern on
  the support episodes, `training/routing.py`), ReAct zero-shot (free-form actions, no constrained decoding), MMA-Auto
  (zero-shot, or any trained policy folder), MMA-Interactive (simulated user).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mma_agent.evals.baselines import CompletionFusion, ListwiseLLM, RetrieverMethod, TrainedFusion, UserMethod
from mma_agent.evals.environment import Method
from mma_agent.evals.probes import CentralityProbe, LowestFirstStageProbe, Oracle, PopularityProbe, RandomProbe
from mma_agent.graphs.state import SCORE_TOOL, rerank_request, trace_stats
from mma_agent.toolkits import tool_vocabulary
from mma_agent.toolkits.base import ToolSpec

FIRST_STAGE = "First stage (the family's retriever)"


class FirstStage(Method):
    """The family's first-stage retriever itself (the pool's order)."""

    group = "first stage"

    def __init__(self) -> None:
        self.name = FIRST_STAGE

    def score(self, ep):
        return np.asarray(ep["first_stage_scores"], dtype=float), {}


class AgentMethod(Method):
    """The reranker graph with a policy: scripted plan, rule router, or an LLM backend.
    `learned=False` runs it on zero-shot evidence only (the toolkits without their learned channels)."""

    group = "agent"

    def __init__(
        self,
        name: str,
        *,
        model: str | None = None,
        variant: str = "auto",
        plan: list[str] | None = None,
        prefill: bool | None = None,
        group: str = "agent",
        learned: bool = True,
        lookup: bool = False,
    ) -> None:
        self.name, self.model_spec, self.variant, self.plan, self.prefill, self.group = name, model, variant, plan, prefill, group
        self.uses_llm, self.learned, self.lookup = model is not None, learned, lookup

    def setup(self, env):
        from mma_agent.graphs.reranker import create_mma_reranker

        super().setup(env)
        self.graph = None
        self.catalogue, self.kits = (env.catalogue, env.kits) if self.learned else env.pipeline.toolkits(learned=False)
        router = None
        if self.lookup:  # the learned non-LLM control, fitted on the support episodes by `mma train eval`
            from mma_agent.training.routing import LookupRouter

            path = env.pipeline.train_dir("lookup") / "table.json"
            if not path.is_file():
                msg = f"{self.name}: no lookup table at {path}; `mma train eval` fits it on the support episodes"
                raise FileNotFoundError(msg)
            router = LookupRouter.load(path)
        if self.plan is not None:  # a scripted plan: one stateless scripted model serves every episode
            from mma_agent.llm.scripted import ScriptedChatModel

            model, backend = ScriptedChatModel(responses=self.plan), {"prefill": False}
        else:
            model, backend = (env.chat_model(self.model_spec) if self.model_spec else None), {"prefill": self.prefill}
        self.graph = create_mma_reranker(
            model, catalogue=self.catalogue, toolkits=self.kits, variant=self.variant, backend=backend, router=router
        ).compile()

    def score(self, ep):
        out = self.graph.invoke(
            rerank_request(ep, with_target=self.variant == "interactive")
        )  # the simulated user answers about the target
        info = trace_stats(out)
        if out.get("fallback") or not out.get("mma_scores"):
            return None, info
        return np.array([out["mma_scores"][c] for c in ep["candidates"]], dtype=float), info


def single_tool_plan(spec: ToolSpec) -> list[str]:
    """Call one evidence tool, then score on its group alone."""
    return [json.dumps({"tool": spec.name, "args": {}}), json.dumps({"tool": SCORE_TOOL, "args": {"weights": {spec.group: 1}}})]


class ChannelRow(Method):
    """One evidence tool's channels alone, no policy: its zero-shot channels or its learned one
    (mma_agent/models/relevance.py), called directly on the episode (what the tool's group weighs)."""

    group = "evidence"

    def __init__(self, spec: ToolSpec, learned: bool) -> None:
        self.spec, self.learned = spec, learned
        self.name = f"Evidence: {spec.group} {'learned' if learned else 'zero-shot'} channel"

    def score(self, ep):
        from mma_agent.toolkits.base import LEARNED
        from mma_agent.toolkits.evidence import group_score

        ev = self.env.evidence(ep, learned=self.learned)
        chans = [ev[c] for c in self.spec.channel_names if c in ev and (c == self.spec.channel(LEARNED)) == self.learned]
        if not chans:
            return None, {"reason": f"{self.spec.name} gave no {'learned' if self.learned else 'zero-shot'} evidence"}
        return group_score(chans), {}


class MenuRow(Method):
    """A fixed entry of the weight menu (`ToolVocabulary.weight_menu`) over every automated tool's
    evidence: what a policy that gathers everything and always picks this entry scores."""

    group = "weight menu"

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = weights
        self.name = f"Menu: {json.dumps(weights) if weights else 'equal weights'}"

    def score(self, ep):
        from mma_agent.graphs.fusion import weighted_evidence

        out = weighted_evidence(self.env.evidence(ep), tool_vocabulary(self.env.kits).groups, self.weights)
        return out, {} if out is not None else {"reason": "every tool answered Null"}


PROBES = (
    "random-probe",
    "popularity-probe",
    "lowest-first-stage-probe",
    "centrality-probe-text",
    "centrality-probe-image",
    "centrality-probe-behaviour",
    "oracle",
)  # every report table carries these rows


LOOKUP = "Lookup control (no LLM)"  # the lookup control's row (the report pairs MMA-Auto with it)


def build_methods(
    names: list[str] | None,
    *,
    zero_shot: str,
    trained: dict[str, str],
    user: list[str] | None = None,
    interactive: str | None = None,
) -> list[Method]:
    """The method rows by short name (default: all), then the user's own (`package.module:attr`).
    `trained`: label -> backend of trained policies; `interactive`: MMA-Interactive's backend
    (default: the first trained policy, else the zero-shot model)."""
    table: dict[str, Any] = {
        "first-stage": FirstStage,
        "popularity": lambda: RetrieverMethod("popularity"),
        "itemknn": lambda: RetrieverMethod("itemknn"),
        "bprmf": lambda: RetrieverMethod("bprmf"),
        "lightgcn": lambda: RetrieverMethod("lightgcn"),
        **{
            f"{s.group}-sim": lambda s=s: AgentMethod(
                f"Single modality: {s.group}", plan=single_tool_plan(s), group="single modality"
            )
            for s in tool_vocabulary().automated
        },
        "completion-zero": lambda: CompletionFusion("zero"),
        "completion-mean": lambda: CompletionFusion("mean"),
        "completion-neighbour": lambda: CompletionFusion("neighbour-mean"),
        "completion-fp": lambda: CompletionFusion("feature-propagation"),
        "margo": lambda: TrainedFusion("margo"),
        "magnet": lambda: TrainedFusion("magnet"),
        "random-probe": RandomProbe,
        "popularity-probe": PopularityProbe,
        "lowest-first-stage-probe": LowestFirstStageProbe,
        "centrality-probe-text": lambda: CentralityProbe("text"),
        "centrality-probe-image": lambda: CentralityProbe("image"),
        "centrality-probe-behaviour": lambda: CentralityProbe("behaviour"),
        "oracle": Oracle,
        "rule": lambda: AgentMethod("RuleRouter-Fuse", variant="rule"),
        "rule-zero-shot": lambda: AgentMethod("RuleRouter-Fuse (zero-shot evidence)", variant="rule", learned=False),
        "lookup": lambda: AgentMethod(LOOKUP, variant="rule", lookup=True),
        **{
            f"{s.group}-{kind}": lambda s=s, kind=kind: ChannelRow(s, kind == "learned")
            for s in tool_vocabulary().automated
            for kind in ("zero-shot", "learned")
        },
        **{
            "menu-" + ("equal" if not w else "-".join(f"{g}{int(100 * v)}" for g, v in w.items())): lambda w=w: MenuRow(w)
            for w in tool_vocabulary().weight_menu(s.group for s in tool_vocabulary().automated)
        },
        "listwise": lambda: ListwiseLLM(zero_shot),
        "react": lambda: AgentMethod("ReAct zero-shot (free-form)", model=zero_shot, prefill=False, group="LLM"),
        "mma-zero-shot": lambda: AgentMethod("MMA-Auto (zero-shot)", model=zero_shot),
        "mma-interactive": lambda: AgentMethod(
            "MMA-Interactive", model=interactive or next(iter(trained.values()), zero_shot), variant="interactive"
        ),
    }
    for label, backend in trained.items():
        table[f"mma-{label.lower()}"] = lambda label=label, backend=backend: AgentMethod(f"MMA-Auto ({label})", model=backend)
    chosen = list(table) if names is None else names
    unknown = [n for n in chosen if n not in table]
    if unknown:
        msg = f"unknown methods {unknown}; choose from {list(table)}, or pass your own with --method package.module:attr"
        raise ValueError(msg)
    return [table[n]() for n in chosen] + [UserMethod(spec) for spec in user or []]
