"""Image evidence through any open_clip model (ours: `local-dir:` poster CLIP; or LAION/OpenAI).

Every poster is embedded once into the cache. For a request, each candidate's poster similarity
to the history's posters (max and mean) is the evidence; the LLM gets a "describe what you see"
view: the top-5 zero-shot tags of the history and of the best-matching candidates, from a
configurable tag vocabulary (default: genres, moods and visual styles of movies).
"""

from __future__ import annotations

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
)
from mma_agent.toolkits.evidence import (
    EmbeddingCache,
    cosine_to_history,
    group_score,
    learned_channel,
    request_match,
    strength,
)
from mma_agent.util import digest, joined_digest, l2_normalize

MOVIE_TAGS: tuple[str, ...] = (
    # genres
    "action",
    "adventure",
    "animated",
    "children's",
    "comedy",
    "crime",
    "documentary",
    "drama",
    "fantasy",
    "film noir",
    "horror",
    "musical",
    "mystery",
    "romance",
    "science fiction",
    "thriller",
    "war",
    "western",
    # moods
    "dark",
    "romantic",
    "funny",
    "scary",
    "suspenseful",
    "uplifting",
    "violent",
    "nostalgic",
    "whimsical",
    "epic",
    "sad",
    "family-friendly",
    # visual styles
    "black and white",
    "vintage",
    "minimalist",
    "illustrated",
    "cartoon",
    "photographic",
    "colorful",
    "neon",
    "space",
    "superhero",
)
PROMPT = "a poster of a {} movie"


class AnalyzeImageArgs(BaseModel):
    item_ids: list[str] = Field(
        default_factory=list, max_length=5, description="Optional: up to 5 candidate ids whose poster tags to show."
    )


