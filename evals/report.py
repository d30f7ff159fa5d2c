"""`mma eval report RUN`: tables, significance tests, routing diagnostics and plots from a store.

Alpha (Eq. 2) is chosen per method and task family as the grid value with the best mean
validation NDCG@10 (ties: the larger alpha, i.e. closer to the first stage), then every test
number is read at that alpha; probes and the oracle are read alone (alpha 0). Comparisons are
paired on the episodes both methods ran: the main table holds every method that ran on the whole
test set; when some LLM methods ran only on the seeded subset, a second table gives every method
on the episodes they share. Every table carries the Recall@100 ceiling, the oracle and the
user-blind probes.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from mma_agent.modalities import OOMA_FAMILIES, TASK_FAMILIES

from .methods import LOOKUP
from .store import ResultStore

OWN_ABLATIONS = ("evidence", "weight menu", "agent")  # our own evidence rows and controls: not baselines to beat

FAMILIES = (*OOMA_FAMILIES, *(f for f in TASK_FAMILIES if f not in OOMA_FAMILIES))  # table order: OOMA first
NOT_METHODS = ("protocol probe", "ceiling")  # groups that are rows of every table but never compared as methods
NOTES = [
    "- Regenerate with `bash scripts/eval.sh` (after `scripts/main.sh` and `scripts/train.sh`); the raw store stays under `.mma/`.",
    "- Protocol v2: per task family, each user's top-100 over the whole catalogue from a first stage that reads only the family's "
    "surviving modalities, queried with the user's history (known positives excluded); nothing is inserted. Relevant items are all "
    "of the user's held-out positives in the split, so Recall@100 is the ceiling every reranker shares, and NDCG@10 is also given "
    "over the pools that hold a relevant item. OOMA = the mean of the text-only, image-only and behaviour-only families.",
    "- Every method's own scores are fused with the first stage (Eq. 2) at the alpha chosen per family on validation; a method that "
    "cannot score an episode (masked modality, agent fallback, crash) gets the first-stage ranking there, counted under "
    "`fallback` / `errors`. Probes and the oracle are read alone (alpha 0).",
    "- User-blind probes (random order, popularity, the lowest first-stage score, each candidate's centrality in the pool per "
    "modality) never look at the user's history; they read every modality in every family. A method that does not beat the best "
    "probe of a family has shown nothing there (`> best probe`).",
    "- Retriever rows re-score the pool with a CF model, so they fall back wherever behaviour is masked.",
    "- Completion rows impute the masked modalities of the episode's items from a bank of the other catalogue items (zero, bank mean, mean of the 10 nearest bank items in a visible modality, or 10 rounds of feature "
    "propagation over that kNN graph), then average text, image and LightGCN-embedding similarity to the history. Unlike the agent, "
    "they read the masked modality of other items.",
    "- Seeds: the trained MARGO- and MAGNET-style rows are trained and evaluated with five seeds (their numbers are the mean over "
    "seeds, with the standard deviation of the OOMA mean); every other method is deterministic here and ran once. The tests are "
    "paired Wilcoxon signed-rank tests over episodes, with Cliff's delta as the effect size.",
]


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


def _mean(values: dict[Key, float], keys: list[Key]) -> float | None:
    vals = [values[k] for k in keys if k in values and np.isfinite(values[k])]
    return float(np.mean(vals)) if vals else None


def _family_means(values: dict[Key, float], keys: list[Key]) -> dict[str, float | None]:
    out = {f: _mean(values, [k for k in keys if k[0] == f]) for f in FAMILIES}
    ooma = [out[f] for f in OOMA_FAMILIES]
    out["OOMA"] = float(np.mean(ooma)) if all(v is not None for v in ooma) else None
    return out


def _round(row: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else ("" if v is None else v)) for k, v in row.items()}


def ceiling_row(res: Results, keys: list[Key]) -> dict:
    """Recall@100 of the pools per family: the ceiling every method shares."""
    means = _family_means(res.recall(keys), keys)
    return _round(
        {"method": "Ceiling: Recall@100 of the pools", "group": "ceiling", **{c: means[c] for c in ("OOMA", *FAMILIES)}}
    )


def method_table(res: Results, methods: list[str], keys: list[Key], probe_best: dict[str, float]) -> list[dict]:
    """The headline columns: NDCG@10 per family and OOMA, the full family's other metrics, whether
    the method beats the best probe, and its cost and failures."""
    rows = [ceiling_row(res, keys)]
    groups = res.meta.get("groups", {})
    for m in methods:
        ks = [k for k in keys if k in res.test(m)]
        if not ks:
            continue
        n10 = _family_means(res.test(m), ks)
        full = [k for k in ks if k[0] == "full"]
        hit = [k for k in full if res.test(m, "recall@100")[k] > 0]
        row: dict[str, Any] = {"method": m, "group": groups.get(m, ""), "OOMA": n10["OOMA"], **{f: n10[f] for f in FAMILIES}}
        row["full H@10"] = _mean(res.test(m, "hr@10"), full)
        row["full N@20"] = _mean(res.test(m, "ndcg@20"), full)
        row["full N@10 (pools with a relevant)"] = _mean(res.test(m), hit)
        if groups.get(m) in NOT_METHODS:
            row["> best probe (OOMA/full)"] = ""
        else:
            row["> best probe (OOMA/full)"] = "/".join(
                "" if n10[c] is None or c not in probe_best else ("yes" if n10[c] > probe_best[c] + 1e-12 else "NO")
                for c in ("OOMA", "full")
            )
        seeds = res.seeds(m)
        in_ks = set(ks)
        trs = [r for r in res.test_rows(m) if (r["family"], r["pool"]) in in_ks and r["seed"] == seeds[0]]
        row["fallback"] = f"{100 * np.mean([r['status'] == 'fallback' for r in trs]):.0f}%" if trs else ""
        row["errors"] = sum(r["status"] == "error" for r in trs)
        row["ms/ep"] = f"{1000 * np.mean([r['seconds'] for r in trs]):.0f}" if trs else ""
        row["episodes"] = len(ks)
        row["alpha (text/image/behaviour-only; full)"] = (
            " ".join(res.alpha.get((m, f), "-") for f in OOMA_FAMILIES) + f"; {res.alpha.get((m, 'full'), '-')}"
        )
        row["valid eps (alpha)"] = sum(r["split"] == "valid" and r["seed"] == seeds[0] for r in res.by_method[m])
        if len(seeds) > 1:  # the spread of the OOMA mean over seeds
            per_seed = [_family_means(res.test(m, "ndcg@10", seed=sd), ks)["OOMA"] for sd in seeds]
            row["seeds (OOMA sd)"] = f"{len(seeds)} ({np.std([v for v in per_seed if v is not None]):.4f})"
        else:
            row["seeds (OOMA sd)"] = "1"
        rows.append(_round(row))
    return rows


def family_tables(res: Results, methods: list[str], keys: list[Key]) -> list[tuple[str, list[dict]]]:
    """Per family: NDCG@10, HR@10, NDCG@20, NDCG@10 over the pools holding a relevant item, with the ceiling in the title."""
    out = []
    first_stage = res.meta.get("first_stage", {})
    for f in FAMILIES:
        fk = [k for k in keys if k[0] == f]
        if not fk:
            continue
        rec = res.recall(fk)
        hit = [k for k in fk if rec[k] > 0]
        rows = []
        for m in methods:
            ks = [k for k in fk if k in res.test(m)]
            if not ks:
                continue
            hk = [k for k in hit if k in res.test(m)]
            status = [r["status"] for r in res.test_rows(m) if r["family"] == f and r["seed"] == res.seeds(m)[0]]
            rows.append(
                _round(
                    {
                        "method": m,
                        "N@10": _mean(res.test(m), ks),
                        "H@10": _mean(res.test(m, "hr@10"), ks),
                        "N@20": _mean(res.test(m, "ndcg@20"), ks),
                        "N@10 (pools with a relevant)": _mean(res.test(m), hk),
                        "alpha": res.alpha.get((m, f), ""),
                        "fallback": f"{100 * np.mean([s == 'fallback' for s in status]):.0f}%" if status else "",
                        "episodes": len(ks),
                    }
                )
            )
        title = (
            f"### {f}: first stage {first_stage.get(f, '?')}; {len(fk)} test pools; Recall@100 (ceiling) {_mean(rec, fk):.4f}; "
            f"{100 * len(hit) / len(fk):.1f}% of pools hold a relevant item"
        )
        out.append((title, rows))
    return out


def routing_table(res: Results, methods: list[str]) -> list[dict]:
    rows = []
    for m in methods:
        trs = [r for r in res.test_rows(m) if "calls" in r["info"]]
        if not trs:
            continue
        by = defaultdict(list)
        for r in trs:
            by[r["family"]].append(r)
        for fam, rs in [*sorted(by.items(), key=lambda kv: FAMILIES.index(kv[0])), ("all", trs)]:
            calls = sum(r["info"]["calls"] for r in rs)
            first = Counter(r["info"]["first_action"] for r in rs).most_common(1)[0]
            rows.append(
                {
                    "method": m,
                    "family": fam,
                    "episodes": len(rs),
                    "failed calls": f"{100 * sum(r['info']['failed'] for r in rs) / max(calls, 1):.1f}%",
                    "invalid/ep": f"{np.mean([r['info']['invalid'] for r in rs]):.2f}",
                    "turns/ep": f"{np.mean([r['info']['turns'] for r in rs]):.2f}",
                    "ask_user/ep": f"{np.mean([r['info'].get('ask_user', 0) for r in rs]):.2f}",
                    "fallback": f"{100 * np.mean([r['info']['fallback'] for r in rs]):.0f}%",
                    "first action": f"{first[0]} ({100 * first[1] / len(rs):.0f}%)",
                }
            )
    return rows


def compare(res: Results, a: str, b: str, keys: list[Key], label: str) -> dict:
    va, vb = res.test(a), res.test(b)
    ks = [k for k in keys if k in va and k in vb]
    if not ks:
        return {"comparison": f"{a} vs {b}", "scope": label, "episodes": 0}
    x, y = np.array([va[k] for k in ks]), np.array([vb[k] for k in ks])
    return {
        "comparison": f"{a} vs {b}",
        "scope": label,
        "episodes": len(ks),
        "NDCG@10 A": round(float(x.mean()), 4),
        "NDCG@10 B": round(float(y.mean()), 4),
        "rel. diff": f"{100 * (x.mean() - y.mean()) / y.mean():+.1f}%" if y.mean() > 0 else "",
        "A better/worse/tied": f"{(x > y).sum()}/{(x < y).sum()}/{(x == y).sum()}",
        "Wilcoxon p": f"{wilcoxon_p(x, y):.3g}",
        "Cliff's delta": round(cliffs_delta(x, y), 3),
    }


def significance(res: Results, mma: str | None, keys: list[Key], baselines: list[str], scope: str, done: set) -> list[dict]:
    """MMA-Auto against the strongest baseline, RuleRouter-Fuse, its zero-shot policy, the LLM
    listwise and ReAct rows, and Interactive against Auto, on the OOMA episodes pooled and on the
    full family (each pair once, in the widest scope both cover: `done` carries the pairs made);
    paired on the episodes both ran."""
    if mma is None:
        return []
    out = []
    llm_rows = [m for m in res.methods if m.startswith(("LLM listwise", "ReAct"))]
    for label, ks in (
        ("OOMA (text/image/behaviour-only pooled)", [k for k in keys if k[0] in OOMA_FAMILIES]),
        ("full family", [k for k in keys if k[0] == "full"]),
    ):
        if not ks:
            continue
        covered = lambda m, ks=ks: m in res.methods and set(ks) <= set(res.test(m))  # noqa: E731
        pairs = []
        usable = [m for m in baselines if covered(m)]
        if usable:
            strongest = max(usable, key=lambda m, ks=ks: np.mean([res.test(m)[k] for k in ks]))
            pairs.append((mma, strongest))
        pairs += [
            (mma, "RuleRouter-Fuse"),
            ("MMA-Interactive", mma),
            *((mma, m) for m in res.methods if m.startswith("MMA-Auto") and m != mma),
        ]
        for a, b in pairs:
            if a != b and covered(a) and covered(b) and (a, b, label) not in done:
                done.add((a, b, label))
                out.append(compare(res, a, b, ks, f"{label}, {scope}"))
        for b in llm_rows if covered(mma) else []:  # listwise and ReAct may cover less: paired on what both ran
            both = [k for k in ks if k in res.test(mma) and k in res.test(b)]
            if len(both) >= MIN_PAIRED and (mma, b, label) not in done:
                done.add((mma, b, label))
                out.append(
                    compare(
                        res,
                        mma,
                        b,
                        both,
                        f"{label}, {scope}" + ("" if len(both) == len(ks) else f" ({len(both)} episodes both ran)"),
                    )
                )
    return out


def policy_comparisons(res: Results, keys: list[Key], baselines: list[str]) -> list[dict]:
    """Per scope (OOMA pooled, then every family), on the episodes the MMA rows ran: each trained
    MMA-Auto row (the zero-shot one when none is trained) against RuleRouter-Fuse, the lookup
    control, MMA-Auto zero-shot and the strongest baseline there, and MMA-Interactive against
    each of them (paired tests)."""
    autos = [m for m in res.methods if m.startswith("MMA-Auto")]
    zero = [m for m in autos if "zero-shot" in m]
    trained = [m for m in autos if m not in zero] or zero
    out = []
    scopes = [("OOMA", [k for k in keys if k[0] in OOMA_FAMILIES]), *((f, [k for k in keys if k[0] == f]) for f in FAMILIES)]
    for label, ks in scopes:
        covered = lambda m, ks=ks: m in res.methods and bool(ks) and set(ks) <= set(res.test(m))  # noqa: E731
        usable = [m for m in baselines if covered(m)]
        strongest = [max(usable, key=lambda m, ks=ks: np.mean([res.test(m)[k] for k in ks]))] if usable else []
        for mma in trained:
            for a, b in [*((mma, b) for b in ("RuleRouter-Fuse", LOOKUP, *zero, *strongest)), ("MMA-Interactive", mma)]:
                if a != b and covered(a) and covered(b):
                    out.append(compare(res, a, b, ks, label))
    return out


def coverage(res: Results, llm: list[str], all_keys: list[Key]) -> str:
    """Which LLM methods ran on every test pool and on how many per family otherwise, in words."""
    full, part = [], []
    for m in llm:
        ks = set(res.test(m))
        if ks >= set(all_keys):
            full.append(m)
            continue
        per = Counter(f for f, _ in ks)
        part.append(f"{m} on {', '.join(f'{per[f]} {f}' for f in FAMILIES if per[f])} test pools")
    out = "Methods without an LLM ran on every pool"
    out += f", and so did {', '.join(full)}." if full else "."
    if part:
        out += (
            " The LLM methods that could not cover every pool on these CPUs ran on one seeded subset (nested, the same pools for each): "
            + "; ".join(part)
            + "."
        )
    return out


def valid_mean(res: Results, method: str, family: str) -> float | None:
    """Validation NDCG@10 of a method on a family at its chosen alpha."""
    vs = [
        r["metrics"][res.alpha[method, family]]["ndcg@10"]
        for r in res.by_method[method]
        if r["split"] == "valid" and r["family"] == family
    ]
    return float(np.mean(vs)) if vs else None


EVIDENCE_FAMILY = {
    "text": "text-only",
    "image": "image-only",
    "graph": "behaviour-only",
}  # each group's own single-modality family


def evidence_tables(res: Results, keys: list[Key]) -> list[tuple[str, list[dict]]]:
    """The evidence tables (issue #14): per family, the first stage, each tool's zero-shot and
    learned channel alone, RuleRouter-Fuse on zero-shot and on learned evidence, the weight-menu
    entry best on this family's validation, MARGO- and MAGNET-style, and the best probe; each
    method against the first stage on the same test episodes (paired Wilcoxon, Cliff's delta).
    Empty when the run holds no evidence rows."""
    groups = res.meta.get("groups", {})
    channels = [m for m in res.methods if groups.get(m) == "evidence"]
    if not channels:
        return []
    first = next(m for m in res.methods if groups.get(m) == "first stage" and m.startswith("First stage"))
    menu = [m for m in res.methods if groups.get(m) == "weight menu"]
    named = [m for m in ("RuleRouter-Fuse (zero-shot evidence)", "RuleRouter-Fuse") if m in res.methods]
    trained = [m for m in res.methods if groups.get(m) == "trained multimodal"]
    probes = [m for m in res.methods if groups.get(m) == "protocol probe"]
    out = []
    for f in FAMILIES:
        fk = [k for k in keys if k[0] == f]
        if not fk:
            continue
        best_menu = max((m for m in menu if valid_mean(res, m, f) is not None), key=lambda m: valid_mean(res, m, f), default=None)
        probe = max(probes, key=lambda m: _mean(res.test(m), [k for k in fk if k in res.test(m)]) or 0, default=None)
        rows = []
        for m in [first, *channels, *named, *([best_menu] if best_menu else []), *trained, *([probe] if probe else [])]:
            ks = [k for k in fk if k in res.test(m)]
            if not ks:
                continue
            x = np.array([res.test(m)[k] for k in ks])
            y = np.array([res.test(first)[k] for k in ks])
            label = f"{m} (best menu entry on validation)" if m == best_menu else m
            row = {
                "row": label,
                "N@10": round(float(x.mean()), 4),
                "alpha": res.alpha.get((m, f), ""),
                "valid N@10": round(valid_mean(res, m, f) or 0, 4),
            }
            if m != first and groups.get(m) != "protocol probe":
                row.update(
                    {
                        "vs first stage": f"{x.mean() - y.mean():+.4f}",
                        "better/worse": f"{(x > y).sum()}/{(x < y).sum()}",
                        "Wilcoxon p": f"{wilcoxon_p(x, y):.3g}",
                        "Cliff's delta": round(cliffs_delta(x, y), 3),
                    }
                )
            rows.append(row)
        rec = res.recall(fk)
        out.append((f"### {f}: {len(fk)} test pools; Recall@100 (ceiling) {_mean(rec, fk):.4f}", rows))
    return out


def evidence_comparisons(res: Results, keys: list[Key]) -> list[dict]:
    """The targets of issue #14, each a paired test on the same episodes: each learned channel
    against the MARGO-style model on its own single-modality family, and RuleRouter-Fuse over the
    learned evidence against the zero-shot one and against the first stage on every family."""
    groups = res.meta.get("groups", {})
    margo = next((m for m in res.methods if m.startswith("MARGO")), None)
    first = next((m for m in res.methods if groups.get(m) == "first stage" and m.startswith("First stage")), None)
    out = []
    for g, f in EVIDENCE_FAMILY.items():
        learned = f"Evidence: {g} learned channel"
        if margo and learned in res.methods:
            out.append(compare(res, learned, margo, [k for k in keys if k[0] == f], f))
    for a, b in (("RuleRouter-Fuse", "RuleRouter-Fuse (zero-shot evidence)"), ("RuleRouter-Fuse", first)):
        if a in res.methods and b in res.methods:
            out += [compare(res, a, b, [k for k in keys if k[0] == f], f) for f in FAMILIES if any(k[0] == f for k in keys)]
    return out


def build_report(
    store_path: Path, out_dir: Path, *, title: str = "Evaluation", alpha_on: AlphaPools = "own"
) -> tuple[str, list[dict]]:
    """Write `report.md` and its plot into out_dir; return the Markdown and the main table.
    alpha_on: see `AlphaPools`."""
    from mma_agent.util import format_table

    store = ResultStore(store_path)
    rows, meta = store.rows(), store.meta()
    store.close()
    res = Results(rows, meta, alpha_on=alpha_on)
    groups = meta.get("groups", {})
    order = [m for m in [*meta.get("order", []), *(m for m in res.methods if m not in meta.get("order", []))] if m in res.methods]
    order = [m for m in order if groups.get(m) not in NOT_METHODS] + [m for m in order if groups.get(m) in NOT_METHODS]
    llm = [m for m in order if meta.get("uses_llm", {}).get(m)]
    test_keys = {m: set(res.test(m)) for m in res.methods}
    all_keys = sorted(set.union(*test_keys.values()), key=lambda k: (FAMILIES.index(k[0]), k[1]))
    whole = [m for m in order if test_keys[m] >= set(all_keys)]
    partial = [m for m in llm if m not in whole]
    # the subset table: the episodes the MMA rows still on the subset share (an LLM row that ran on
    # fewer shows its own episode count there and is tested on what it shares)
    core = [m for m in partial if m.startswith("MMA-")] or partial
    subset_keys = sorted(set.intersection(*(test_keys[m] for m in core)), key=all_keys.index) if core else []
    probes = [m for m in order if groups.get(m) == "protocol probe"]

    def probe_best(keys: list[Key]) -> dict[str, float]:
        means = [_family_means(res.test(m), keys) for m in probes if set(keys) <= test_keys[m]]
        return {c: max(v[c] for v in means) for c in ("OOMA", *FAMILIES) if means and all(v[c] is not None for v in means)}

    main = method_table(res, whole, all_keys, probe_best(all_keys))
    # LLM rows that ran on fewer of those episodes (listwise, ReAct on a smaller budget): a table of
    # their own, every method on the episodes they share, so no row is averaged over other episodes
    narrow = [m for m in partial if m not in core and len(test_keys[m] & set(subset_keys)) >= MIN_PAIRED]
    narrow_keys = sorted(set(subset_keys).intersection(*(test_keys[m] for m in narrow)), key=all_keys.index) if narrow else []
    sub = method_table(res, [m for m in order if m not in narrow], subset_keys, probe_best(subset_keys)) if subset_keys else []
    sub_narrow = method_table(res, order, narrow_keys, probe_best(narrow_keys)) if len(narrow_keys) >= MIN_PAIRED else []

    mma = [m for m in llm if m.startswith("MMA-Auto")]
    valid_ooma = lambda m: np.mean(
        [
            r["metrics"][res.alpha[m, r["family"]]]["ndcg@10"]
            for r in res.by_method[m]  # noqa: E731
            if r["split"] == "valid" and r["family"] in OOMA_FAMILIES
        ]
        or [0]
    )
    best_mma = max([m for m in mma if m in whole] or mma, key=valid_ooma) if mma else None
    baselines = [
        m
        for m in res.methods
        if not m.startswith(("MMA-", "LLM listwise", "ReAct"))
        and m not in ("RuleRouter-Fuse", LOOKUP)
        and groups.get(m) not in NOT_METHODS
    ]
    sig = significance(res, best_mma, all_keys, baselines, "whole test set", done := set())
    if subset_keys:
        sig += significance(res, best_mma, subset_keys, baselines, "LLM subset", done)
    routing = routing_table(res, [m for m in order if m.startswith(("MMA", "ReAct", "RuleRouter"))])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(
        res, order, all_keys, subset_keys, out_dir, headline=[m for m in (best_mma, "MMA-Interactive", "RuleRouter-Fuse") if m]
    )
    below = [r["method"] for r in main if "NO" in str(r.get("> best probe (OOMA/full)", ""))]
    md = [
        f"# {title}",
        "",
        f"Protocol `{meta.get('protocol')}`, data `{meta.get('data')}`; families {meta.get('families')}; {len(all_keys)} test "
        f"episodes. {coverage(res, llm, all_keys)} Alpha grid {meta.get('alphas')}, chosen per method and family on validation NDCG@10"
        f"{'' if res.valid_pools is None else f' of the {len(res.valid_pools)} validation pools every fused method ran (the same for each)'}.",
        "",
        "First stage per family (chosen on validation Recall@100): "
        + "; ".join(f"{f}: {v}" for f, v in meta.get("first_stage", {}).items())
        + ".",
        "",
    ]
    if below:
        md += [f"Not above the best user-blind probe on OOMA or the full family (no result there): {', '.join(below)}.", ""]
    md += [
        format_table(
            main,
            "## Every method that ran on the whole test set (NDCG@10 per family unless named; the first row is the Recall@100 ceiling)",
        ),
        "",
    ]
    if sub:
        md += [
            format_table(sub, f"## Every method on the seeded subset that the MMA rows ran ({len(subset_keys)} test episodes)"),
            "",
        ]
    if sub_narrow:
        md += [
            format_table(
                sub_narrow,
                f"## Every method on the smaller subset that {', '.join(narrow)} also ran ({len(narrow_keys)} test episodes)",
            ),
            "",
        ]
    md += [
        format_table(
            sig,
            f"## Significance (paired Wilcoxon signed-rank, Cliff's delta; MMA-Auto = {best_mma}, the policy best on validation OOMA)",
        ),
        "",
    ]
    policies = policy_comparisons(res, subset_keys or all_keys, [m for m in baselines if groups.get(m) not in OWN_ABLATIONS])
    if policies:
        md += [
            format_table(
                policies,
                f"## Policies per family ({'the LLM subset' if subset_keys else 'whole test set'}; paired Wilcoxon, Cliff's delta): "
                "trained MMA-Auto against RuleRouter-Fuse, the lookup control, zero-shot and the strongest baseline there "
                "(by its test mean: the comparison favours the baseline)",
            ),
            "",
        ]
    md += ["## Per family (whole test set)", ""]
    for t, rs in family_tables(res, whole, all_keys):
        md += [format_table(rs, t), ""]
    evidence = evidence_tables(res, all_keys)
    if evidence:
        md += [
            "## Evidence per family: each channel alone, RuleRouter-Fuse before and after the learned channels, the best weight-menu entry",
            "",
        ]
        md += [format_table(evidence_comparisons(res, all_keys), "Paired tests (A vs B on the same test episodes)"), ""]
        for t, rs in evidence:
            md += [format_table(rs, t), ""]
    md += [format_table(routing, "## Routing diagnostics (test)"), ""]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    md += ["", "## How to read this", "", *NOTES, *meta.get("notes", [])]
    text = "\n".join(md) + "\n"
    (out_dir / "report.md").write_text(text)
    return text, main


def _plots(
    res: Results, order: list[str], all_keys: list[Key], subset_keys: list[Key], out_dir: Path, headline: list[str]
) -> list[Path]:
    """A methods x families heatmap of test NDCG@10 (the ceiling as its first row, probes and the
    oracle last and in grey, headline methods in bold); LLM rows on the subset are drawn on it,
    their label saying so."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    groups = res.meta.get("groups", {})
    cols = ["OOMA", *FAMILIES]
    names, rows_of, grid = ["Ceiling: Recall@100"], ["ceiling"], []
    rec = _family_means(res.recall(all_keys), all_keys)
    grid.append([rec[c] for c in cols])
    test_keys = {m: set(res.test(m)) for m in order}
    for m in order:
        keys = all_keys if test_keys[m] >= set(all_keys) else subset_keys
        if not keys or not test_keys[m] >= set(keys):  # a row on fewer episodes than its peers is left to the tables
            continue
        v = _family_means(res.test(m), keys)
        names.append(m + ("" if keys is all_keys else f" (subset, {len(keys)} eps)"))
        rows_of.append(m)
        grid.append([v[c] for c in cols])
    data = np.array([[np.nan if x is None else x for x in row] for row in grid], dtype=float)
    # colour: each column relative to its best method or probe (families differ tenfold in level);
    # the ceiling and the oracle stay white, as references
    coloured = np.array([m != "ceiling" and groups.get(m) != "ceiling" for m in rows_of])
    rel = np.full_like(data, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a family no row has numbers for stays white
        best = np.nanmax(np.where(coloured[:, None], data, np.nan), axis=0)
    rel[coloured] = data[coloured] / np.where(best > 0, best, np.nan)
    fig, ax = plt.subplots(figsize=(11, 0.34 * len(names) + 1.8))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(rel), aspect="auto", cmap=cmap, vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(cols)):
            if np.isfinite(data[i, j]):
                dark = np.isfinite(rel[i, j]) and rel[i, j] < 0.6
                ax.text(j, i, f"{data[i, j]:.3f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=20)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for label, m in zip(ax.get_yticklabels(), rows_of, strict=True):
        if m in headline:
            label.set_fontweight("bold")
        if groups.get(m) in NOT_METHODS or m == "ceiling":
            label.set_color("dimgray")
            label.set_style("italic")
    for i in range(1, len(rows_of)):  # rules between the ceiling, the methods, the probes and the oracle
        if (groups.get(rows_of[i]) or rows_of[i]) != (groups.get(rows_of[i - 1]) or rows_of[i - 1]) and (
            groups.get(rows_of[i]) in NOT_METHODS or groups.get(rows_of[i - 1]) in NOT_METHODS or rows_of[i - 1] == "ceiling"
        ):
            ax.axhline(i - 0.5, color="black", lw=1.2)
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01).set_label("relative to the column's best method or probe", fontsize=7)
    ax.set_title(
        "Test NDCG@10 by task family (protocol v2). First row: the pools' Recall@100 ceiling; grey: user-blind probes and the oracle",
        fontsize=9,
    )
    fig.tight_layout()
    path = out_dir / "by-family.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
