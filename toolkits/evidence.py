"""Helpers the toolkits share to turn features into evidence: similarity to the history, the learned
channel, a group's score, the strength line a compact policy routes on, the best candidates, and the
on-disk embedding cache.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mma_agent.modalities import Modality
from mma_agent.toolkits.base import STRENGTH_WORDS, EpisodeContext, Evidence, ToolSpec, request_words
from mma_agent.util import atomic_save_npy, atomic_write_text, json_digest

log = logging.getLogger(__name__)


def learned_channel(ctx: EpisodeContext, modality: Modality) -> np.ndarray | None:
    """The modality's learned relevance over the pool (see mma_agent/models/relevance.py); None when no
    model was prepared, the modality is masked, or the history gives it nothing to go on."""
    from mma_agent.models.relevance import relevance_feature

    model = ctx.view.feature(relevance_feature(modality))
    return None if model is None else model.score(ctx.history, ctx.candidates)


def group_score(channels: Iterable[np.ndarray]) -> np.ndarray:
    """An evidence group's score over the pool: the mean of its min-max scaled channels."""
    from mma_agent.util import minmax

    return np.mean([minmax(v) for v in channels], axis=0)


@dataclass(frozen=True)
class Strength:
    """How much an evidence group says, for a policy to route on: its word (weak / moderate /
    strong, from `z`), how many history items the modality covers (None where coverage means
    nothing), how far the top `k` of the group's score stand out from the pool (`z`), and how many
    of them the first stage also ranks in its top k (None without a first stage).

    `line` is the whole line, the end of a full observation; `brief` is all a
    compact prompt shows: the word and the coverage. That is what the trained policy's labels
    depend on (`training.decisions.signature`: each tool, its Null, its word), in 13 tokens where
    the whole line takes 38, and each token a call has not cached costs about 0.9 ms of a policy
    call on two cores in float32 (`evals/results/bench-rerank.md`)."""

    word: str
    covered: int | None
    history: int
    k: int
    z: float
    agree: int | None

    @property
    def line(self) -> str:
        covers = "" if self.covered is None else f"covers {self.covered}/{self.history} history; "
        agree = "" if self.agree is None else f"; {self.agree}/{self.k} in first stage's top {self.k}"
        return f"Strength: {self.word} ({covers}top {self.k} z={self.z:.1f}{agree})."

    @property
    def brief(self) -> str:
        return f"Strength: {self.word}" + ("" if self.covered is None else f"; covers {self.covered}/{self.history}") + "."


def strength(ctx: EpisodeContext, score: np.ndarray, covered: int | None, k: int = 10) -> Strength:
    """The evidence's `Strength` over the pool: `covered` history items (None: left out), its top
    k's z, their agreement with the first stage. Read from the pool and the history only (never
    the target)."""
    k = min(k, len(score))
    top = np.argsort(-score, kind="stable")[:k]
    sd = float(score.std())
    z = 0.0 if sd == 0 else float((score[top].mean() - score.mean()) / sd)
    word = "strong" if z >= STRENGTH_WORDS[1] else "moderate" if z >= STRENGTH_WORDS[0] else "weak"
    agree = None
    if ctx.first_stage is not None and len(ctx.first_stage) == len(score):
        agree = len(set(top.tolist()) & set(np.argsort(-ctx.first_stage, kind="stable")[:k].tolist()))
    return Strength(word, covered, len(ctx.history), k, z, agree)


def strength_word(text: str) -> str | None:
    """The word of the strength line (`strength`) inside an observation, if it has one."""
    import re

    m = re.search(r"Strength: (weak|moderate|strong)\b", text)
    return m.group(1) if m else None


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

    def get_or_build(self, name: str, key: dict[str, str], build: Callable[[], np.ndarray]) -> np.ndarray:
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        tag = json_digest(key)
        path, meta = self.root / f"{name}-{tag}.npy", self.root / f"{name}-{tag}.json"
        with FileLock(str(path) + ".lock"):
            if path.is_file() and meta.is_file():
                stored = json.loads(meta.read_text())
                if stored.get("key") == key:
                    arr = np.load(path)
                    if list(arr.shape) == stored.get("shape"):
                        return arr
                log.warning("cache %s is stale or damaged; rebuilding", path)
            arr = np.asarray(build())
            atomic_save_npy(path, arr)
            atomic_write_text(meta, json.dumps({"key": key, "shape": list(arr.shape)}))
        return arr


def request_match(ctx: EpisodeContext, spec: ToolSpec, words: str | None, similarity, *, what: str, feature: str) -> Evidence:
    """The evidence of a tool that matches the request's words against one modality's items:
    `similarity(ctx, words)` gives the pool's scores, or None when the `feature` (text, image) is not
    visible; `what` names the items in the observation (text, poster)."""
    words = request_words(ctx, words)
    if words is None:
        return Evidence.none(spec.name, "the request has no words to match")
    sim = similarity(ctx, words)
    if sim is None:
        return Evidence.none(spec.name, f"no {feature} embeddings were prepared for this catalogue")
    found = strength(ctx, sim, None)
    # the words are not echoed: the policy's own action holds them, and the scoring view withholds them
    observation = f"Request words: best {what} matches: {top_candidates(ctx, sim)}. {found.line}"
    return Evidence(spec.name, observation, {spec.channel("sim"): sim}, summary=found.brief)
