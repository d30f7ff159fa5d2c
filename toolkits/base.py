"""The toolkit contract: what a tool sees of a request, what it returns, and how it becomes a
LangChain tool.

A tool call returns an :class:`Evidence`: a short observation for the LLM and per-candidate
evidence channels aligned with the pool. A masked modality returns an explicit Null observation
and no channels, and still counts as a call. No exception escapes a tool: errors become a Null
observation that names the problem, and are counted in :attr:`Toolkit.errors`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from mma_agent.masks import Mask, Modality, ModalityView
from mma_agent.splits import Split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalogue:
    """Run-scoped data every toolkit reads: the split and features derived from it, each tagged
    with its modality so that `view(mask)` hides it when the modality is masked."""

    split: Split
    features: dict[str, tuple[Modality, Any]] = field(default_factory=dict)

    def with_features(self, **features: tuple[Modality, Any]) -> Catalogue:
        return Catalogue(self.split, {**self.features, **features})

    def view(self, mask: Mask) -> ModalityView:
        return ModalityView(self.split, mask, features=self.features)

    def resolve(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Catalogue indices of known ids, and the unknown ids (reported, never dropped silently)."""
        index = self.split.item_index
        known = [index[i] for i in item_ids if i in index]
        return np.array(known, dtype=np.int64), [i for i in item_ids if i not in index]


@dataclass(frozen=True)
class EpisodeContext:
    """What the tools of one request may see. `view` enforces the request's (hidden) mask."""

    view: ModalityView
    history: np.ndarray  # (h,) catalogue indices, oldest first
    candidates: np.ndarray  # (n,) catalogue indices: the pool, in request order
    user: int | None = None  # catalogue user index, None for a user the catalogue does not know
    target: int | None = None  # evaluation only: the held-out item the simulated user answers about

    def item_id(self, i: int) -> str:
        return str(self.view.item_ids[i])

    def resolve_in_pool(self, item_ids: list[str]) -> tuple[list[int], list[str]]:
        """Catalogue indices of the given ids that are in the pool, and the ids that are not."""
        pos = {self.item_id(int(i)): int(i) for i in self.candidates}
        return [pos[i] for i in item_ids if i in pos], [i for i in item_ids if i not in pos]

    def label(self, i: int) -> str:
        """An item as the LLM sees it: its id, and its title when text is visible."""
        title = self.view.item_field(int(i), "title")
        return f"{self.item_id(i)} ({title})" if title else self.item_id(i)


@dataclass(frozen=True)
class Evidence:
    tool: str
    observation: str
    channels: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_candidates,)
    null: bool = False

    @classmethod
    def none(cls, tool: str, why: str) -> Evidence:
        return cls(tool, f"Null: {why}", {}, True)


class Toolkit:
    """One modality's tools. Subclasses define `TOOLS` {name: (args model, description)} and a
    method per tool name taking (ctx, **args) -> Evidence."""

    name: ClassVar[str]
    modality: ClassVar[Modality | None]
    TOOLS: ClassVar[dict[str, tuple[type[BaseModel], str]]]

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()

    def prepare(self, catalogue: Catalogue, cache_dir: Path) -> Catalogue:
        """Build the run-scoped features this toolkit needs (cached); return the extended catalogue."""
        return catalogue

    def call(self, tool: str, ctx: EpisodeContext, **args: Any) -> Evidence:
        """Run one tool; never raises."""
        if self.modality is not None and not ctx.view.mask.available(self.modality):
            return Evidence.none(tool, f"the {self.modality.value} modality is unavailable for this request")
        try:
            ev = getattr(self, tool)(ctx, **args)
        except Exception as err:  # a tool failure is evidence of nothing, not a crash of the app
            self.errors[type(err).__name__] += 1
            log.warning("tool %s failed: %s: %s", tool, type(err).__name__, err)
            return Evidence.none(tool, f"the tool failed ({type(err).__name__}: {err})")
        for name, v in ev.channels.items():
            if v.shape != ctx.candidates.shape:
                self.errors["misaligned"] += 1
                return Evidence.none(tool, f"internal error: channel {name} has shape {v.shape}, pool has {ctx.candidates.shape}")
        return ev

    def tools(self, ctx: EpisodeContext) -> list:
        """LangChain tools bound to one request; each returns (observation, Evidence) as
        content_and_artifact, so a ToolMessage carries the evidence beside the text."""
        from langchain_core.tools import StructuredTool

        out = []
        for tool, (schema, description) in self.TOOLS.items():

            def run(_tool: str = tool, **kwargs: Any) -> tuple[str, Evidence]:
                ev = self.call(_tool, ctx, **kwargs)
                return ev.observation, ev

            out.append(
                StructuredTool.from_function(
                    func=run, name=tool, description=description, args_schema=schema, response_format="content_and_artifact"
                )
            )
        return out


def top_candidates(ctx: EpisodeContext, score: np.ndarray, k: int = 5) -> str:
    order = np.argsort(-score, kind="stable")[:k]
    return "; ".join(f"{ctx.label(int(ctx.candidates[j]))} {score[j]:.2f}" for j in order)


def cosine_to_history(emb: np.ndarray, ctx: EpisodeContext, max_history: int = 100) -> tuple[dict[str, np.ndarray], int, int]:
    """max and mean cosine of each candidate to the history (rows of `emb` unit-norm; NaN = missing).
    Returns the channels, how many history items and candidates had no embedding."""
    hist = ctx.history[-max_history:]
    h = emb[hist]
    h = h[~np.isnan(h).any(axis=1)]
    c = emb[ctx.candidates]
    missing_c = np.isnan(c).any(axis=1)
    if len(h) == 0:
        return {}, len(hist), int(missing_c.sum())
    sims = np.nan_to_num(c) @ h.T  # (n_candidates, n_history)
    mx, mean = sims.max(axis=1), sims.mean(axis=1)
    mx[missing_c], mean[missing_c] = 0.0, 0.0  # no embedding: no evidence for or against
    return {"max": mx, "mean": mean}, len(hist) - len(h), int(missing_c.sum())


class EmbeddingCache:
    """Arrays keyed by data content and encoder identity, written atomically (temp file + rename)
    under a file lock, so processes can share one cache folder. A key that does not match the
    metadata written beside the array means a stale cache: it is rebuilt, never used."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def content_hash(values: Sequence[str]) -> str:
        h = hashlib.sha256()
        for v in values:
            h.update(v.encode())
            h.update(b"\x00")
        return h.hexdigest()[:16]

    def get_or_build(self, name: str, key: dict[str, str], build: Callable[[], np.ndarray]) -> np.ndarray:
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path, meta = self.root / f"{name}-{digest}.npy", self.root / f"{name}-{digest}.json"
        with FileLock(str(path) + ".lock"):
            if path.is_file() and meta.is_file():
                stored = json.loads(meta.read_text())
                if stored.get("key") == key:
                    arr = np.load(path)
                    if list(arr.shape) == stored.get("shape"):
                        return arr
                log.warning("cache %s is stale or damaged; rebuilding", path)
            arr = np.asarray(build())
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, arr)
            tmp.replace(path)
            meta.write_text(json.dumps({"key": key, "shape": list(arr.shape)}))
        return arr
