"""`mma eval queries`: what reading the person's request can buy, on query episodes.

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
- the label table (`--label-table`): the labels the request policy is trained on
  (`training.request_policy`, the "fit" half's exploration), run as a lookup table by family and
  kind of request: what a policy that imitated them perfectly would score;
- MMA-Auto with each policy asked for (`--llm NAME=BACKEND`), on every test episode, fused at the
  alpha chosen on the validation episodes it ran, of the users in the "select" half (a trained
  policy learns from the "fit" half: `training.queries.validation_half`; `evals/query_llm.py`, a
  resumable store);
- the routing ceiling: the best fixed choice per facet type (chosen on validation: the headroom
  that reading the query can reach), a contextual non-LLM router (`evals.routing.contextual_pick`:
  ridge per top-5 validation choice over the pool's router features and what a keyword table reads
  from the words, `word_flags`), the per-pool hindsight oracle, and its split-half transfer
  (choose on a random half of the pool's relevant items, score on the other half).
Paired tests: Wilcoxon signed-rank and Cliff's delta, the fixed fusion against the controls and each
policy against the fixed fusion, the probe, the facet rule and history only.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import numpy as np
from tqdm.auto import tqdm

from mma_agent.evals.environment import episode_channels
from mma_agent.metrics import ndcg_of_scores
from mma_agent.toolkits.workspace import Workspace
from mma_agent.training.queries import MIN_ITEMS, facet_queries, leaks, real_tag_queries, validation_half

MIN_ROUTER_EPISODES = 20  # validation episodes a contextual router needs (5-fold CV)
ALPHAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
HISTORY_GROUPS = ("text", "image", "graph")
LOOK_WORDS = re.compile(r"\b(poster|looks?|look like|colou?rful|dark|neon|vintage|black and white|cartoon)\b", re.IGNORECASE)
LIKE = re.compile(r"\blike\s+[A-Z0-9]")
ERA = re.compile(r"\b(1[89]|20)\d0s\b|\b(19|20)\d\d\b")
LABEL_ROW = "Label table (SFT's labels per family and kind of request, no LLM)"
WORD_FLAGS = ("names a title (like ...)", "look words", "an era or year", "log words")


def query_set_name(split: str, kind: str, *, seed: int = 0, min_items: int = MIN_ITEMS) -> str:
    """The name of one saved query set (`<split>-<kind>-seed<seed>-n<min_items>`: its JSONL file's stem)."""
    return f"{split}-{kind}-seed{seed}-n{min_items}"


def word_flags(query: str) -> np.ndarray:
    """What a keyword table reads from a request (`WORD_FLAGS`): the facet rule's cues, an era, its length."""
    return np.array(
        [bool(LIKE.search(query)), bool(LOOK_WORDS.search(query)), bool(ERA.search(query)), np.log1p(len(query.split()))],
        dtype=float,
    )


def facet_rule(query: str) -> dict[str, float]:
    """A keyword list routes the request to one request tool, half and half with the history's groups."""
    if LIKE.search(query):
        tool = "graph_request"
    elif LOOK_WORDS.search(query):
        tool = "image_request"
    else:
        tool = "text_request"
    return {tool: 0.5, **{g: 0.5 / len(HISTORY_GROUPS) for g in HISTORY_GROUPS}}


def score_table(
    pipeline: Workspace, episodes: list[dict], menu: list[dict], labels: dict[tuple[str, str], tuple[str, str]] | None = None
) -> dict:
    """Per episode: NDCG@10 of every (menu entry, alpha), of the first stage, of the query-only probe and
    of the facet rule at each alpha; and on two random halves of the relevant items, for the split-half transfer.
    `labels` (`training.request_policy.label_table`): also the labelled plan's NDCG@10 at each alpha
    (the history tools, the label's request tools, its weights over the groups they gathered)."""
    from mma_agent.graphs.fusion import fuse, weighted_evidence
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.training.request_policy import option_tools, table_label

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
                row.append(ndcg_of_scores(s, cands, set(rel)))
                row_a.append(ndcg_of_scores(s, cands, halves[0]) if halves[0] else np.nan)
                row_b.append(ndcg_of_scores(s, cands, halves[1]) if halves[1] else np.nan)
            grid.append(row)
            grid_a.append(row_a)
            grid_b.append(row_b)
        history = weighted_evidence(channels, {g: c for g, c in groups.items() if g in HISTORY_GROUPS}, {})  # RuleRouter-Fuse
        out["history"].append(
            [ndcg_of_scores(first if history is None else fuse(first, history, a), cands, set(rel)) for a in ALPHAS]
        )
        probe = weighted_evidence(channels, {g: c for g, c in groups.items() if g.endswith("_request")}, {})
        rule = weighted_evidence(channels, groups, facet_rule(ep["query"]))
        out["grid"].append(grid)
        out["grid_a"].append(grid_a)
        out["grid_b"].append(grid_b)
        out["first"].append(ndcg_of_scores(first, cands, set(rel)))
        out["probe"].append(
            ndcg_of_scores(probe, cands, set(rel)) if probe is not None else ndcg_of_scores(first, cands, set(rel))
        )
        if labels is not None:
            option, w = table_label(labels, ep["family"], ep["query_kind"])
            called = [s for s in vocab.automated if s.reads_request is None or s.name in option_tools(option)]
            kept = {c: v for c, v in channels.items() if any(c in s.channel_names for s in called)}
            plan = weighted_evidence(kept, groups, json.loads(w))
            out["labels"].append(
                [ndcg_of_scores(first if plan is None else fuse(first, plan, a), cands, set(rel)) for a in ALPHAS]
            )
        out["rule"].append([ndcg_of_scores(first if rule is None else fuse(first, rule, a), cands, set(rel)) for a in ALPHAS])
        out["recall100"].append(len(set(cands) & set(rel)) / max(1, min(len(rel), 100)))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def _best(grid: np.ndarray) -> tuple[int, int]:
    """(menu entry, alpha) with the best mean over the episodes of `grid` (episodes x entries x alphas); ties: first."""
    mean = np.nanmean(grid, axis=0)
    e, a = np.unravel_index(int(np.nanargmax(mean)), mean.shape)
    return int(e), int(a)


def query_report(
    pipeline: Workspace,
    sets: dict[str, list[dict]],
    out_dir,
    *,
    seed: int = 0,
    min_items: int = 30,
    llm: dict[str, dict[str, dict]] | None = None,
    labels: dict[tuple[str, str], tuple[str, str]] | None = None,
) -> dict[str, list[dict]]:
    """The tables (and `report.md` and a plot in `out_dir`) from the saved query sets of `mma queries`.
    `llm`: policy name -> its records (`evals.query_llm.run_policy`): a row "MMA-Auto (name)" each,
    fused at the alpha chosen on the validation episodes it ran, with paired tests (against the
    baselines, and each policy against those listed before it) and what it did.
    `labels` (`training.request_policy.label_table`): the row LABEL_ROW, the trained policy's
    imitation target run as a lookup table, with its paired tests."""
    from mma_agent.evals.query_llm import llm_grid, usage_row
    from mma_agent.evals.routing import contextual_pick, pool_features, popularity
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.util import atomic_write_text, format_table

    menu = tool_vocabulary(pipeline.toolkits()[1]).for_request("words").weight_menu()
    menu = [w for w in menu if "ask" not in w]
    pop = popularity(pipeline)
    tables: dict[str, list[dict]] = {}
    plot: dict[str, dict[str, float]] = {}
    for kind in ("facet", "real-tags"):
        valid = sets[query_set_name("valid", kind, seed=seed, min_items=min_items)]
        test = sets[query_set_name("test", kind, seed=seed, min_items=min_items)]
        sv, st = score_table(pipeline, valid, menu, labels), score_table(pipeline, test, menu, labels)
        xv, xt = (
            np.array([np.concatenate([pool_features(e, pop), word_flags(e["query"])]) for e in eps]) for eps in (valid, test)
        )
        llm_v = {n: llm_grid(valid, r, ALPHAS) for n, r in (llm or {}).items()}
        llm_t = {n: llm_grid(test, r, ALPHAS) for n, r in (llm or {}).items()}
        families = sorted({e["family"] for e in test})
        rows, tests, joint = [], [], {}  # joint: each column per test episode, at its family's choices
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
            if iv.sum() >= MIN_ROUTER_EPISODES:
                pick = contextual_pick(xv[iv], sv["grid"][iv].reshape(iv.sum(), -1), xt[it])
                routed = st["grid"][it].reshape(it.sum(), -1)[np.arange(it.sum()), pick]
            else:  # too few validation episodes to fit a router: it is the fixed choice
                routed = fixed
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
                "Contextual router (ridge on pool features and query words, fitted on validation)": routed,
                "Oracle: best (entry, alpha) per pool, in hindsight": oracle,
            }
            if labels is not None:
                # alpha on the "select" half: the "fit" half's episodes taught the labels
                sel = iv & np.array([validation_half(e["user_id"]) == "select" for e in valid])
                a_lab = int(np.nanargmax(np.nanmean(sv["labels"][sel if sel.any() else iv], axis=0)))
                cols[LABEL_ROW] = st["labels"][it][:, a_lab]
            for name, grid in llm_t.items():
                ran = iv & ~np.isnan(llm_v[name][:, 0])
                ran = ran if ran.any() else ~np.isnan(llm_v[name][:, 0])
                a_llm = int(np.nanargmax(np.nanmean(llm_v[name][ran], axis=0))) if ran.any() else a_fix
                cols[f"MMA-Auto ({name})"] = grid[it][:, a_llm]
            if family != "all":
                for k, v in cols.items():
                    joint.setdefault(k, np.full(len(test), np.nan))[it] = v
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
                "Contextual router (ridge on pool features and query words, fitted on validation)",
                *([LABEL_ROW] if labels is not None else []),
            ):
                tests.append(_paired(family, "Fixed fusion", fixed, name, cols[name]))
            for policy in (k for k in cols if k.startswith("MMA-Auto")):
                for name in (
                    "Fixed fusion of query and history (chosen on validation)",
                    "Query-only probe (user-blind, not fused)",
                    "Facet rule (keyword routing)",
                    "Contextual router (ridge on pool features and query words, fitted on validation)",
                    "History only (RuleRouter-Fuse's equal weights)",
                    *([LABEL_ROW] if labels is not None else []),
                ):
                    tests.append(_paired(family, policy, cols[policy], name, cols[name]))
            policies = [k for k in cols if k.startswith("MMA-Auto")]
            for i, later in enumerate(policies):  # policies against each other, on the same episodes
                tests += [_paired(family, later, cols[later], earlier, cols[earlier]) for earlier in policies[:i]]
        tables[f"{kind} queries: NDCG@10 per family ({len(test)} test episodes)"] = rows
        tables[f"{kind} queries: paired tests"] = tests
        if kind == "facet":
            tables["facet queries: NDCG@10 per facet type (test, every family; a two-facet query counts under both)"] = _by_type(
                test, joint
            )
        if llm:
            request_tools = {s.name for s in tool_vocabulary(pipeline.toolkits()[1]).specs if s.reads_request}
            tables[f"{kind} queries: what each policy did (test)"] = [
                usage_row(n, test, r, labels, request_tools) for n, r in llm.items()
            ]
    _write(out_dir, tables, plot, format_table, atomic_write_text)
    return tables


