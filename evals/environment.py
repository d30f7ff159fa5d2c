"""What the evaluation's methods share: `EvalEnv` (the workspace, its catalogue and toolkits, evidence
and chat models cached per run) and the `Method` interface (`score(ep)`: per-candidate scores before
fusion, or None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from mma_agent.modalities import Mask
from mma_agent.toolkits import tool_vocabulary
from mma_agent.toolkits.base import Catalogue, Toolkit
from mma_agent.toolkits.workspace import Workspace
from mma_agent.util import l2_normalize


@dataclass
class EvalEnv:
    """What methods share: the workspace, catalogue and toolkits, and lazily loaded models."""

    pipeline: Workspace
    catalogue: Catalogue
    kits: dict[str, Toolkit]
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
        key = (ep["split"], ep["family"], ep["pool"], learned)
        if key not in self._evidence:
            catalogue, kits = (self.catalogue, self.kits) if learned else self.pipeline.toolkits(learned=False)
            channels = episode_channels(catalogue, kits, tool_vocabulary(kits), ep)
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


def episode_channels(catalogue, kits: dict, tools, ep: dict, *, query: str | None = None) -> dict[str, np.ndarray]:
    """Every automated tool of `tools` called once on an evaluation episode, through its toolkit,
    under the episode's mask (request tools read `query`): the channels, as the tools return them."""
    from mma_agent.toolkits.base import EpisodeContext

    ctx = EpisodeContext(
        catalogue.view(Mask(**ep["mask"])),
        np.asarray(ep["hist_idx"], dtype=np.int64),
        np.asarray(ep["cand_idx"], dtype=np.int64),
        ep["user"],
        first_stage=np.asarray(ep["first_stage_scores"], dtype=float),
        query=query,
    )
    channels: dict[str, np.ndarray] = {}
    for spec in tools.automated:
        kit = kits.get(tools.owner(spec.name))
        if kit is not None:
            channels.update(kit.call(spec.name, ctx).channels)
    return channels
