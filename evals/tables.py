"""The report's tables: methods per family with the ceiling and the probes, routing diagnostics, paired
comparisons, coverage and the evidence ablations.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from mma_agent.modalities import OOMA_FAMILIES

from .methods import LOOKUP
from .results import (
    FAMILIES,
    MIN_PAIRED,
    NOT_METHODS,
    Key,
    Results,
    cliffs_delta,
    family_means,
    mean_over,
    rounded,
    valid_mean,
    wilcoxon_p,
)


def ceiling_row(res: Results, keys: list[Key]) -> dict:
    """Recall@100 of the pools per family: the ceiling every method shares."""
    means = family_means(res.recall(keys), keys)
    return rounded(
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
        n10 = family_means(res.test(m), ks)
        full = [k for k in ks if k[0] == "full"]
        hit = [k for k in full if res.test(m, "recall@100")[k] > 0]
        row: dict[str, Any] = {"method": m, "group": groups.get(m, ""), "OOMA": n10["OOMA"], **{f: n10[f] for f in FAMILIES}}
        row["full H@10"] = mean_over(res.test(m, "hr@10"), full)
        row["full N@20"] = mean_over(res.test(m, "ndcg@20"), full)
        row["full N@10 (pools with a relevant)"] = mean_over(res.test(m), hit)
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
            per_seed = [family_means(res.test(m, "ndcg@10", seed=sd), ks)["OOMA"] for sd in seeds]
            row["seeds (OOMA sd)"] = f"{len(seeds)} ({np.std([v for v in per_seed if v is not None]):.4f})"
        else:
            row["seeds (OOMA sd)"] = "1"
        rows.append(rounded(row))
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
                rounded(
                    {
                        "method": m,
                        "N@10": mean_over(res.test(m), ks),
                        "H@10": mean_over(res.test(m, "hr@10"), ks),
                        "N@20": mean_over(res.test(m, "ndcg@20"), ks),
                        "N@10 (pools with a relevant)": mean_over(res.test(m), hk),
                        "alpha": res.alpha.get((m, f), ""),
                        "fallback": f"{100 * np.mean([s == 'fallback' for s in status]):.0f}%" if status else "",
                        "episodes": len(ks),
                    }
                )
            )
        title = (
            f"### {f}: first stage {first_stage.get(f, '?')}; {len(fk)} test pools; Recall@100 (ceiling) {mean_over(rec, fk):.4f}; "
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
        probe = max(probes, key=lambda m: mean_over(res.test(m), [k for k in fk if k in res.test(m)]) or 0, default=None)
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
        out.append((f"### {f}: {len(fk)} test pools; Recall@100 (ceiling) {mean_over(rec, fk):.4f}", rows))
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
