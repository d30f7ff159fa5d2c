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
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from mma_agent.graphs.state import SCORE_TOOL, rerank_request, trace_stats
from mma_agent.modalities import TASK_FAMILIES, Mask
from mma_agent.toolkits import tool_vocabulary
from mma_agent.toolkits.base import ToolSpec
from mma_agent.util import atomic_write, json_digest, l2_normalize, minmax

log = logging.getLogger(__name__)
FIRST_STAGE = "First stage (the family's retriever)"


@dataclass
class EvalEnv:
    """What methods share: the pipeline, catalogue and toolkits, and lazily loaded models."""

    pipeline: Any
    catalogue: Any
    kits: dict
    model_cache: dict = field(default_factory=dict)

    @cached_property
    def item_features(self) -> dict[str, np.ndarray]:
        """Unit-norm item features of every catalogue item, unmasked (text, image, LightGCN item
        vectors): what the completion, trained-fusion and probe rows start from. Masks apply per episode."""
        full = self.catalogue.view(Mask())
        lightgcn, _ = self.pipeline.retriever("lightgcn")
        feats = {"text": full.feature("text"), "image": full.feature("image"), "behaviour": lightgcn.item_vecs}
        return {m: l2_normalize(np.nan_to_num(np.asarray(f, dtype=np.float32))) for m, f in feats.items() if f is not None}

    def evidence(self, ep: dict, *, learned: bool = True) -> dict[str, np.ndarray]:
        """Every automated tool's channels on the episode, each tool called once through its toolkit
        under the episode's mask (`learned=False`: the toolkits without their learned channels,
        i.e. zero-shot evidence only), cached for the rows that read them."""
        from mma_agent.toolkits.base import EpisodeContext

        key = (ep["split"], ep["family"], ep["pool"], learned)
        if key not in self._evidence:
            catalogue, kits = (self.catalogue, self.kits) if learned else self.pipeline.toolkits(learned=False)
            tools = tool_vocabulary(kits)
            ctx = EpisodeContext(
                catalogue.view(Mask(**ep["mask"])),
                np.asarray(ep["hist_idx"], dtype=np.int64),
                np.asarray(ep["cand_idx"], dtype=np.int64),
                ep["user"],
                first_stage=np.asarray(ep["first_stage_scores"], dtype=float),
            )
            channels = {}
            for spec in tools.automated:
                kit = kits.get(tools.owner(spec.name))
                if kit is not None:
                    channels.update(kit.call(spec.name, ctx).channels)
            self._evidence[key] = channels
        return self._evidence[key]

    @cached_property
    def _evidence(self) -> dict[tuple, dict[str, np.ndarray]]:
        return {}

    def chat_model(self, spec: str, **kwargs):
        from mma_agent.llm import resolve_chat_model

        key = (spec, tuple(sorted(kwargs.items())))
        if key not in self.model_cache:
            self.model_cache[key] = resolve_chat_model(spec, cache_dir=self.pipeline.config.workdir / "models", **kwargs)
        return self.model_cache[key]


class Method:
    name: str = ""
    uses_llm: bool = False
    group: str = ""
    fused: bool = True  # reported at the validation-chosen alpha of Eq. 2; False: its own scores alone (probes, the oracle)
    uses_pool_structure: bool = False  # compares candidates with each other (see CentralityProbe)
    stochastic: bool = False  # set up once per seed (`setup(env, seed=...)`) and run for every seed

    def setup(self, env: EvalEnv) -> None:
        self.env = env

    def score(self, ep: dict) -> tuple[np.ndarray | None, dict]:
        raise NotImplementedError


class FirstStage(Method):
    """The family's first-stage retriever itself (the pool's order)."""

    group = "first stage"

    def __init__(self) -> None:
        self.name = FIRST_STAGE

    def score(self, ep):
        return np.asarray(ep["first_stage_scores"], dtype=float), {}


