"""Pydantic configuration models, one per concern, loaded from YAML by the CLI.

Every model is frozen and forbids unknown keys, so a typo in a YAML file is an error
that names the key rather than a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The shared data set sits beside a checkout of this repository; commands run from its root.
DEFAULT_DATA_PATH = Path("../shared/datasets/movielens-posters")


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Config):
    """Where the data set lives and how explicit ratings become implicit feedback."""

    path: Path = Field(
        default=DEFAULT_DATA_PATH,
        description="A data set folder: the MovieLens-posters folder or one in the generic format (see docs/dataset-format.md).",
    )
    positive_threshold: float = Field(
        default=4.0, description="Ratings at or above this are positives; the rest are dropped (implicit feedback)."
    )
    split_ratios: tuple[float, float, float] = Field(
        default=(0.8, 0.1, 0.1),
        description="Chronological per-user train/validation/test fractions of each user's positives.",
    )
    min_positives: int = Field(
        default=3,
        ge=1,
        description="Users with fewer positives keep them all in train and get no evaluation target (counted, not dropped silently).",
    )

    @field_validator("split_ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            msg = f"split_ratios must be three non-negative fractions summing to 1, got {v}; e.g. (0.8, 0.1, 0.1)"
            raise ValueError(msg)
        return v


class PoolConfig(_Config):
    """Candidate pools (protocol v2): each user's top-`size` from a first-stage retriever that sees
    only the task family's surviving modalities, queried with the user's history."""

    size: int = Field(
        default=100, ge=2, description="Candidates per pool (the first stage's top-size; Recall@size is the ceiling)."
    )
    history_window: int = Field(default=50, ge=1, description="History items (most recent) whose text makes the BM25 query.")
    rrf_k: float = Field(
        default=60.0, gt=0, description="Reciprocal-rank fusion constant when a family fuses several retrievers."
    )
    first_stage: dict[str, str] = Field(
        default_factory=dict,
        description="Per family, the first stage to use instead of the validation choice: a source or '+'-joined sources "
        "from text, image, behaviour (several are fused by RRF), e.g. {full: behaviour}.",
    )

    @field_validator("first_stage")
    @classmethod
    def _first_stage_allowed(cls, v: dict[str, str]) -> dict[str, str]:
        from mma_agent.modalities import family_mask

        for family, combo in v.items():
            mask = family_mask(family)
            for src in combo.split("+"):
                if src not in ("text", "image", "behaviour"):
                    msg = f"pools.first_stage.{family}: unknown source {src!r}; use text, image, behaviour or a '+'-joined list"
                    raise ValueError(msg)
                if not mask.available(src):
                    msg = f"pools.first_stage.{family}: {src} is masked in family {family!r}; its first stage may only use {mask}"
                    raise ValueError(msg)
        return v


class RetrieverConfig(_Config):
    """Hyper-parameters of the trained first-stage retrievers (torch, CPU)."""

    dim: int = Field(default=64, ge=1, description="Embedding size of BPR-MF and LightGCN.")
    layers: int = Field(default=3, ge=1, description="LightGCN propagation layers (the paper's default is 3).")
    epochs: int = Field(default=300, ge=1, description="Training epochs; one epoch samples one triple per train positive.")
    batch_size: int = Field(default=2048, ge=1)
    lr: float = Field(
        default=1e-2, gt=0, description="Adam step; 1e-2 converges in ~150 epochs on ml-latest-small, 1e-3 had not after 300."
    )
    weight_decay: float = Field(default=1e-4, ge=0, description="L2 on the batch's ego embeddings, as in LightGCN.")
    eval_every: int = Field(default=10, ge=1, description="Validate every N epochs and keep the best (early stopping).")
    patience: int = Field(default=5, ge=1, description="Stop after this many validations without improvement.")
    knn_neighbours: int = Field(default=100, ge=1, description="ItemKNN: neighbours kept per item.")
    knn_shrink: float = Field(default=10.0, ge=0, description="ItemKNN: cosine shrinkage for rarely co-rated pairs.")
    seed: int = 0


class ClipTrainConfig(_Config):
    """Head training of the poster CLIP (mma_agent.training.clip)."""

    embed_dim: int = Field(default=256, ge=8, description="Shared embedding size.")
    image_size: int = Field(default=224, ge=32, description="Poster side after open_clip's resize + centre crop.")
    context_length: int = Field(default=128, ge=8, description="Text tokens kept (MiniLM allows 256).")
    epochs: int = Field(default=60, ge=1)
    batch_size: int = Field(default=512, ge=8, description="CLIP loss batch: more in-batch negatives per step.")
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    val_fraction: float = Field(default=0.05, gt=0, lt=0.5, description="Training items held out for early stopping.")
    heldout_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Items never used to train the heads (`mma bench image` measures on them), chosen by a hash of the item id "
        "alone: choosing them by any user's interactions would let the image space carry which items are held out.",
    )
    patience: int = Field(default=8, ge=1, description="Epochs without val Recall@10 gain before stopping.")
    seed: int = 0


class ImageFeatureConfig(_Config):
    """The image embedding behind image-only pools and the image toolkit."""

    kind: Literal["clip", "thumbnail"] = Field(
        default="clip",
        description="`clip`: the poster CLIP (trained on first use, see `clip`); `thumbnail`: a 12x16 RGB thumbnail, a cheap pixel floor.",
    )
    width: int = Field(default=12, description="Thumbnail width (kind: thumbnail).")
    height: int = Field(default=16, description="Thumbnail height (kind: thumbnail).")
    clip: ClipTrainConfig = ClipTrainConfig()


class RelevanceConfig(_Config):
    """The learned relevance channel of each evidence toolkit (`mma relevance`, see mma_agent/models/relevance.py)."""

    dim: int = Field(default=64, ge=1, description="Text and image: the projection size of the user and item towers.")
    epochs: int = Field(default=40, ge=1, description="Text and image: most BPR epochs (one triple per train positive each).")
    patience: int = Field(default=4, ge=1, description="Text and image: stop after this many epochs without a validation gain.")
    batch_size: int = Field(default=1024, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    tau: float = Field(default=0.1, gt=0, description="BPR temperature on the cosine scores.")
    keep: tuple[float, float] = Field(
        default=(0.3, 1.0),
        description="Item-level modality dropout: each training history keeps a fraction of its items drawn uniformly from this range.",
    )
    ease_lambdas: tuple[float, ...] = Field(
        default=(50.0, 200.0, 500.0, 1000.0, 3000.0), min_length=1, description="Behaviour: EASE's L2 grid."
    )
    ease_topk: int = Field(
        default=200, ge=1, description="Behaviour: EASE weights kept per item (the sparsified item-item matrix)."
    )
    seed: int = 0

    @field_validator("keep")
    @classmethod
    def _keep_is_a_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            msg = f"keep must be a range within (0, 1], low <= high, got {v}"
            raise ValueError(msg)
        return v


class PipelineConfig(_Config):
    """The whole data -> retrieval -> pools pipeline (`mma pipeline`)."""

    data: DataConfig = DataConfig()
    pools: PoolConfig = PoolConfig()
    retrievers: RetrieverConfig = RetrieverConfig()
    image: ImageFeatureConfig = ImageFeatureConfig()
    relevance: RelevanceConfig = RelevanceConfig()
    workdir: Path = Field(default=Path(".mma"), description="Where caches, trained retrievers and pools are written.")


def load_config(path: Path | str | None) -> PipelineConfig:
    """Load a YAML pipeline config; `None` gives the defaults."""
    if path is None:
        return PipelineConfig()
    import yaml

    p = Path(path)
    if not p.is_file():
        msg = f"config file {p} does not exist; pass an existing YAML file or omit --config for the defaults"
        raise FileNotFoundError(msg)
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        msg = f"config file {p} must hold a YAML mapping at the top level, got {type(raw).__name__}"
        raise ValueError(msg)
    return PipelineConfig.model_validate(raw)
