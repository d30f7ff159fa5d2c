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
from pathlib import Path

import numpy as np

from mma_agent.modalities import OOMA_FAMILIES

from .methods import LOOKUP
from .results import (
    FAMILIES,
    MIN_PAIRED,
    NOT_METHODS,
    OWN_ABLATIONS,
    AlphaPools,
    Key,
    Results,
    family_means,
)
from .routing import routing_ceiling
from .store import ResultStore
from .tables import (
    coverage,
    evidence_comparisons,
    evidence_tables,
    family_tables,
    method_table,
    policy_comparisons,
    routing_table,
    significance,
)

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
    "- Completion rows impute the masked modalities of the episode's items from a bank of the other catalogue items (zero, "
    "bank mean, mean of the 10 nearest bank items in a visible modality, or 10 rounds of feature "
    "propagation over that kNN graph), then average text, image and LightGCN-embedding similarity to the history. Unlike the agent, "
    "they read the masked modality of other items.",
    "- Seeds: the trained MARGO- and MAGNET-style rows are trained and evaluated with five seeds (their numbers are the mean over "
    "seeds, with the standard deviation of the OOMA mean); every other method is deterministic here and ran once. The tests are "
    "paired Wilcoxon signed-rank tests over episodes, with Cliff's delta as the effect size.",
]


def build_report(
    store_path: Path, out_dir: Path, *, title: str = "Evaluation", alpha_on: AlphaPools = "own", features: dict | None = None
) -> tuple[str, list[dict]]:
    """Write `report.md` and its plot into out_dir; return the Markdown and the main table.
    alpha_on: see `AlphaPools`; features: each episode's router features (`routing.episode_features`),
    for the routing ceiling's contextual router (without them it is left out)."""
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
        means = [family_means(res.test(m), keys) for m in probes if set(keys) <= test_keys[m]]
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
    ceiling = routing_ceiling(rows, meta, features)
    if ceiling:
        md += [
            format_table(
                ceiling,
                "## The routing ceiling: can per-episode routing pay here? (the run's fixed choices: every fused method "
                "without an LLM at every alpha; see `evals/routing.py`)",
            ),
            "",
        ]
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
    rec = family_means(res.recall(all_keys), all_keys)
    grid.append([rec[c] for c in cols])
    test_keys = {m: set(res.test(m)) for m in order}
    for m in order:
        keys = all_keys if test_keys[m] >= set(all_keys) else subset_keys
        if not keys or not test_keys[m] >= set(keys):  # a row on fewer episodes than its peers is left to the tables
            continue
        v = family_means(res.test(m), keys)
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
