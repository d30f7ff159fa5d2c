"""`mma bench tools`: latency per tool call on real 100-item pools, cache build time, memory, and
how closely truncated personalised PageRank tracks networkx's exact one."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from mma_agent.toolkits.workspace import Workspace


def _ms(xs: list[float]) -> dict[str, str]:
    a = np.array(xs) * 1000
    return {
        "calls": str(len(a)),
        "p50 ms": f"{np.percentile(a, 50):.2f}",
        "p95 ms": f"{np.percentile(a, 95):.2f}",
        "max ms": f"{a.max():.2f}",
    }


def bench_tools(
    pipeline: Workspace, image_folder: Path | None, *, episodes: int = 100, cold_text: bool = True
) -> dict[str, list[dict]]:
    from scipy.stats import spearmanr

    from mma_agent.modalities import family_mask
    from mma_agent.toolkits import tool_vocabulary, with_relevance
    from mma_agent.toolkits.base import Catalogue, EpisodeContext
    from mma_agent.toolkits.clarify import ClarifyToolkit
    from mma_agent.toolkits.graph import GraphToolkit, exact_ppr, truncated_ppr
    from mma_agent.toolkits.image import ImageToolkit
    from mma_agent.toolkits.text import TextToolkit

    cache = pipeline.root / "cache"
    build_rows = []
    catalogue = Catalogue(pipeline.split)
    kits = {"text": TextToolkit(), "graph": GraphToolkit()}
    if image_folder is not None:
        kits["image"] = ImageToolkit(f"local-dir:{image_folder}")
    for name, kit in kits.items():
        target = cache
        note = "warm cache"
        if name == "text" and cold_text:
            target, note = Path(tempfile.mkdtemp(prefix="mma-bench-")), "cold: embeds every item text"
        if name == "graph":
            note = "built in memory each run (networkx)"
        if name == "image":
            note = "poster trunk features cached; head + tag prompts computed"
        start = time.perf_counter()
        catalogue = kit.prepare(catalogue, target)
        build_rows.append({"toolkit": name, "prepare s": f"{time.perf_counter() - start:.1f}", "what": note})
    start = time.perf_counter()
    learned = {m: pipeline.relevance(m)[0] for m in ("text", "behaviour", *(("image",) if image_folder is not None else ()))}
    catalogue = with_relevance(catalogue, learned)
    build_rows.append(
        {
            "toolkit": "learned channels",
            "prepare s": f"{time.perf_counter() - start:.1f}",
            "what": "loaded (`mma relevance` trains them)",
        }
    )
    kits["clarify"] = ClarifyToolkit(kits["text"], kits.get("image"))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = []
    for fname, (_, value) in catalogue.features.items():
        if hasattr(value, "arrays"):  # a learned relevance model
            nbytes = sum(a.nbytes for a in value.arrays().values())
        else:
            nbytes = value.nbytes if hasattr(value, "nbytes") else value.transition.data.nbytes * 3 + value.co.data.nbytes * 3
        sizes.append(f"{fname} {nbytes / 2**20:.1f} MB")
    build_rows.append({"toolkit": "all", "prepare s": "", "what": f"peak RSS {rss_mb:.0f} MB; features: " + ", ".join(sizes)})

    pools = pipeline.pools("full", "test")
    view = catalogue.view(family_mask("full"))
    tools = tool_vocabulary(kits)
    times: dict[str, list[float]] = {s.name: [] for s in tools.specs}
    nulls = dict.fromkeys(times, 0)
    agree_rho, agree_top10, exact_t = [], [], []
    graph = catalogue.features["graph"][1]
    for p in range(min(episodes, len(pools))):
        u = int(pools.users[p])
        ctx = EpisodeContext(
            view, view.history(u, include_valid=True), pools.candidates[p], u, pools.target(p), first_stage=pools.scores[p]
        )
        for spec, kit in zip(tools.specs, tools.owners, strict=True):
            if kit not in kits:
                continue
            start = time.perf_counter()
            ev = kits[kit].call(spec.name, ctx, **spec.arg_templates[0])  # ask_user: a question about text
            times[spec.name].append(time.perf_counter() - start)
            nulls[spec.name] += ev.null
        if p < 20 and len(ctx.history):
            a = truncated_ppr(graph, ctx.history[-100:])[ctx.candidates]
            start = time.perf_counter()
            b = exact_ppr(graph, ctx.history[-100:])[ctx.candidates]
            exact_t.append(time.perf_counter() - start)
            agree_rho.append(spearmanr(a, b).statistic)
            agree_top10.append(len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) / 10)
    lat = [{"tool": t, **_ms(v), "Null": str(nulls[t])} for t, v in times.items() if v]
    ppr = [
        {
            "pools": str(len(agree_rho)),
            "Spearman over the pool (mean)": f"{np.nanmean(agree_rho):.3f}",
            "top-10 overlap (mean)": f"{np.mean(agree_top10):.2f}",
            "exact nx.pagerank ms/call": f"{1000 * np.mean(exact_t):.0f}",
        }
    ]
    return {
        "Cache build (whole catalogue)": build_rows,
        "Latency per tool call, 100-item pools, warm caches": lat,
        "Truncated PPR (3 steps) vs exact networkx PageRank": ppr,
    }
