"""`mma eval queries`: what reading the person's request can buy, on query episodes (no LLM rows yet).

On the saved query episodes (`training/queries.py`: facet queries and the users' own tags, beside
protocol-v2 pools, relevance the user's held-out positives), every automated tool runs once per
episode under the family's mask, the request tools reading the whole request. Rows, paired on the
same episodes, NDCG@10, each fused with the first stage at the alpha chosen on validation:
- the first stage, and the Recall@100 ceiling;
- history only: RuleRouter-Fuse's equal weights over the history groups (today's reranker);
- the query-only probe: the request groups' similarity alone, not fused, user-blind: if it beats
  the methods, the queries give the target away;
- the fixed fusion of query and history evidence: the (weight-menu entry, alpha) chosen on
  validation per family (the non-LLM control);
- the facet rule: a keyword list routes each request to one request tool, mixed with history;
- the routing ceiling: the best fixed choice per facet type (chosen on validation: the headroom
  that reading the query can reach), the per-pool hindsight oracle, and its split-half transfer
  (choose on a random half of the pool's relevant items, score on the other half).
Paired tests: Wilcoxon signed-rank and Cliff's delta against the fixed fusion.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mma_agent.evals.environment import episode_channels
from mma_agent.toolkits.workspace import Workspace
from mma_agent.training.queries import MIN_ITEMS, facet_queries, leaks, real_tag_queries

ALPHAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
HISTORY_GROUPS = ("text", "image", "graph")
LOOK_WORDS = re.compile(r"\b(poster|looks?|look like|colou?rful|dark|neon|vintage|black and white|cartoon)\b", re.IGNORECASE)
LIKE = re.compile(r"\blike\s+[A-Z0-9]")


def facet_rule(query: str) -> dict[str, float]:
    """A keyword list routes the request to one request tool, half and half with the history's groups."""
    if LIKE.search(query):
        tool = "graph_request"
    elif LOOK_WORDS.search(query):
        tool = "image_request"
    else:
        tool = "text_request"
    return {tool: 0.5, **{g: 0.5 / len(HISTORY_GROUPS) for g in HISTORY_GROUPS}}


def _ndcg(scores: np.ndarray, candidates: list[str], relevant: set[str]) -> float:
    from mma_agent.metrics import ndcg_at_k

    order = np.argsort(-scores, kind="stable")
    return ndcg_at_k([candidates[i] for i in order], relevant, 10)


