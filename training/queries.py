"""Query episodes from data: a person's request beside a protocol-v2 pool, for training and evaluation.

Two kinds, both built on the saved pools (the pool and its relevant items are protocol v2's: all
of the user's held-out positives in the split; relevance is never defined by the query):

- **Real user words.** A user's own tags on one of their held-out positives (the pipeline keeps
  those tags out of item text) are the query of that user's pool. Few users wrote them: report
  them apart, and never train on them.
- **Facet queries.** One held-out positive of the user (the source, chosen with a seed) gives one
  facet, or two facets of different types, each shared by at least `min_items` catalogue items,
  so the query describes a kind of item, never the target: a genre pair, a keyword or user tag,
  the poster's look (its zero-shot tag), a behaviour anchor ("like Heat": a title co-liked with
  the source that is not one of the user's held-out items), an era ("from the 1990s").

Who learns from which episodes. The test split is only ever evaluated. The validation split's
users fall in two halves by a hash of their id (`validation_half`): a trained policy learns its
labels from the "fit" half (their held-out items are out of sample for every evidence tool, which
the train split's are not: the graph and the learned relevance were fitted on them), and the
alpha of every LLM policy is chosen on the "select" half, so no person's items both teach a
policy and tune its fusion.

A data set without a field gets no facets of that type (and no real-tag episodes without user
tags); `QuerySet.skipped` says what was skipped and why. `leaks` checks that no query holds its
source's title or id.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mma_agent.toolkits.titles import normalise_words, title_forms
from mma_agent.toolkits.workspace import Workspace

FACET_TYPES = ("genres", "keyword", "look", "anchor", "era")
MIN_ITEMS = 30  # a facet must fit at least this many catalogue items
QUERY_FAMILIES = ("full", "cold-user", "no-text", "no-image")  # the task families query episodes are built for
VALIDATION_HALVES = ("fit", "select")


def validation_half(user_id: str) -> str:
    """The half of the validation users a person falls in (see the module's docstring): "fit" or
    "select", by a CRC32 of the user id, the same on every machine and for every family."""
    return VALIDATION_HALVES[zlib.crc32(str(user_id).encode()) % 2]


def validation_draw(episodes: list[dict], half: str, per_family: int | None, *, seed: int = 0) -> dict[str, list[dict]]:
    """Family -> the validation episodes of one half's users, in a seeded order, the first
    `per_family` of them (None: all)."""
    if half not in VALIDATION_HALVES:
        msg = f"half must be one of {VALIDATION_HALVES}, got {half!r}"
        raise ValueError(msg)
    mine = [e for e in episodes if e["split"] == "valid" and validation_half(e["user_id"]) == half]
    out = {}
    for f_idx, family in enumerate(sorted({e["family"] for e in mine})):
        of_family = [e for e in mine if e["family"] == family]
        order = np.random.default_rng([seed, f_idx]).permutation(len(of_family))[:per_family]
        out[family] = [of_family[i] for i in order]
    return out


@dataclass
class QuerySet:
    episodes: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # facet type or "real tags" -> why it was not built


def display_title(title: str) -> str:
    """A title as a person writes it: without its year, the article in front ("Matrix, The (1999)" -> "The Matrix")."""
    base = re.sub(r"\s*\(\d{4}\)\s*$", "", title.strip())
    base = re.sub(r"\s*\([^()]*\)", "", base).strip()
    m = re.match(r"^(.*), (The|A|An)$", base)
    return f"{m.group(2)} {m.group(1)}" if m else base


def _year(title: str) -> int | None:
    m = re.search(r"\((\d{4})\)\s*$", title)
    return int(m.group(1)) if m else None


class FacetIndex:
    """Which catalogue items fit each facet, from the fields the data set has."""

    def __init__(self, pipeline: Workspace, *, min_items: int = MIN_ITEMS) -> None:
        items = pipeline.dataset.items
        split = pipeline.split
        self.min_items, self.skipped = min_items, {}
        self.titles = items["title"].tolist()
        self.genres = [frozenset(g for g in str(x).split("|") if g and g != "(no genres listed)") for x in items["genres"]]
        kw = [set(k.lower() for k in str(x).split("|") if k) for x in items.get("keywords", [""] * len(items))]
        tags = [set(t.lower() for t in str(x).split("|") if t) for x in split.item_tags]
        self.words = [a | b for a, b in zip(kw, tags, strict=True)]
        self.decade = [(y // 10 * 10 if (y := _year(t)) else None) for t in self.titles]
        self.word_count = Counter(w for ws in self.words for w in ws)
        self.pair_count = Counter(p for gs in self.genres for p in _pairs(gs))
        self.decade_count = Counter(d for d in self.decade if d is not None)
        if not any(self.words):
            self.skipped["keyword"] = "the data set has no keywords or user tags"
        self.look, self.look_count = None, Counter()
        catalogue, kits = pipeline.toolkits(clarify=False, learned=False)
        image, emb = kits.get("image"), catalogue.features.get("image", (None, None))[1]
        if image is None or emb is None:
            self.skipped["look"] = "no image model: the data set has no posters, or the toolkits were built without one"
        else:
            self.look = [None if np.isnan(e).any() else image.top_tags(e, 1)[0] for e in emb]
            self.look_count = Counter(t for t in self.look if t)
        graph = catalogue.features.get("graph", (None, None))[1]
        self.co = graph.co if graph is not None else None
        if self.co is None:
            self.skipped["anchor"] = "no co-interaction graph"

    def facets(self, item: int, avoid: set[int]) -> dict[str, tuple[str, int]]:
        """The facets of `item` that fit at least min_items items: type -> (the words, how many fit)."""
        out: dict[str, tuple[str, int]] = {}
        pairs = sorted(
            (p for p in _pairs(self.genres[item]) if self.pair_count[p] >= self.min_items), key=lambda p: self.pair_count[p]
        )
        if pairs:
            a, b = pairs[0]
            out["genres"] = (f"something {a.lower()} and {b.lower()}", self.pair_count[pairs[0]])
        words = sorted(
            (w for w in self.words[item] if self.word_count[w] >= self.min_items), key=lambda w: (self.word_count[w], w)
        )
        if words:
            out["keyword"] = (f"something about {words[0]}", self.word_count[words[0]])
        if self.look is not None and self.look[item] and self.look_count[self.look[item]] >= self.min_items:
            out["look"] = (f"a film whose poster looks {self.look[item]}", self.look_count[self.look[item]])
        if self.co is not None and self.co[item].nnz:
            row = self.co[item]
            for j in row.indices[np.argsort(-row.data, kind="stable")]:
                if int(j) not in avoid and self.co[j].nnz >= self.min_items and _year(self.titles[j]):
                    out["anchor"] = (f"like {display_title(self.titles[j])}", int(self.co[j].nnz))
                    break
        if self.decade[item] is not None and self.decade_count[self.decade[item]] >= self.min_items:
            out["era"] = (f"from the {self.decade[item]}s", self.decade_count[self.decade[item]])
        return out


def _pairs(genres: frozenset[str]) -> list[tuple[str, str]]:
    g = sorted(genres)
    return [(a, b) for i, a in enumerate(g) for b in g[i + 1 :]]


def facet_queries(pipeline: Workspace, episodes: list[dict], *, seed: int = 0, min_items: int = MIN_ITEMS) -> QuerySet:
    """One facet query per evaluation episode (from `evals.runner.build_episodes`), seeded: one facet,
    or two of different types (half the episodes), of one held-out positive of the user."""
    index = FacetIndex(pipeline, min_items=min_items)
    item_index = pipeline.split.item_index
    rng = np.random.default_rng(seed)
    out = QuerySet(skipped=dict(index.skipped))
    for ep in episodes:
        relevant = [item_index[i] for i in ep["relevant"]]
        source = int(relevant[int(rng.integers(len(relevant)))])
        facets = index.facets(source, avoid=set(relevant))
        if not facets:
            continue
        kinds = sorted(facets)
        first = kinds[int(rng.integers(len(kinds)))]
        chosen = [first]
        if len(kinds) > 1 and rng.random() < 0.5:
            rest = [k for k in kinds if k != first]
            chosen.append(rest[int(rng.integers(len(rest)))])
        text = ", but ".join(facets[k][0] for k in chosen)
        out.episodes.append(
            {
                **ep,
                "query": text,
                "query_kind": "+".join(chosen),
                "query_source": str(pipeline.split.item_ids[source]),
                "query_fits": min(facets[k][1] for k in chosen),
                "source_in_pool": str(pipeline.split.item_ids[source]) in set(ep["candidates"]),
            }
        )
    return out


def real_tag_queries(pipeline: Workspace, episodes: list[dict]) -> QuerySet:
    """Each (user, held-out positive) the user tagged: the user's own tags are the query of their pool."""
    tags = pipeline.dataset.tags
    out = QuerySet()
    if tags is None or len(tags) == 0:
        out.skipped["real tags"] = "the data set has no user tags"
        return out
    by = tags.groupby(["user_id", "item_id"])["tag"].apply(lambda t: ", ".join(dict.fromkeys(str(x) for x in t)))
    for ep in episodes:
        for item in ep["relevant"]:
            words = by.get((ep["user_id"], item))
            if words:
                out.episodes.append(
                    {
                        **ep,
                        "query": words,
                        "query_kind": "real tags",
                        "query_source": item,
                        "source_in_pool": item in set(ep["candidates"]),
                    }
                )
    return out


def leaks(pipeline: Workspace, episode: dict) -> list[str]:
    """What a query gives away about its source: its title (any written form) or its id as a word."""
    i = pipeline.split.item_index[episode["query_source"]]
    words = f" {normalise_words(episode['query'])} "
    found = [form for form in title_forms(pipeline.dataset.items["title"].iloc[i]) if f" {form} " in words]
    if f" {normalise_words(episode['query_source'])} " in words:
        found.append(f"id {episode['query_source']}")
    return found
