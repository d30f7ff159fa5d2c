"""From gathered evidence to MMA scores, and their fusion with the first stage (paper Eq. 2).

`fuse` is the one implementation of Eq. 2: the graph's `score` node calls it, and so does the
evaluation at every alpha of its grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mma_agent.toolkits.evidence import group_score
from mma_agent.util import minmax


def fuse(first: np.ndarray, mma: np.ndarray, alpha: float) -> np.ndarray:
    """Paper Eq. 2, both scores min-max normalised within the pool."""
    return alpha * minmax(first) + (1 - alpha) * minmax(mma)


def weighted_evidence(
    evidence: Mapping[str, np.ndarray], groups: Mapping[str, Sequence[str]], weights: object
) -> np.ndarray | None:
    """MMA scores from `score_candidates {"weights": ...}`: each evidence group is the mean of its
    min-max scaled channels; the score is the weighted mean of the groups gathered. Negative,
    non-numeric or missing weights count as 0; no usable weight means equal weights over what
    was gathered. None when no group has evidence (every tool answered Null)."""
    weights = weights if isinstance(weights, dict) else {}
    gathered = {
        g: group_score(evidence[c] for c in chans if c in evidence)
        for g, chans in groups.items()
        if any(c in evidence for c in chans)
    }
    if not gathered:
        return None
    w = {
        g: float(weights.get(g, 0))
        for g in gathered
        if isinstance(weights.get(g, 0), int | float) and math.isfinite(weights.get(g, 0))
    }
    if sum(max(v, 0) for v in w.values()) <= 0:
        w = dict.fromkeys(gathered, 1.0)
    return sum(max(w.get(g, 0), 0) * v for g, v in gathered.items()) / sum(max(v, 0) for v in w.values())


def scores_per_item(first: np.ndarray, candidates: Sequence[str], scores: object) -> np.ndarray | None:
    """MMA scores from `score_candidates {"scores": {id: score}}`: the given scores min-max scaled;
    candidates it leaves out keep their scaled first-stage score. None when no pool item got a valid score."""
    if not isinstance(scores, dict):
        return None
    pool = set(candidates)
    given = {str(k): float(v) for k, v in scores.items() if str(k) in pool and isinstance(v, int | float) and math.isfinite(v)}
    if not given:
        return None
    mma = np.array([given.get(c, np.nan) for c in candidates])
    scored = ~np.isnan(mma)
    return np.where(scored, minmax(np.nan_to_num(mma)) if scored.sum() > 1 else 1.0, minmax(first))
