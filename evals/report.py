"""`mma eval report RUN`: tables, significance tests, routing diagnostics and plots from a store.

Alpha (Eq. 2) is chosen per method and protocol (family pools / fixed pools) as the grid value
with the best mean validation NDCG@10 (ties: the larger alpha, i.e. closer to the first stage),
then every test number is read at that alpha. Comparisons are paired on the episodes both methods
ran: the main table holds every method that ran on the whole test set; when some LLM methods ran
only on the seeded subset, a second table gives every method on the episodes they share.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mma_agent.masks import OOMA_FAMILIES, TASK_FAMILIES

from .store import ResultStore

OTHER_FAMILIES = tuple(f for f in TASK_FAMILIES if f not in OOMA_FAMILIES)
NOTES = [
    "- Regenerate with `bash scripts/eval.sh` (after `scripts/main.sh` and `scripts/train.sh`); the raw store stays under `.mma/`.",
    "- Family pools: the target and 99 hard negatives mined from the family's surviving modalities; OOMA = the text-only, image-only "
    "and behaviour-only families pooled. Fixed pools: LightGCN's top-100 over the catalogue (the target may be missing).",
    "- Every method's own scores are fused with the first stage (Eq. 2) at the alpha chosen on validation; a method that cannot score "
    "an episode (masked modality, agent fallback, crash) gets the first-stage ranking there, counted under `fallback` / `errors`.",
    "- Alpha comes from the validation episodes a method ran (`valid eps (alpha)`): every validation pool for the methods without "
    "an LLM, the seeded validation subset for an LLM method that was extended to the test pools only.",
    "- Retriever rows re-score the pool with a CF model, so they fall back wherever behaviour is masked.",
    "- Completion rows impute the masked modalities of the episode's items from a bank of catalogue items that are never "
    "validation/test targets (zero, bank mean, mean of the 10 nearest bank items in a visible modality, or 10 rounds of feature "
    "propagation over that kNN graph), then average text, image and LightGCN-embedding similarity to the history. Unlike the agent, "
    "they read the masked modality of other items.",
    "- **Protocol caveat.** Family pools take the target's nearest neighbours in the surviving modalities as its negatives, so "
    "the target sits at the centre of its own pool. The pool-centrality probe, which never looks at the user, measures how much a "
    "method can gain from that alone; any method that compares candidates with each other (feature propagation with edges inside "
    "the pool does) can exploit it. Per-candidate methods (the tools, the agent, retrievers) cannot. Read OOMA numbers with the probe's row beside them.",
    "- Seeds: the trained MARGO- and MAGNET-style rows are trained and evaluated with five seeds (their numbers are the mean over "
    "seeds, with the standard deviation of the OOMA mean); every other method is deterministic here (fixed pools, greedy decoding, "
    "scripted plans) and ran once. The tests are paired Wilcoxon signed-rank tests over episodes.",
    "- MARGO-style and MAGNET-style rows are scaled down (see `evals/fusion_models.py`): frozen encoders (MiniLM, the poster CLIP, "
    "LightGCN item vectors) with learned projections, history-mean users, modality dropout, 6 epochs of BPR on the train split; "
    "MARGO keeps the reliability-supervised, confidence-scaled item weights and the two stages; MAGNET keeps the dual view "
    "(interaction graph + content kNN edges), the three role experts with a router, and the entropy-triggered two-stage schedule.",
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


class Results:
    """Per-episode metrics of a run at each method's validation-chosen alpha."""

    def __init__(self, rows: list[dict], meta: dict) -> None:
        self.meta = meta
        self.by_method: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            self.by_method[r["method"]].append(r)
        self.methods = list(self.by_method)
        self._test: dict[tuple, dict[tuple, float]] = {}
        self.alpha: dict[tuple[str, str], str] = {}
        for m, rs in self.by_method.items():
            for protocol in ("family", "fixed"):
                valid = [r for r in rs if r["split"] == "valid" and r["protocol"] == protocol]
                if not valid:
                    self.alpha[m, protocol] = "0.5"
                    continue
                alphas = list(valid[0]["metrics"])
                means = {a: np.mean([r["metrics"][a]["ndcg@10"] for r in valid]) for a in alphas}
                best = max(means.values())
                self.alpha[m, protocol] = max((a for a in alphas if means[a] >= best - 1e-12), key=float)

    def test(self, method: str, metric: str = "ndcg@10", seed: int | None = None) -> dict[tuple, float]:
        """(protocol, family, pool) -> metric on test at the chosen alpha (the mean over seeds, or one seed's)."""
        if (method, metric, seed) not in self._test:
            self._test[method, metric, seed] = self._read_test(method, metric, seed)
        return self._test[method, metric, seed]

    def _read_test(self, method: str, metric: str, seed: int | None) -> dict[tuple, float]:
        acc: dict[tuple, list[float]] = defaultdict(list)
        for r in self.by_method[method]:
            if r["split"] == "test" and (seed is None or r["seed"] == seed):
                acc[r["protocol"], r["family"], r["pool"]].append(r["metrics"][self.alpha[method, r["protocol"]]][metric])
        return {k: float(np.mean(v)) for k, v in acc.items()}

    def seeds(self, method: str) -> list[int]:
        return sorted({r["seed"] for r in self.by_method[method]})

    def test_rows(self, method: str) -> list[dict]:
        return [r for r in self.by_method[method] if r["split"] == "test"]

    def group(self, method: str) -> str:
        return self.meta.get("groups", {}).get(method, "")


