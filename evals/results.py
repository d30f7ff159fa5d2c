"""A run's per-episode metrics read back from its store, each method at its validation-chosen alpha
(`Results`), and the paired statistics every comparison uses (Wilcoxon signed-rank, Cliff's delta).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal, get_args

import numpy as np

from mma_agent.modalities import OOMA_FAMILIES, TASK_FAMILIES

OWN_ABLATIONS = ("evidence", "weight menu", "agent")  # our own evidence rows and controls: not baselines to beat


FAMILIES = (*OOMA_FAMILIES, *(f for f in TASK_FAMILIES if f not in OOMA_FAMILIES))  # table order: OOMA first


NOT_METHODS = ("protocol probe", "ceiling")  # groups that are rows of every table but never compared as methods


def cliffs_delta(a: np.ndarray, b: np.ndarray) -> float:
    """P(a > b) - P(a < b) over all pairs (a dominance effect size in [-1, 1])."""
    a, b = np.asarray(a, float)[:, None], np.asarray(b, float)[None, :]
    return float((a > b).mean() - (a < b).mean())


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value (1.0 when every pair is tied)."""
    from scipy.stats import wilcoxon

    d = np.asarray(a, float) - np.asarray(b, float)
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(a, b, zero_method="wilcox").pvalue)


Key = tuple[str, int]  # (family, pool)


# Where each method's alpha is chosen: on every validation pool it ran ("own"), or only on those
# every fused method ran ("paired"): then an LLM row run on a subset and a row run everywhere pick
# their alphas from the same episodes.
AlphaPools = Literal["own", "paired"]


ALPHA_POOLS: tuple[str, ...] = get_args(AlphaPools)


MIN_PAIRED = 20  # fewer paired episodes than this make no test or table


class Results:
    """Per-episode metrics of a run at each method's validation-chosen alpha."""

    def __init__(self, rows: list[dict], meta: dict, *, alpha_on: AlphaPools = "own") -> None:
        if alpha_on not in ALPHA_POOLS:
            msg = f"alpha_on={alpha_on!r}; choose one of {ALPHA_POOLS}"
            raise ValueError(msg)
        self.meta, self.alpha_on = meta, alpha_on
        self.by_method: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            self.by_method[r["method"]].append(r)
        self.methods = list(self.by_method)
        self._test: dict[tuple, dict[Key, float]] = {}
        self.alpha: dict[tuple[str, str], str] = {}
        shared = None  # "paired": the validation pools every fused method ran
        if alpha_on == "paired":
            ran = [
                {(r["family"], r["pool"]) for r in rs if r["split"] == "valid"}
                for m, rs in self.by_method.items()
                if meta.get("fused", {}).get(m, True)
            ]
            shared = set.intersection(*[k for k in ran if k]) if any(ran) else set()
        self.valid_pools = shared
        for m, rs in self.by_method.items():
            valid = defaultdict(list)
            for r in rs:
                if r["split"] == "valid" and (shared is None or (r["family"], r["pool"]) in shared):
                    valid[r["family"]].append(r)
            for family in {r["family"] for r in rs}:
                if not meta.get("fused", {}).get(m, True):
                    self.alpha[m, family] = "0.0"
                    continue
                if not valid[family]:
                    self.alpha[m, family] = "0.5"
                    continue
                alphas = list(valid[family][0]["metrics"])
                means = {a: np.mean([r["metrics"][a]["ndcg@10"] for r in valid[family]]) for a in alphas}
                best = max(means.values())
                self.alpha[m, family] = max((a for a in alphas if means[a] >= best - 1e-12), key=float)

    def test(self, method: str, metric: str = "ndcg@10", seed: int | None = None) -> dict[Key, float]:
        """(family, pool) -> metric on test at the chosen alpha (the mean over seeds, or one seed's)."""
        if (method, metric, seed) not in self._test:
            acc: dict[Key, list[float]] = defaultdict(list)
            alone = not self.meta.get("fused", {}).get(method, True)
            for r in self.by_method[method]:
                if r["split"] == "test" and (seed is None or r["seed"] == seed):
                    # a probe that could not score an episode has no number there (not the first stage's)
                    v = (
                        np.nan
                        if alone and r["status"] != "ok" and metric != "recall@100"
                        else r["metrics"][self.alpha[method, r["family"]]][metric]
                    )
                    acc[r["family"], r["pool"]].append(v)
            self._test[method, metric, seed] = {k: float(np.mean(v)) for k, v in acc.items()}
        return self._test[method, metric, seed]

    def recall(self, keys: list[Key]) -> dict[Key, float]:
        """Recall@100 of these pools: identical for every method, read off one that ran them all."""
        return self.test(next(m for m in self.methods if set(keys) <= set(self.test(m, "recall@100"))), "recall@100")

    def seeds(self, method: str) -> list[int]:
        return sorted({r["seed"] for r in self.by_method[method]})

    def test_rows(self, method: str) -> list[dict]:
        return [r for r in self.by_method[method] if r["split"] == "test"]


def mean_over(values: dict[Key, float], keys: list[Key]) -> float | None:
    vals = [values[k] for k in keys if k in values and np.isfinite(values[k])]
    return float(np.mean(vals)) if vals else None


def family_means(values: dict[Key, float], keys: list[Key]) -> dict[str, float | None]:
    out = {f: mean_over(values, [k for k in keys if k[0] == f]) for f in FAMILIES}
    ooma = [out[f] for f in OOMA_FAMILIES]
    out["OOMA"] = float(np.mean(ooma)) if all(v is not None for v in ooma) else None
    return out


def rounded(row: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else ("" if v is None else v)) for k, v in row.items()}


def valid_mean(res: Results, method: str, family: str) -> float | None:
    """Validation NDCG@10 of a method on a family at its chosen alpha."""
    vs = [
        r["metrics"][res.alpha[method, family]]["ndcg@10"]
        for r in res.by_method[method]
        if r["split"] == "valid" and r["family"] == family
    ]
    return float(np.mean(vs)) if vs else None
