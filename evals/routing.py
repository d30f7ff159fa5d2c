"""The routing ceiling of a run: can per-episode routing pay on this data, before any policy is trained?

Over the run's fixed choices (every fused method without an LLM, at every alpha of the grid: the
weight-menu entries, single channels, RuleRouter-Fuse, the retrievers), per task family:
- **the best fixed choice**: the (method, alpha) with the best mean validation NDCG@10, read on test;
- **a contextual router** fitted on validation: for each of the `top` best fixed choices, a ridge
  regression of the episode's NDCG@10 on what a router sees before any answer (history length,
  the first-stage scores' spread and top-10 gap, the pool's and the history's popularity), its
  penalty chosen by 5-fold cross-validation (a large penalty is the fixed choice again); on test
  each episode takes the choice with the best prediction;
- **the per-pool oracle** (the best choice per test pool, in hindsight) and **its split-half
  transfer**: the choice that is best on a random half of the pool's relevant items, scored on the
  other half, against the fixed choice on the same halves (stores written since the runner records
  `ndcg@10 half-a/b`). A transfer below the fixed choice says the oracle's gain is noise.
Paired Wilcoxon tests and Cliff's delta against the fixed choice.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from mma_agent.toolkits.workspace import Workspace

from .results import NOT_METHODS, cliffs_delta, wilcoxon_p
from .runner import HALVES, build_episodes

FEATURES = (
    "log history length",
    "first-stage std",
    "first-stage top-10 gap (z)",
    "pool log popularity",
    "history log popularity",
)


def popularity(pipeline: Workspace) -> np.ndarray:
    """log(1 + train interactions) of every item: the popularity feature's scale."""
    return np.log1p(np.asarray(pipeline.split.matrix("train").sum(axis=0), dtype=float).ravel())


def pool_features(ep: dict, pop: np.ndarray) -> np.ndarray:
    """One episode's `FEATURES`: what a router sees of its pool and history before any answer."""
    s = np.sort(np.asarray(ep["first_stage_scores"], dtype=float))[::-1]
    sd = float(s.std()) or 1.0
    hist = np.asarray(ep["hist_idx"], dtype=int)
    return np.array(
        [
            np.log1p(len(hist)),
            sd,
            (s[:10].mean() - s[10:].mean()) / sd if len(s) > 10 else 0.0,  # a pool of 10 or fewer has no gap
            float(pop[np.asarray(ep["cand_idx"], dtype=int)].mean()),
            float(pop[hist].mean()) if len(hist) else 0.0,
        ]
    )


def episode_features(pipeline: Workspace, families=None, splits=("valid", "test")) -> dict[tuple, np.ndarray]:
    """(split, family, pool) -> the features a router sees before any answer (`FEATURES`); every
    family with pools by default."""
    pop = popularity(pipeline)
    return {
        (split, ep["family"], ep["pool"]): pool_features(ep, pop)
        for split in splits
        for ep in build_episodes(pipeline, split, families=families)
    }


def fixed_choices(rows: list[dict], meta: dict) -> list[str]:
    """The run's methods a fixed router may choose: fused, no LLM, not a probe or the oracle."""
    groups, fused, llm = meta.get("groups", {}), meta.get("fused", {}), meta.get("uses_llm", {})
    names = dict.fromkeys(r["method"] for r in rows)
    return [m for m in names if fused.get(m, True) and not llm.get(m) and groups.get(m) not in NOT_METHODS]


def _grids(rows, methods, family, split, metric="ndcg@10"):
    """pools, choices [(method, alpha)], and pools x choices of `metric` (mean over seeds), over the
    pools every method ran; None where the metric is missing (older stores have no halves)."""
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["family"] == family and r["split"] == split and r["method"] in methods:
            by[r["method"]][r["pool"]].append(r["metrics"])
    if len(by) < len(methods):
        return None
    pools = sorted(set.intersection(*(set(v) for v in by.values())))
    alphas = list(next(iter(next(iter(by.values())).values()))[0])
    choices = [(m, a) for m in methods for a in alphas]
    grid = np.full((len(pools), len(choices)), np.nan)
    for j, (m, a) in enumerate(choices):
        for i, p in enumerate(pools):
            vals = [x[a].get(metric) for x in by[m][p]]
            if all(v is not None for v in vals):
                grid[i, j] = np.mean(vals)
    return pools, choices, grid