class ImageToolkit(Toolkit):
    name = "image"
    modality = Modality.IMAGE
    TOOLS: ClassVar = (
        ToolSpec(
            name="analyze_image",
            args=AnalyzeImageArgs,
            description="Image evidence: how similar each candidate's poster is to the posters in the user's history, and zero-shot "
            "tags describing what the posters show. Null if images are unavailable.",
            prompt="analyze_image {\"item_ids\": [...optional]}: image evidence, how candidates' posters look like the history's.",
            group="image",
            channels=(LEARNED, "max", "mean"),  # the learned one is absent when no model was prepared
        ),
        ToolSpec(
            name="match_poster",
            args=RequestWordsArgs,
            description="Request evidence: how well each candidate's poster matches words of the person's request (the poster "
            "CLIP's text tower). Null without request words or when images are unavailable.",
            prompt='match_poster {"words": "..."}: request evidence, how candidates\' posters match words of the request.',
            brief='match_poster {"words": ...}: request words against posters',
            group="image_request",
            channels=("sim",),
            reads_request="words",
        ),
    )

    def __init__(
        self, model_name: str, pretrained: str | None = None, *, tags: tuple[str, ...] = MOVIE_TAGS, prompt: str = PROMPT
    ) -> None:
        super().__init__()
        if not tags:
            msg = "tags must name at least one zero-shot tag; pass e.g. mma_agent.toolkits.image.MOVIE_TAGS"
            raise ValueError(msg)
        self.model_name, self.pretrained, self.tags, self.prompt = model_name, pretrained, tuple(tags), prompt
        self.tag_emb: np.ndarray | None = None  # (n_tags, d)
        self._local_identity: str | None = None

    def identity(self) -> str:
        """The encoder's cache key: a hub name as given; a local folder by the content of its
        weights and config, not its path or mtime (a workdir moved or copied keeps its caches)."""
        if not self.model_name.startswith("local-dir:"):
            return f"open_clip:{self.model_name}:{self.pretrained}"
        if self._local_identity is None:
            folder = Path(self.model_name.removeprefix("local-dir:"))
            files = [folder / n for n in ("open_clip_config.json", "open_clip_pytorch_model.bin")]
            self._local_identity = (
                f"open_clip:local-dir:{digest(f.read_bytes() if f.is_file() else b'-' for f in files)}:{self.pretrained}"
            )
        return self._local_identity

    def prepare(self, catalogue: Catalogue, cache_dir: Path) -> Catalogue:
        import torch

        from mma_agent.models.image_features import embed_posters, poster_fingerprint
        from mma_agent.models.poster_clip import load_clip

        model, preprocess, tokenizer = load_clip(self.model_name, self.pretrained)
        ds = catalogue.split.dataset
        visual = model.visual
        if hasattr(visual, "trunk") and hasattr(visual, "head"):
            # open_clip timm towers: a frozen trunk's features are cached once, the head is cheap.
            from mma_agent.models.image_features import trunk_features

            trunk = trunk_features(ds, model, preprocess, cache_dir)
            with torch.no_grad():
                emb = np.full((len(trunk), model.visual.head(torch.zeros(1, trunk.shape[1])).shape[1]), np.nan, np.float32)
                ok = ~np.isnan(trunk).any(axis=1)
                emb[ok] = model.visual.head(torch.from_numpy(trunk[ok])).numpy()
        else:
            key = {"posters": joined_digest(poster_fingerprint(ds), terminated=True), "encoder": self.identity()}
            emb = EmbeddingCache(cache_dir).get_or_build(
                "image-openclip",
                key,
                lambda: embed_posters(
                    ds, model.encode_image, preprocess, cache_dir, name="image", encoder_identity=self.identity()
                ),
            )
        with torch.no_grad():
            self.tag_emb = l2_normalize(model.encode_text(tokenizer([self.prompt.format(t) for t in self.tags])).float().numpy())
        self._tokenizer, self._model = tokenizer, model
        return catalogue.with_features(image=(Modality.IMAGE, l2_normalize(emb)))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """CLIP text embeddings (unit norm), e.g. for a user's answer matched against posters."""
        import torch

        with torch.no_grad():
            return l2_normalize(self._model.encode_text(self._tokenizer(texts)).float().numpy())

    def words_similarity(self, ctx: EpisodeContext, words: str) -> np.ndarray | None:
        """Each candidate's poster against `words` (CLIP cosine); None when images are not visible."""
        img = ctx.view.feature("image")
        if img is None:
            return None
        return np.nan_to_num(img[ctx.candidates]) @ self.encode_text([words])[0]

    def match_poster(self, ctx: EpisodeContext, words: str | None = None) -> Evidence:
        return request_match(ctx, self.spec("match_poster"), words, self.words_similarity, what="poster", feature="image")

    def top_tags(self, vec: np.ndarray, k: int = 5) -> list[str]:
        s = self.tag_emb @ vec
        return [self.tags[j] for j in np.argsort(-s, kind="stable")[:k]]

    def analyze_image(self, ctx: EpisodeContext, item_ids: list[str] | None = None) -> Evidence:
        spec = self.spec("analyze_image")
        emb = ctx.view.feature("image")
        if emb is None or self.tag_emb is None:
            return Evidence.none(spec.name, "no image embeddings were prepared for this catalogue")
        if len(ctx.history) == 0:
            return Evidence.none(spec.name, "the user has no history to compare posters with")
        parts, _, missing_c = cosine_to_history(emb, ctx)
        if not parts:
            return Evidence.none(spec.name, "none of the user's history items has a poster")
        learned = learned_channel(ctx, self.modality)
        channels = {spec.channel(k): v for k, v in ({LEARNED: learned, **parts} if learned is not None else parts).items()}
        h = emb[ctx.history[-100:]]
        centroid = l2_normalize(np.nanmean(h, axis=0))
        score = group_score(channels.values())
        best = np.argsort(-score, kind="stable")[:4]
        found = strength(ctx, score, int((~np.isnan(emb[ctx.history]).any(axis=1)).sum()))
        lines = [
            "History posters look: " + ", ".join(self.top_tags(centroid)) + ".",
            "Best poster matches: "
            + "; ".join(
                f"{ctx.label(int(ctx.candidates[j]))} {score[j]:.2f} [{', '.join(self.top_tags(emb[ctx.candidates[j]], 3))}]"
                for j in best
                if not np.isnan(emb[ctx.candidates[j]]).any()
            )
            + ".",
            found.line,
        ]
        if missing_c:
            lines.append(f"{missing_c} candidate(s) have no poster.")
        if item_ids:
            idx, unknown = ctx.resolve_in_pool(item_ids)
            for i in idx:
                tags = "no poster" if np.isnan(emb[i]).any() else ", ".join(self.top_tags(emb[i]))
                lines.append(f"{ctx.label(i)}: {tags}.")
            if unknown:
                self.errors["unknown_item"] += len(unknown)
                lines.append("Not in the pool: " + ", ".join(unknown) + ".")
        # details asked for: the policy reads them whole
        return Evidence(spec.name, " ".join(lines), channels, summary="" if item_ids else found.brief)