def _paired(family: str, name: str, a: np.ndarray, other: str, b: np.ndarray) -> dict:
    """One paired comparison on the same episodes: mean difference, signs, Wilcoxon and Cliff's delta."""
    from mma_agent.evals.results import cliffs_delta, wilcoxon_p

    ok = ~np.isnan(a) & ~np.isnan(b)
    a, b = a[ok], b[ok]
    d = a - b
    return {"family": family, "row": name, "vs": other, "episodes": int(ok.sum()), "mean diff": f"{np.mean(d):+.4f}",
            "better/worse/tied": f"{int((d > 0).sum())}/{int((d < 0).sum())}/{int((d == 0).sum())}",
            "Wilcoxon p": f"{wilcoxon_p(a, b):.3g}", "Cliff's delta": f"{cliffs_delta(a, b):+.3f}"}  # fmt: skip


def _by_type(test: list[dict], joint: dict[str, np.ndarray]) -> list[dict]:
    """Each row's mean per facet type (an episode counts under each type its query carries)."""
    from mma_agent.training.queries import FACET_TYPES

    kinds = [set(e["query_kind"].split("+")) for e in test]
    rows = []
    for t in FACET_TYPES:
        m = np.array([t in k for k in kinds])
        if m.any():
            rows.append({"facet type": t, "episodes": int(m.sum())} | {k: f"{np.nanmean(v[m]):.4f}" for k, v in joint.items()})
    return rows


def _write(out_dir, tables, plot, format_table, atomic_write_text) -> None:
    from pathlib import Path

    from mma_agent.plots import bar_plot

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "# Query episodes: what reading the request buys\n\n" + (__doc__ or "").split("\n\n", 1)[1] + "\n"
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
            stem = query_set_name(split, kind, seed=seed, min_items=min_items)
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