def _mean(values: dict[tuple, float], keys: list[tuple], select) -> float | None:
    ks = [k for k in keys if select(k)]
    return float(np.mean([values[k] for k in ks])) if ks else None


def method_table(res: Results, methods: list[str], keys: list[tuple]) -> list[dict]:
    rows = []
    for m in methods:
        vals = {metric: res.test(m, metric) for metric in ("ndcg@10", "hr@10", "ndcg@20", "hr@20")}
        ks = [k for k in keys if k in vals["ndcg@10"]]
        ooma = lambda k: k[0] == "family" and k[1] in OOMA_FAMILIES  # noqa: E731
        row: dict[str, Any] = {"method": m, "alpha fam/fixed": f"{res.alpha[m, 'family']}/{res.alpha[m, 'fixed']}"}
        for metric, label in (("ndcg@10", "OOMA N@10"), ("hr@10", "OOMA H@10"), ("ndcg@20", "OOMA N@20"), ("hr@20", "OOMA H@20")):
            row[label] = _mean(vals[metric], ks, ooma)
        for fam in OOMA_FAMILIES + OTHER_FAMILIES:
            row[fam] = _mean(vals["ndcg@10"], ks, lambda k, fam=fam: k[0] == "family" and k[1] == fam)
        row["fixed N@10"] = _mean(vals["ndcg@10"], ks, lambda k: k[0] == "fixed")
        row["fixed H@10"] = _mean(vals["hr@10"], ks, lambda k: k[0] == "fixed")
        seeds = res.seeds(m)
        in_ks = set(ks)
        trs = [r for r in res.test_rows(m) if (r["protocol"], r["family"], r["pool"]) in in_ks and r["seed"] == seeds[0]]
        row["fallback"] = f"{100 * np.mean([r['status'] == 'fallback' for r in trs]):.0f}%" if trs else ""
        row["errors"] = sum(r["status"] == "error" for r in trs)
        row["ms/ep"] = f"{1000 * np.mean([r['seconds'] for r in trs]):.0f}" if trs else ""
        row["episodes"] = len(ks)
        row["valid eps (alpha)"] = sum(r["split"] == "valid" and r["seed"] == seeds[0] for r in res.by_method[m])
        if len(seeds) > 1:  # the spread of the OOMA mean over seeds
            per_seed = [_mean(res.test(m, "ndcg@10", seed=sd), ks, ooma) for sd in seeds]
            row["seeds (OOMA sd)"] = f"{len(seeds)} ({np.std([v for v in per_seed if v is not None]):.4f})"
        else:
            row["seeds (OOMA sd)"] = "1"
        rows.append({k: (round(v, 4) if isinstance(v, float) else ("" if v is None else v)) for k, v in row.items()})
    return rows


def routing_table(res: Results, methods: list[str]) -> list[dict]:
    rows = []
    for m in methods:
        trs = [r for r in res.test_rows(m) if "calls" in r["info"]]
        if not trs:
            continue
        by = defaultdict(list)
        for r in trs:
            by[r["family"] if r["protocol"] == "family" else "fixed pools"].append(r)
        for fam, rs in [*sorted(by.items()), ("all", trs)]:
            calls = sum(r["info"]["calls"] for r in rs)
            first = Counter(r["info"]["first_action"] for r in rs).most_common(1)[0]
            rows.append({
                "method": m, "family": fam, "episodes": len(rs), "failed calls": f"{100 * sum(r['info']['failed'] for r in rs) / max(calls, 1):.1f}%",
                "invalid/ep": f"{np.mean([r['info']['invalid'] for r in rs]):.2f}", "turns/ep": f"{np.mean([r['info']['turns'] for r in rs]):.2f}",
                "ask_user/ep": f"{np.mean([r['info'].get('ask_user', 0) for r in rs]):.2f}", "fallback": f"{100 * np.mean([r['info']['fallback'] for r in rs]):.0f}%",
                "first action": f"{first[0]} ({100 * first[1] / len(rs):.0f}%)",
            })  # fmt: skip
    return rows


