"""The request policy's labels, shared by three commands: `mma train sft --request` trains on them
(`request_rows`), `mma train eval --request` measures how often a policy follows them
(`request_agreement`), and `mma eval queries --label-table` runs them as a lookup table
(`request_labels`). The labels come from one cached exploration of the validation "fit" half's
facet query episodes (`training.request_policy`)."""

from __future__ import annotations

import json
import time

from mma_agent.cli.common import _pipeline
from mma_agent.util import format_table


def fit_request_episodes(p, *, per_family: int, seed: int) -> list[dict]:
    """The request policy's episodes: the validation facet query episodes of the "fit" half of the
    users, `per_family` per family, each with its `part` (support or query; `training.request_policy.fit_episodes`)."""
    from mma_agent.evals.query_eval import build_query_sets, query_set_name
    from mma_agent.training.queries import QUERY_FAMILIES
    from mma_agent.training.request_policy import fit_episodes

    sets, _, _ = build_query_sets(p, families=list(QUERY_FAMILIES), splits=("valid",), seed=seed)
    return fit_episodes(sets[query_set_name("valid", "facet", seed=seed)], per_family=per_family, seed=seed)


def request_labels(
    p, *, per_family: int, seed: int, episodes: list[dict] | None = None
) -> tuple[list[dict], dict[str, tuple[str, str]]]:
    """The request policy's labels (`training.request_policy`): the support part of `episodes`
    (default `fit_request_episodes`), explored once and cached under the workdir by content, and
    their pooled labels; prints the labels' table. `mma eval queries --label-table` reads the same."""
    from collections import Counter

    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.training.request_policy import (
        explore_request_plans,
        pooled_request_labels,
        request_kind,
        request_options,
    )
    from mma_agent.util import atomic_write_text, json_digest

    catalogue, kits = p.toolkits()
    if episodes is None:
        episodes = fit_request_episodes(p, per_family=per_family, seed=seed)
    support = [e for e in episodes if e["part"] == "support"]
    options = request_options(tool_vocabulary(kits).for_request("words"))
    key = json_digest(
        [[(e["id"], e["query"], e["candidates"], e["relevant"]) for e in support], p.split.fingerprint(), options, "ndcg"]
    )
    path = p.root / "explore" / f"request-{key}.json"
    start = time.perf_counter()
    if path.is_file():
        explored = json.loads(path.read_text())
    else:
        parts = path.with_suffix(".parts.jsonl")
        explored = explore_request_plans(support, catalogue, kits, resume=parts)
        atomic_write_text(path, json.dumps(explored))
        parts.unlink()
    labels = pooled_request_labels(explored)
    counts = Counter((e["family"], request_kind(e["kind"]), *labels[e["id"]]) for e in explored)
    table = [
        {"family": f, "kind": k, "request tool": r or "(none)", "weights": w, "episodes": n}
        for (f, k, r, w), n in sorted(counts.items())
    ]
    print(
        format_table(
            table, f"Pooled labels on {len(support)} support query episodes (explored in {time.perf_counter() - start:.0f} s)"
        )
    )
    return explored, labels


def request_rows(args):
    """`mma train sft --request`: the pipeline, and SFT rows on the request policy's labels (`request_labels`)."""
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.training.request_policy import request_sft_rows

    p = _pipeline(args)
    explored, labels = request_labels(p, per_family=args.per_family, seed=args.seed)
    _, kits = p.toolkits()
    return p, request_sft_rows(
        explored,
        labels,
        history_share=args.history_share,
        seed=args.seed,
        tools=tool_vocabulary(kits) if args.choice_loss else None,
    )


def request_agreement(args) -> None:
    """`mma train eval --request`: each policy on the held-out "query" part of the request policy's
    fit-half episodes (never trained on), against its label from the support part's label table."""
    from mma_agent.evals.query_llm import episode_key, run_policy, weights_fingerprint
    from mma_agent.llm import named_backend
    from mma_agent.toolkits import tool_vocabulary
    from mma_agent.training.request_policy import follows_label, label_table, table_label
    from mma_agent.util import json_digest

    p = _pipeline(args)
    episodes = fit_request_episodes(p, per_family=args.per_family, seed=args.seed)
    table = label_table(*request_labels(p, per_family=args.per_family, seed=args.seed, episodes=episodes))
    held = [e for e in episodes if e["part"] == "query"]
    request_tools = {s.name for s in tool_vocabulary(p.toolkits()[1]).specs if s.reads_request}
    rows = []
    for spec in args.policy:
        name, backend = named_backend(spec)
        store = p.root / "train" / "agreement" / f"{name}-{json_digest(weights_fingerprint(backend))}.jsonl"
        records = run_policy(p, held, backend, store, desc=f"{name} on held-out fit-half query episodes")
        for family in [*sorted({e["family"] for e in held}), "all"]:
            eps = [e for e in held if family in ("all", e["family"])]
            hits = [
                follows_label(
                    [json.loads(a) for a in records[episode_key(e)]["actions"]],
                    table_label(table, e["family"], e["query_kind"]),
                    request_tools,
                )
                for e in eps
            ]
            rows.append(
                {
                    "policy": name,
                    "family": family,
                    "episodes": len(eps),
                    "request tools as labelled": sum(h[0] for h in hits),
                    "and weights": sum(h[1] for h in hits),
                }
            )
    print(
        format_table(
            rows, f"Following the labels on {len(held)} held-out episodes of the fit half (label table of its support part)"
        )
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"agreement": rows}, indent=1))