def _ridge_cv(x: np.ndarray, y: np.ndarray, penalties=(0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)) -> tuple[np.ndarray, float]:
    """Ridge on standardised features (intercept unpenalised), the penalty by 5-fold CV; returns
    (weights with the intercept last, the penalty)."""
    rng = np.random.default_rng(0)
    folds = rng.permutation(len(y)) % 5

    def fit(xs, ys, lam):
        xa = np.hstack([xs, np.ones((len(xs), 1))])
        reg = lam * np.eye(xa.shape[1])
        reg[-1, -1] = 0.0
        return np.linalg.solve(xa.T @ xa + reg, xa.T @ ys)

    def err(lam):
        e = 0.0
        for f in range(5):
            tr, te = folds != f, folds == f
            w = fit(x[tr], y[tr], lam)
            e += float(np.sum((np.hstack([x[te], np.ones((te.sum(), 1))]) @ w - y[te]) ** 2))
        return e

    best = min(penalties, key=err)
    return fit(x, y, best), best


def contextual_pick(xv: np.ndarray, vg: np.ndarray, xt: np.ndarray, *, top: int = 5) -> np.ndarray:
    """The contextual router: for each of the `top` choices best on validation (columns of `vg`,
    validation episodes x choices), a ridge regression of NDCG@10 on the standardised context `xv`
    (penalty by 5-fold CV); each test context in `xt` takes the choice with the best prediction."""
    keep = np.argsort(-np.nanmean(vg, axis=0))[:top]
    mu, sd = xv.mean(0), xv.std(0) + 1e-9
    xv, xt = (xv - mu) / sd, (xt - mu) / sd
    preds = [np.hstack([xt, np.ones((len(xt), 1))]) @ _ridge_cv(xv, np.nan_to_num(vg[:, j]))[0] for j in keep]
    return keep[np.argmax(np.array(preds), axis=0)]


def routing_ceiling(rows: list[dict], meta: dict, features: dict | None = None, *, top: int = 5) -> list[dict]:
    """One row per family: the best fixed choice, the contextual router, the oracle and its
    split-half transfer, on the test pools every fixed choice ran."""
    methods = fixed_choices(rows, meta)
    out = []
    families = dict.fromkeys(r["family"] for r in rows if r["method"] in methods)
    for family in families:
        valid, test = _grids(rows, methods, family, "valid"), _grids(rows, methods, family, "test")
        if valid is None or test is None or not len(valid[0]) or not len(test[0]):
            continue
        (vp, choices, vg), (tp, _, tg) = valid, test
        fixed = int(np.nanargmax(np.nanmean(vg, axis=0)))
        fixed_t = tg[:, fixed]
        row = {
            "family": family,
            "test pools": len(tp),
            "fixed choices": len(choices),
            "best fixed choice (chosen on validation)": f"{np.mean(fixed_t):.4f}",
            "it is": f"{choices[fixed][0]}, alpha {choices[fixed][1]}",
        }
        if features is not None:
            xv = np.array([features["valid", family, p] for p in vp])
            xt = np.array([features["test", family, p] for p in tp])
            pick = contextual_pick(xv, vg, xt, top=top)
            routed = tg[np.arange(len(tp)), pick]
            row["contextual router (ridge, CV)"] = f"{np.mean(routed):.4f}"
            row["router vs fixed: p / Cliff's delta"] = (
                f"{wilcoxon_p(routed, fixed_t):.2g} / {cliffs_delta(routed, fixed_t):+.3f}"
            )
            row["router follows the fixed choice"] = f"{np.mean(pick == fixed):.0%}"
        row["oracle: best choice per pool (hindsight)"] = f"{np.mean(np.nanmax(tg, axis=1)):.4f}"
        ha, hb = _grids(rows, methods, family, "test", HALVES[0]), _grids(rows, methods, family, "test", HALVES[1])
        # pools where every choice has both halves (a pool with one relevant item has none; a store
        # whose rows predate the halves has none for those methods)
        ok = ~(np.isnan(ha[2]).any(1) | np.isnan(hb[2]).any(1)) if ha is not None and hb is not None else np.zeros(0, bool)
        if ok.any():
            a, b = ha[2][ok], hb[2][ok]
            pa, pb = np.argmax(a, 1), np.argmax(b, 1)
            idx = np.arange(len(a))
            transfer = 0.5 * (b[idx, pa] + a[idx, pb])
            fixed_h = 0.5 * (a[:, fixed] + b[:, fixed])
            row["split-half oracle / fixed, same halves"] = f"{np.mean(transfer):.4f} / {np.mean(fixed_h):.4f}"
            row["split-half p / Cliff's delta"] = f"{wilcoxon_p(transfer, fixed_h):.2g} / {cliffs_delta(transfer, fixed_h):+.3f}"
            row["halves agree on the best choice"] = f"{np.mean(pa == pb):.0%} (1 / choices: {1 / len(choices):.0%})"
        else:
            row["split-half oracle / fixed, same halves"] = "not in this store (run it again with this version)"
        out.append(row)
    return out