def compare(res: Results, a: str, b: str, keys: list[tuple], label: str) -> dict:
    va, vb = res.test(a), res.test(b)
    ks = [k for k in keys if k in va and k in vb]
    x, y = np.array([va[k] for k in ks]), np.array([vb[k] for k in ks])
    if not ks:
        return {"comparison": f"{a} vs {b}", "protocol": label, "episodes": 0}
    return {
        "comparison": f"{a} vs {b}", "protocol": label, "episodes": len(ks), "NDCG@10 A": round(float(x.mean()), 4), "NDCG@10 B": round(float(y.mean()), 4),
        "rel. diff": f"{100 * (x.mean() - y.mean()) / y.mean():+.1f}%" if y.mean() > 0 else "", "A better/worse/tied": f"{(x > y).sum()}/{(x < y).sum()}/{(x == y).sum()}",
        "Wilcoxon p": f"{wilcoxon_p(x, y):.3g}", "Cliff's delta": round(cliffs_delta(x, y), 3),
    }  # fmt: skip


def coverage(meta: dict, llm: list[str], whole: list[str], test_keys: dict[str, set], n_subset: int) -> str:
    """Which LLM methods ran on every test pool and which on the seeded subset, in words."""
    limits = meta.get("llm_limit", {})
    if not isinstance(limits, dict):  # a store written before limits were per method
        limits = {m: limits for m in llm}
    full = [m for m in llm if m in whole]
    out = "Methods without an LLM ran on every pool"
    out += f", and so did {', '.join(full)} on test." if full else "."
    rest = [m for m in llm if m not in whole]
    if rest:
        size = min((v for v in limits.values() if v is not None), default="?")  # the subset every LLM method ran
        out += (f" {', '.join(rest)} ran on a seeded subset of {size} pools per family and split "
                f"({n_subset} test episodes common to them)")
        more = [f"{m} also on {len(test_keys[m]) - n_subset} more" for m in rest if len(test_keys[m]) > n_subset]
        out += f"; {', '.join(more)} test episodes, used where a comparison covers them." if more else "."
    return out


def significance(res: Results, mma: str | None, keys: list[tuple], baselines: list[str], per_candidate: list[str], scope: str,
                 done: set) -> list[dict]:
    """MMA-Auto against the strongest baseline on OOMA and fixed pools (and the strongest one that
    scores candidates one by one, when that is another), against RuleRouter-Fuse, Interactive
    against Auto, and Auto against its zero-shot policy (each pair once, in the widest scope both
    cover: `done` carries the pairs made); paired on the episodes both ran."""
    if mma is None:
        return []
    out = []
    for label, ks in (("OOMA (text/image/behaviour-only)", [k for k in keys if k[0] == "family" and k[1] in OOMA_FAMILIES]),
                      ("fixed pools", [k for k in keys if k[0] == "fixed"])):  # fmt: skip
        if not ks:
            continue
        label = f"{label}, {scope}"
        strength = lambda m, ks=ks: np.mean([res.test(m).get(k, np.nan) for k in ks])  # noqa: E731 (res.test is memoised)
        if baselines:
            strongest = max(baselines, key=strength)
            out.append(compare(res, mma, strongest, ks, label))
            strongest_pc = max(per_candidate, key=strength) if per_candidate else strongest
            if strongest_pc != strongest:
                out.append(compare(res, mma, strongest_pc, ks, label + ", per-candidate baselines"))
        for a, b in ((mma, "RuleRouter-Fuse"), ("MMA-Interactive", mma), (mma, "MMA-Auto (zero-shot)")):
            covered = lambda m, ks=ks: m in res.methods and set(ks) <= set(res.test(m))  # noqa: E731
            if a != b and covered(a) and covered(b) and (a, b, label.split(",")[0]) not in done:
                done.add((a, b, label.split(",")[0]))
                out.append(compare(res, a, b, ks, label))
    return out