def score_table(pipeline: Workspace, episodes: list[dict], menu: list[dict]) -> dict:
    """Per episode: NDCG@10 of every (menu entry, alpha), of the first stage, of the query-only probe and
    of the facet rule at each alpha; and on two random halves of the relevant items, for the split-half transfer."""
    from mma_agent.graphs.fusion import fuse, weighted_evidence
    from mma_agent.toolkits import tool_vocabulary

    catalogue, kits = pipeline.toolkits()
    vocab = tool_vocabulary(kits).for_request("words")
    groups = vocab.groups
    rng = np.random.default_rng(0)
    out = defaultdict(list)
    for ep in tqdm(episodes, desc="query episodes", unit="ep"):
        channels = {
            k: np.asarray(v, dtype=np.float64) for k, v in episode_channels(catalogue, kits, vocab, ep, query=ep["query"]).items()
        }
        first = np.asarray(ep["first_stage_scores"], dtype=float)
        rel = list(ep["relevant"])
        perm = rng.permutation(len(rel))
        halves = (set(rel[i] for i in perm[: len(rel) // 2]), set(rel[i] for i in perm[len(rel) // 2 :]))
        cands = ep["candidates"]
        grid, grid_a, grid_b = [], [], []
        for weights in menu:
            mma = weighted_evidence(channels, groups, weights)
            row, row_a, row_b = [], [], []
            for alpha in ALPHAS:
                s = first if mma is None else fuse(first, mma, alpha)
                row.append(_ndcg(s, cands, set(rel)))
                row_a.append(_ndcg(s, cands, halves[0]) if halves[0] else np.nan)
                row_b.append(_ndcg(s, cands, halves[1]) if halves[1] else np.nan)
            grid.append(row)
            grid_a.append(row_a)
            grid_b.append(row_b)
        history = weighted_evidence(channels, {g: c for g, c in groups.items() if g in HISTORY_GROUPS}, {})  # RuleRouter-Fuse
        out["history"].append([_ndcg(first if history is None else fuse(first, history, a), cands, set(rel)) for a in ALPHAS])
        probe = weighted_evidence(channels, {g: c for g, c in groups.items() if g.endswith("_request")}, {})
        rule = weighted_evidence(channels, groups, facet_rule(ep["query"]))
        out["grid"].append(grid)
        out["grid_a"].append(grid_a)
        out["grid_b"].append(grid_b)
        out["first"].append(_ndcg(first, cands, set(rel)))
        out["probe"].append(_ndcg(probe, cands, set(rel)) if probe is not None else _ndcg(first, cands, set(rel)))
        out["rule"].append([_ndcg(first if rule is None else fuse(first, rule, a), cands, set(rel)) for a in ALPHAS])
        out["recall100"].append(len(set(cands) & set(rel)) / max(1, min(len(rel), 100)))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def _best(grid: np.ndarray) -> tuple[int, int]:
    """(menu entry, alpha) with the best mean over the episodes of `grid` (episodes x entries x alphas); ties: first."""
    mean = np.nanmean(grid, axis=0)
    e, a = np.unravel_index(int(np.nanargmax(mean)), mean.shape)
    return int(e), int(a)


def query_report(
    pipeline: Workspace, sets: dict[str, list[dict]], out_dir, *, seed: int = 0, min_items: int = 30
) -> dict[str, list[dict]]:
    """The tables (and `report.md` and a plot in `out_dir`) from the saved query sets of `mma queries`."""
    from mma_agent.evals.results import cliffs_delta, wilcoxon_p
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.util import atomic_write_text, format_table

    menu = tool_vocabulary(pipeline.toolkits()[1]).for_request("words").weight_menu()
    menu = [w for w in menu if "ask" not in w]
    tables: dict[str, list[dict]] = {}
    plot: dict[str, dict[str, float]] = {}
    for kind in ("facet", "real-tags"):
        valid = sets[f"valid-{kind}-seed{seed}-n{min_items}"]
        test = sets[f"test-{kind}-seed{seed}-n{min_items}"]
        sv, st = score_table(pipeline, valid, menu), score_table(pipeline, test, menu)
        families = sorted({e["family"] for e in test})
        rows, tests = [], []
        for family in [*families, "all"]:
            iv = np.array([family in ("all", e["family"]) for e in valid])
            it = np.array([family in ("all", e["family"]) for e in test])
            if not it.any() or not iv.any():
                continue
            e_fix, a_fix = _best(sv["grid"][iv])
            a_hist = int(np.nanargmax(np.nanmean(sv["history"][iv], axis=0)))
            a_rule = int(np.nanargmax(np.nanmean(sv["rule"][iv], axis=0)))
            fixed = st["grid"][it][:, e_fix, a_fix]
            by_type = np.empty(it.sum())
            kinds = np.array([e["query_kind"] for e in test])[it]
            vkinds = np.array([e["query_kind"] for e in valid])
            for k in set(kinds):
                mask_v = iv & (vkinds == k)
                ek, ak = _best(sv["grid"][mask_v]) if mask_v.any() else (e_fix, a_fix)
                by_type[kinds == k] = st["grid"][it][kinds == k][:, ek, ak]
            oracle = np.nanmax(st["grid"][it].reshape(it.sum(), -1), axis=1)
            ga, gb = st["grid_a"][it].reshape(it.sum(), -1), st["grid_b"][it].reshape(it.sum(), -1)
            ok = ~np.isnan(ga).all(axis=1) & ~np.isnan(gb).all(axis=1)
            pick_a, pick_b = (
                np.nanargmax(np.where(np.isnan(ga), -1, ga), axis=1),
                np.nanargmax(np.where(np.isnan(gb), -1, gb), axis=1),
            )
            transfer = (
                np.nanmean([np.mean([gb[i, pick_a[i]], ga[i, pick_b[i]]]) for i in np.flatnonzero(ok)]) if ok.any() else np.nan
            )
            fixed_halves = (
                np.nanmean(
                    [
                        np.mean([gb[i, e_fix * len(ALPHAS) + a_fix], ga[i, e_fix * len(ALPHAS) + a_fix]])
                        for i in np.flatnonzero(ok)
                    ]
                )
                if ok.any()
                else np.nan
            )
            cols = {
                "Ceiling: Recall@100": st["recall100"][it],
                "First stage": st["first"][it],
                "History only (RuleRouter-Fuse's equal weights)": st["history"][it][:, a_hist],
                "Query-only probe (user-blind, not fused)": st["probe"][it],
                "Facet rule (keyword routing)": st["rule"][it][:, a_rule],
                "Fixed fusion of query and history (chosen on validation)": fixed,
                "Best fixed per facet type (chosen on validation)": by_type,
                "Oracle: best (entry, alpha) per pool, in hindsight": oracle,
            }
            row = {
                "family": family,
                "episodes": int(it.sum()),
                "source in pool": f"{np.mean([e['source_in_pool'] for e, m in zip(test, it, strict=True) if m]):.0%}",
            }
            row |= {k: f"{np.mean(v):.4f}" for k, v in cols.items()}
            row["split-half oracle / fixed on the other half"] = f"{transfer:.4f} / {fixed_halves:.4f}"
            row["fixed choice"] = f"{json.dumps(menu[e_fix]) if menu[e_fix] else 'equal'} a={ALPHAS[a_fix]}"
            rows.append(row)
            plot[f"{kind}: {family}"] = {k: float(np.mean(v)) for k, v in cols.items() if not k.startswith(("Ceiling", "Oracle"))}
            for name in (
                "History only (RuleRouter-Fuse's equal weights)",
                "Query-only probe (user-blind, not fused)",
                "Facet rule (keyword routing)",
            ):
                d = fixed - cols[name]
                tests.append({"family": family, "fixed fusion vs": name, "episodes": int(it.sum()), "mean diff": f"{np.mean(d):+.4f}",
                              "better/worse/tied": f"{int((d > 0).sum())}/{int((d < 0).sum())}/{int((d == 0).sum())}",
                              "Wilcoxon p": f"{wilcoxon_p(fixed, cols[name]):.3g}", "Cliff's delta": f"{cliffs_delta(fixed, cols[name]):+.3f}"})  # fmt: skip
        tables[f"{kind} queries: NDCG@10 per family ({len(test)} test episodes)"] = rows
        tables[f"{kind} queries: paired tests of the fixed fusion"] = tests
    _write(out_dir, tables, plot, format_table, atomic_write_text)
    return tables


def _write(out_dir, tables, plot, format_table, atomic_write_text) -> None:
    from pathlib import Path

    from mma_agent.plots import bar_plot

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "# Query episodes: what reading the request buys (no LLM rows yet)\n\n" + (__doc__ or "").split("\n\n", 1)[1] + "\n"
    text += "".join("\n" + format_table(rows, title) + "\n" for title, rows in tables.items())
    atomic_write_text(out_dir / "report.md", text)
    bar_plot(plot, out_dir / "by-family.png", ylabel="NDCG@10", title="Query episodes (test)")


def build_query_sets(
    pipeline: Workspace,
    *,
    families: list[str],
    splits: tuple[str, ...] = ("valid", "test"),
    seed: int = 0,
    min_items: int = MIN_ITEMS,
) -> tuple[dict[str, list[dict]], list[dict], dict[str, str]]:
    """Facet and real-tag query episodes of every pool of `families` on `splits`, saved as JSONL under
    the workdir (`queries/<split>-<kind>-seed<seed>-n<min_items>.jsonl`, rebuilt only when missing).
    Returns the episodes by file stem, a summary table, and what was skipped and why."""
    import json

    from mma_agent.evals.runner import build_episodes
    from mma_agent.util import atomic_write_text

    folder = pipeline.root / "queries"
    out, rows, skipped = {}, [], {}
    for split in splits:
        episodes = build_episodes(pipeline, split, families=families)
        full = [e for e in episodes if e["family"] == "full"]  # the user's own tags: once per user, on the full pool
        for kind in ("facet", "real-tags"):
            stem = f"{split}-{kind}-seed{seed}-n{min_items}"
            path = folder / f"{stem}.jsonl"
            if path.is_file():
                eps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            else:
                if kind == "facet":
                    made = facet_queries(pipeline, episodes, seed=seed, min_items=min_items)
                else:
                    made = real_tag_queries(pipeline, full)
                skipped.update(made.skipped)
                eps = made.episodes
                text = "".join(
                    json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in e.items()}) + "\n" for e in eps
                )
                atomic_write_text(path, text)
            out[stem] = eps
            rows.append(
                {
                    "split": split,
                    "queries": kind,
                    "episodes": len(eps),
                    "users": len({e["user_id"] for e in eps}),
                    "source in pool": f"{np.mean([e['source_in_pool'] for e in eps]):.0%}" if eps else "",
                    "leaks": sum(bool(leaks(pipeline, e)) for e in eps),
                    "kinds": ", ".join(f"{k} {n}" for k, n in Counter(e["query_kind"] for e in eps).most_common(6)),
                }
            )
    return out, rows, skipped


def llm_subset_report(
    pipeline: Workspace,
    sets: dict[str, list[dict]],
    model: Any,
    out_dir,
    *,
    per_family: int = 50,
    seed: int = 0,
    min_items: int = MIN_ITEMS,
) -> dict[str, list[dict]]:
    """MMA-Auto with `model` on a seeded subset of the facet episodes (`per_family` per family and split),
    paired with the non-LLM rows on the same episodes; every alpha and the fixed fusion chosen on the
    validation subset. Writes `llm-subset.md` in `out_dir`."""
    from pathlib import Path

    from mma_agent.evals.results import cliffs_delta, wilcoxon_p
    from mma_agent.evals.runner import picked_pools
    from mma_agent.graphs.fusion import fuse
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.graphs.state import rerank_request, trace_stats
    from mma_agent.llm import resolve_chat_model
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.util import atomic_write_text, format_table

    catalogue, kits = pipeline.toolkits()
    menu = [w for w in tool_vocabulary(kits).for_request("words").weight_menu() if "ask" not in w]
    chat = resolve_chat_model(model, cache_dir=pipeline.config.workdir / "models")
    label = model if isinstance(model, str) else type(model).__name__
    graph = create_mma_reranker(chat, catalogue=catalogue, toolkits=kits).compile()
    picked = {}
    for split in ("valid", "test"):
        eps = sets[f"{split}-facet-seed{seed}-n{min_items}"]
        by: dict[str, list[dict]] = defaultdict(list)
        for e in eps:
            by[e["family"]].append(e)
        picked[split] = [fam[int(i)] for f, fam in sorted(by.items()) for i in picked_pools(len(fam), per_family, seed)]
    scores, calls = {}, {}
    for split, eps in picked.items():
        table = score_table(pipeline, eps, menu)
        outs = graph.batch(
            [rerank_request(e, with_target=False) for e in tqdm(eps, desc=f"MMA-Auto on {split} queries")], {"max_concurrency": 2}
        )
        llm = []
        for e, out in zip(eps, outs, strict=True):
            first = np.asarray(e["first_stage_scores"], dtype=float)
            mma = np.array([out["mma_scores"][c] for c in e["candidates"]]) if out.get("mma_scores") else None
            llm.append(
                [_ndcg(first if mma is None else fuse(first, mma, a), e["candidates"], set(e["relevant"])) for a in ALPHAS]
            )
            for tool, n in trace_stats(out).items():
                if tool in ("calls", "fallback"):
                    calls.setdefault((split, tool), []).append(float(n))
        table["llm"] = np.asarray(llm)
        request_tools = {s.name for s in tool_vocabulary(kits).specs if s.reads_request}
        table["request_tools"] = np.array(
            [sum((t.get("action") or {}).get("tool") in request_tools for t in o["trace"]) for o in outs]
        )
        scores[split] = table
    sv, st = scores["valid"], scores["test"]
    e_fix, a_fix = _best(sv["grid"])
    a_llm = int(np.nanargmax(np.nanmean(sv["llm"], axis=0)))
    a_hist = int(np.nanargmax(np.nanmean(sv["history"], axis=0)))
    ceiling = {"Ceiling: Recall@100 of the pools": st["recall100"]}
    cols = {
        "First stage": st["first"],
        "History only": st["history"][:, a_hist],
        "Query-only probe": st["probe"],
        "Fixed fusion (chosen on the validation subset)": st["grid"][:, e_fix, a_fix],
        f"MMA-Auto ({label}), compact prompt": st["llm"][:, a_llm],
    }
    rows = [{"row": k, "NDCG@10": f"{np.mean(v):.4f}"} for k, v in (ceiling | cols).items()]
    mma = cols[f"MMA-Auto ({label}), compact prompt"]
    tests = []
    for name in ("Fixed fusion (chosen on the validation subset)", "History only", "Query-only probe"):
        d = mma - cols[name]
        tests.append({"MMA-Auto vs": name, "episodes": len(d), "mean diff": f"{np.mean(d):+.4f}",
                      "better/worse/tied": f"{int((d > 0).sum())}/{int((d < 0).sum())}/{int((d == 0).sum())}",
                      "Wilcoxon p": f"{wilcoxon_p(mma, cols[name]):.3g}",
                      "Cliff's delta": f"{cliffs_delta(mma, cols[name]):+.3f}"})  # fmt: skip
    usage = [
        {
            "split": "test",
            "request-tool calls/ep": f"{st['request_tools'].mean():.2f}",
            "share of episodes calling one": f"{(st['request_tools'] > 0).mean():.0%}",
            "tool calls/ep": f"{np.mean(calls[('test', 'calls')]):.1f}",
            "fallback": f"{np.mean(calls[('test', 'fallback')]):.0%}",
        }
    ]
    tables = {
        f"Facet queries, LLM subset ({len(picked['test'])} test episodes, {per_family} per family; "
        f"alphas chosen on {len(picked['valid'])} validation episodes)": rows,
        "Paired tests of MMA-Auto on the same episodes": tests,
        "What the policy did": usage,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = f"# MMA-Auto on facet queries (a subset)\n\n{llm_subset_report.__doc__}\n" + "".join(
        "\n" + format_table(r, t) + "\n" for t, r in tables.items()
    )
    atomic_write_text(out_dir / "llm-subset.md", text)
    return tables
