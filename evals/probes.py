"""The rows that are never fused: user-blind protocol probes (random, popularity, lowest first-stage
score, pool centrality per modality) and the hindsight oracle. A number that one of these matches is
not a result.
"""

from __future__ import annotations

import numpy as np

from mma_agent.evals.environment import Method
from mma_agent.modalities import TASK_FAMILIES


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