class RetrieverMethod(Method):
    """A CF retriever re-scoring the pool; needs behaviour (it is learned from interactions)."""

    group = "first stage"

    def __init__(self, retriever: str) -> None:
        self.retriever, self.name = (
            retriever,
            {"popularity": "Popularity", "itemknn": "ItemKNN", "bprmf": "BPR-MF", "lightgcn": "LightGCN"}[retriever],
        )

    def setup(self, env):
        super().setup(env)
        self.model, _ = env.pipeline.retriever(self.retriever)

    def score(self, ep):
        if not ep["mask"]["behaviour"]:
            return None, {"reason": "behaviour is masked"}
        return self.model.score(np.array([ep["user"]]))[0][ep["cand_idx"]].astype(float), {}


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

            path = env.pipeline.root / "train" / "lookup" / "table.json"
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
    (mma_agent/relevance.py), called directly on the episode (what the tool's group weighs)."""

    group = "evidence"

    def __init__(self, spec: ToolSpec, learned: bool) -> None:
        self.spec, self.learned = spec, learned
        self.name = f"Evidence: {spec.group} {'learned' if learned else 'zero-shot'} channel"

    def score(self, ep):
        from mma_agent.toolkits.base import LEARNED, group_score

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


class CompletionFusion(Method):
    """Late fusion of per-modality similarity to the history, masked modalities completed from a bank."""

    group = "completion"
    MODALITIES = ("text", "image", "behaviour")

    def __init__(self, imputation: str, k: int = 10, iterations: int = 10) -> None:
        if imputation not in ("zero", "mean", "neighbour-mean", "feature-propagation"):
            raise ValueError(f"unknown imputation {imputation!r}")
        self.imputation, self.k, self.iterations = imputation, k, iterations
        self.uses_pool_structure = imputation == "feature-propagation"  # edges between the episode's items
        self.name = {
            "zero": "Completion: zero",
            "mean": "Completion: mean",
            "neighbour-mean": "Completion: neighbour-mean",
            "feature-propagation": "Completion: feature propagation",
        }[imputation]

    def setup(self, env):
        super().setup(env)
        self.features = env.item_features
        # the bank: the catalogue items whose features an offline imputer may read, i.e. every item
        # but the episode's own (chosen without reading which items are held out, which would tell
        # the imputed features apart)
        self.bank = np.arange(env.pipeline.split.n_items, dtype=np.int64)

    def score(self, ep):
        visible = [m for m in self.MODALITIES if ep["mask"][m] and m in self.features]
        missing = [m for m in self.MODALITIES if not ep["mask"][m] and m in self.features]
        items = np.concatenate([ep["cand_idx"], ep["hist_idx"]])
        n_c = len(ep["cand_idx"])
        bank = self.bank[~np.isin(self.bank, items)]
        channels = []
        for m in visible:
            channels.append(_history_cosine(self.features[m][items], n_c))
        if missing and self.imputation != "zero" and visible:
            anchor = self.features[visible[0]]
            for m in missing:
                channels.append(_history_cosine(self._impute(anchor, self.features[m], items, bank), n_c))
        channels = [c for c in channels if np.ptp(c) > 0]
        if not channels:
            return None, {"reason": "no modality to score with"}
        return np.mean([minmax(c) for c in channels], axis=0), {"imputed": missing if self.imputation != "zero" else []}

    def _impute(self, anchor: np.ndarray, target: np.ndarray, items: np.ndarray, bank: np.ndarray) -> np.ndarray:
        if self.imputation == "mean":
            return np.repeat(target[bank].mean(axis=0, keepdims=True), len(items), axis=0)
        sims = anchor[items] @ anchor[bank].T  # episode items x bank, in a visible modality
        k = min(self.k, len(bank) - 1)
        nn = np.argpartition(-sims, k, axis=1)[:, :k]
        if self.imputation == "neighbour-mean":
            return l2_normalize(target[bank[nn]].mean(axis=1))
        # feature propagation (Rossi et al.; Malitesta et al. for missing modalities): each episode
        # item repeatedly takes the mean of its k nearest nodes among the episode items and the
        # bank, bank features clamped. Only unknown rows change, so only their kNN rows are needed.
        n = len(items)
        s_ii = anchor[items] @ anchor[items].T
        np.fill_diagonal(s_ii, -np.inf)
        s_all = np.concatenate([s_ii, sims], axis=1)
        k = min(self.k, s_all.shape[1] - 1)
        knn = np.argpartition(-s_all, k, axis=1)[:, :k]
        inner = knn < n
        from_bank = np.where(inner, 0, knn - n)
        const = (target[bank[from_bank]] * (~inner)[..., None]).sum(axis=1) / k  # the clamped neighbours' share
        x = np.zeros((n, target.shape[1]), dtype=np.float32)
        for _ in range(self.iterations):
            x = const + (x[np.where(inner, knn, 0)] * inner[..., None]).sum(axis=1) / k
        return l2_normalize(x)


class TrainedFusion(Method):
    """A scaled-down MARGO- or MAGNET-style model (see `fusion_models.py`), trained once on the
    train split and cached under the workdir."""

    group = "trained multimodal"
    stochastic = True

    def __init__(self, kind: str, seed: int = 0) -> None:
        self.kind, self.seed = kind, seed
        self.name = {"margo": "MARGO-style (reliability-weighted fusion)", "magnet": "MAGNET-style (dual view, role experts)"}[
            kind
        ]

    def setup(self, env, seed: int | None = None):
        import torch

        from .fusion_models import content_view, load_fusion, train_fusion

        super().setup(env)
        self.seed = self.seed if seed is None else seed
        if not hasattr(self, "features"):  # the same for every seed
            self.features = content_view(env.item_features) if self.kind == "magnet" else env.item_features
        full = env.catalogue.view(Mask())
        split = env.pipeline.split
        key = json_digest([split.fingerprint(), self.kind, {m: list(f.shape) for m, f in self.features.items()}, self.seed])
        path = env.pipeline.root / "evals" / f"{self.kind}-{key}.pt"
        dims = {m: f.shape[1] for m, f in self.features.items()}
        if path.is_file():
            self.model = load_fusion(self.kind, dims, torch.load(path))
        else:
            self.model = train_fusion(self.kind, self.features, [full.history(u) for u in range(split.n_users)], seed=self.seed)
            log.info("%s: loss per epoch %s, stages %s", self.name, [round(c, 4) for c in self.model.curve], self.model.stages)
            atomic_write(path, lambda tmp: torch.save(self.model.state_dict(), tmp))

    def score(self, ep):
        from .fusion_models import score_pool

        out = score_pool(self.model, self.features, ep["mask"], np.asarray(ep["hist_idx"]), np.asarray(ep["cand_idx"]))
        return out, {} if out is not None else {"reason": "no visible modality"}


class Probe(Method):
    """A user-blind protocol probe: it never looks at the user's history (the lowest-first-stage
    probe reads only the pool's own order), so anything it finds comes from the shape of the pools. Reported alone (alpha 0), never fused with the first stage;
    a method that does not beat the probes has not shown anything. Probes read every modality in
    every family (they diagnose the pools, they are not methods)."""

    group = "protocol probe"
    fused = False


class RandomProbe(Probe):
    name = "Probe: random order"

    def score(self, ep):
        seed = [0, ["valid", "test"].index(ep["split"]), list(TASK_FAMILIES).index(ep["family"]), ep["pool"]]
        return np.random.default_rng(seed).random(len(ep["candidates"])), {}


class PopularityProbe(Probe):
    name = "Probe: popularity"

    def setup(self, env):
        super().setup(env)
        self.pop = np.asarray(env.pipeline.split.matrix("train").sum(axis=0), dtype=float).ravel()

    def score(self, ep):
        return self.pop[ep["cand_idx"]], {}


class LowestFirstStageProbe(Probe):
    """The shortcut of a target inserted into a retrieved list: the lowest first-stage score."""

    name = "Probe: lowest first-stage score"

    def score(self, ep):
        return -np.asarray(ep["first_stage_scores"], dtype=float), {}


class CentralityProbe(Probe):
    """Each candidate's similarity to the pool's mean in one modality (the shortcut of pools mined
    around the target, which put it at their centre)."""

    uses_pool_structure = True

    def __init__(self, modality: str) -> None:
        self.modality = modality
        self.name = f"Probe: pool centrality ({modality})"

    def setup(self, env):
        super().setup(env)
        self.features = env.item_features.get(self.modality)

    def score(self, ep):
        if self.features is None:
            return None, {"reason": f"no {self.modality} features in this run"}
        f = self.features[ep["cand_idx"]]
        return (f @ f.mean(axis=0)).astype(float), {}


class Oracle(Method):
    """The ceiling of a reranker of these pools: the relevant items first (it reads the answers)."""

    group = "ceiling"
    fused = False
    name = "Ceiling: oracle reranker (reads the answers)"

    def score(self, ep):
        rel = set(ep["relevant"])
        return np.array([float(c in rel) for c in ep["candidates"]]), {}


class UserMethod(Method):
    """A reranker of the user's own, named `package.module:attr`: a callable, a compiled LangGraph
    graph (anything with `.invoke`), or an uncompiled `StateGraph`, taking the request that
    `create_mma_reranker` takes ({user_id, history, candidates, first_stage_scores, mask}) and
    returning per-candidate scores (a list aligned with the candidates, or {item_id: score}), a
    ranking (a list of item ids), or a dict holding one of them ("mma_scores", "scores",
    "ranking"; `fallback: True` means it could not help). It is fused with the first stage at its
    validation alpha like every method."""

    group = "user method"

    def __init__(self, spec: str, *, uses_llm: bool = False) -> None:
        self.spec, self.name, self.uses_llm = spec, spec, uses_llm
        self.target = load_object(spec)  # fail early, before any episode runs
        if hasattr(self.target, "compile") and not hasattr(self.target, "invoke"):
            self.target = self.target.compile()
        if not (callable(self.target) or hasattr(self.target, "invoke")):
            msg = f"--method {spec}: {type(self.target).__name__} is neither callable nor a graph with .invoke"
            raise ValueError(msg)

    def score(self, ep):
        request = {k: ep[k] for k in ("user_id", "history", "candidates", "first_stage_scores", "mask")}
        out = self.target.invoke(request) if hasattr(self.target, "invoke") else self.target(request)
        return scores_from_output(out, ep["candidates"]), {}


def load_object(spec: str) -> Any:
    """`package.module:attr` (attr may be dotted) -> the object; a ValueError says what is wrong."""
    import importlib

    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        msg = f"--method {spec!r}: expected package.module:attr, e.g. my_app.rerank:reranker"
        raise ValueError(msg)
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        msg = f"--method {spec!r}: cannot import {module!r} ({err}); is it on PYTHONPATH?"
        raise ValueError(msg) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            msg = f"--method {spec!r}: {module} has no attribute {attr!r}"
            raise ValueError(msg)
        obj = getattr(obj, part)
    return obj


def scores_from_output(out: Any, candidates: list[str]) -> np.ndarray | None:
    """Per-candidate scores from what a reranker returned (see `UserMethod`); None for a fallback.
    Candidates a score map or ranking leaves out come below every item it scored."""
    if isinstance(out, dict) and out.keys() & {"fallback", "mma_scores", "scores", "ranking"}:
        if out.get("fallback"):
            return None
        for key in ("mma_scores", "scores", "ranking"):
            if out.get(key) is not None:
                return scores_from_output(out[key], candidates)
        msg = f"the method returned a dict without mma_scores, scores or ranking (keys: {sorted(out)[:8]})"
        raise ValueError(msg)
    if isinstance(out, dict):  # {item_id: score}
        given = [float(v) for v in out.values()]
        floor = min(given, default=0.0) - 1.0
        return np.array([float(out[c]) if c in out else floor for c in candidates])
    if isinstance(out, list | tuple) and out and all(isinstance(x, str) for x in out):  # a ranking, best first
        pos = {c: r for r, c in enumerate(out)}
        return np.array([float(len(out) - pos[c]) if c in pos else 0.0 for c in candidates])
    arr = np.asarray(out, dtype=float).reshape(-1)
    if len(arr) != len(candidates):
        msg = f"the method returned {len(arr)} scores for {len(candidates)} candidates"
        raise ValueError(msg)
    return arr


class ListwiseLLM(Method):
    """RankGPT-style listwise reranking of the first-stage top window by the backend model."""

    group = "LLM"
    uses_llm = True

    def __init__(self, model: str, window: int = 20, history: int = 10) -> None:
        self.model_spec, self.window, self.history_len = model, window, history
        self.name = "LLM listwise (RankGPT-style)"

    def setup(self, env):
        super().setup(env)
        self.model = env.chat_model(self.model_spec, max_new_tokens=6 * self.window)

    def score(self, ep):
        if not ep["mask"]["text"]:
            return None, {"reason": "text is masked: no titles to rank by", "fallback": True}
        from langchain_core.messages import HumanMessage, SystemMessage

        view = self.env.catalogue.view(Mask(**ep["mask"]))
        first = np.asarray(ep["first_stage_scores"], dtype=float)
        top = np.argsort(-first, kind="stable")[: self.window]
        liked = "; ".join(view.item_field(int(i), "title") or "?" for i in ep["hist_idx"][-self.history_len :])
        listing = "\n".join(f"[{j + 1}] {view.item_field(int(ep['cand_idx'][i]), 'title')}" for j, i in enumerate(top))
        prompt = (
            f"The user recently liked: {liked}.\nRank these {len(top)} movies by how likely the user is to like them next.\n"
            f"{listing}\nAnswer only with the identifiers, best first, like [3] > [1] > [2]."
        )
        out = self.model.invoke([SystemMessage("You rank movies for a user."), HumanMessage(prompt)])
        order = []
        for m in re.findall(r"\[(\d+)\]", str(out.content)):
            j = int(m) - 1
            if 0 <= j < len(top) and j not in order:
                order.append(j)
        if not order:
            return None, {"reason": "no identifiers in the reply", "fallback": True}
        scores = minmax(first) * 0.5  # unranked: below every ranked one, first-stage order kept
        for rank, j in enumerate(order):
            scores[top[j]] = 2.0 - rank / len(top)
        return scores, {"ranked": len(order), "fallback": False}


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


def _history_cosine(feats: np.ndarray, n_candidates: int) -> np.ndarray:
    """Each candidate's mean cosine to the last 100 history items (rows after the candidates)."""
    cands, hist = feats[:n_candidates], feats[n_candidates:][-100:]
    if len(hist) == 0:
        return np.zeros(n_candidates)
    return (cands @ hist.T).mean(axis=1).astype(float)