def build_report(store_path: Path, out_dir: Path, *, title: str = "Evaluation") -> tuple[str, list[dict]]:
    """Write `report.md` and plots into out_dir; return the Markdown and the main table."""
    from mma_agent.cli import format_table

    store = ResultStore(store_path)
    rows, meta = store.rows(), store.meta()
    store.close()
    res = Results(rows, meta)
    groups = meta.get("groups", {})
    order = [m for m in [*meta.get("order", []), *(m for m in res.methods if m not in meta.get("order", []))] if m in res.methods]
    llm = [m for m in order if meta.get("uses_llm", {}).get(m)]
    test_keys = {m: set(res.test(m)) for m in res.methods}
    all_keys = sorted(set.union(*test_keys.values()))
    # methods on every test pool, and the seeded subset that the LLM methods still on a subset share
    whole = [m for m in order if test_keys[m] >= set(all_keys)]
    partial = [m for m in llm if m not in whole]
    subset_keys = sorted(set.intersection(*(test_keys[m] for m in partial))) if partial else []
    main = method_table(res, whole, all_keys)
    sub = method_table(res, order, subset_keys) if subset_keys else []
    for r in main + sub:
        r["group"] = groups.get(r["method"], "")

    # headline comparisons: on the whole test set against every method that ran there, then on
    # the subset against the LLM methods that ran only there
    mma = [m for m in llm if m.startswith("MMA-Auto")]
    valid_ooma = lambda m: np.mean([r["metrics"][res.alpha[m, "family"]]["ndcg@10"] for r in res.by_method[m]  # noqa: E731
                                    if r["split"] == "valid" and r["protocol"] == "family" and r["family"] in OOMA_FAMILIES] or [0])  # fmt: skip
    best_mma = max([m for m in mma if m in whole] or mma, key=valid_ooma) if mma else None
    probes = {m for m in res.methods if groups.get(m) == "protocol probe"}
    baselines = [m for m in res.methods if not m.startswith("MMA-") and m != "RuleRouter-Fuse" and m not in probes]
    per_candidate = [m for m in baselines if not meta.get("pool_structure", {}).get(m)]
    sig = significance(res, best_mma, all_keys, [m for m in baselines if m in whole], [m for m in per_candidate if m in whole], "whole test set", done := set())
    if subset_keys:
        sig += significance(res, best_mma, subset_keys, [m for m in baselines if m in partial], [], "LLM subset", done)
    routing = routing_table(res, [m for m in order if m.startswith(("MMA", "ReAct", "RuleRouter"))])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(main, out_dir, "whole test set")
    ceiling = meta.get("recall@100", {})
    md = [f"# {title}", "", f"Data: `{meta.get('data')}`. Pools: {meta.get('protocols')} on families {meta.get('families')}; "
          f"{len(all_keys)} test episodes. {coverage(meta, llm, whole, test_keys, len(subset_keys))} Alpha grid {meta.get('alphas')}, chosen per method and "
          "protocol on validation NDCG@10.", "", f"Fixed-pool Recall@100 (the ceiling, identical for every method): {json.dumps(ceiling)}.", ""]  # fmt: skip
    md += [format_table(main, "## Every method that ran on the whole test set (NDCG@10 unless named)"), ""]
    if sub:
        md += [format_table(sub, f"## Every method on the seeded subset that the other LLM methods ran ({len(subset_keys)} test episodes)"), ""]
    md += [format_table(sig, f"## Significance (paired Wilcoxon signed-rank, Cliff's delta; MMA-Auto = {best_mma}, the policy best on validation OOMA among those on the whole test set)"), ""]
    md += [format_table(routing, "## Routing diagnostics (test)"), ""]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    md += ["", "## How to read this", "", *NOTES]
    if meta.get("notes"):
        md += meta["notes"]
    text = "\n".join(md) + "\n"
    (out_dir / "report.md").write_text(text)
    return text, main


def _plots(main: list[dict], out_dir: Path, scope: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    methods = [r["method"] for r in main]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(methods), 1)
    for i, r in enumerate(main):
        ys = [r[f] if r[f] != "" else 0 for f in OOMA_FAMILIES]
        ax.bar(np.arange(3) + i * width, ys, width, label=r["method"], color=plt.cm.tab20(i % 20))
    ax.set_xticks(np.arange(3) + 0.4 - width / 2, OOMA_FAMILIES)
    ax.set_ylabel("NDCG@10 (test)")
    ax.set_title(f"Per-modality OOMA breakdown ({scope})")
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    paths.append(out_dir / "per-modality.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    fams = list(OOMA_FAMILIES + OTHER_FAMILIES) + ["fixed N@10"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for r in main:
        ax.plot(range(len(fams)), [r[f] if r[f] != "" else np.nan for f in fams], marker="o", markersize=3, label=r["method"],
                color=plt.cm.tab20(main.index(r) % 20))
    ax.set_xticks(range(len(fams)), [f.replace(" N@10", "") for f in fams], rotation=20)
    ax.set_ylabel("NDCG@10 (test)")
    ax.set_title(f"NDCG@10 by task family ({scope})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    paths.append(out_dir / "by-family.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
