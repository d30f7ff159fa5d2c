"""A built data set as the layers above the toolkits see it: the `Workspace` protocol.

Training and evaluation need the split, its masked views and candidate pools, the toolkits over
the workdir's caches, and a few trained parts (retrievers, relevance channels, poster features).
They take any object with these members; `mma_agent.Pipeline`, the application's object, is one.
Typed here, below them, so no function under the application reaches up to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from mma_agent.config import PipelineConfig
    from mma_agent.data.masks import ModalityView
    from mma_agent.data.pools import PoolSet, Queries
    from mma_agent.data.schema import Dataset
    from mma_agent.data.splits import Split
    from mma_agent.modalities import Modality
    from mma_agent.models.relevance import Relevance
    from mma_agent.models.retrievers import Retriever
    from mma_agent.toolkits.base import Catalogue, Toolkit


class Workspace(Protocol):
    """The data set, its split and what was built from them under one workdir."""

    config: PipelineConfig

    @property
    def dataset(self) -> Dataset: ...

    @property
    def split(self) -> Split: ...

    @property
    def root(self) -> Path:
        """The workdir folder of this data set and split (caches, pools, runs)."""
        ...

    @property
    def thumbnails(self) -> np.ndarray: ...

    def view(self, family: str = "full") -> ModalityView: ...

    def pools(self, family: str, target_split: str, *, rebuild: bool = False) -> PoolSet: ...

    def train_pools(self, family: str, queries: Queries) -> PoolSet: ...

    def toolkits(
        self, *, image: bool = True, clarify: bool = True, learned: bool = True
    ) -> tuple[Catalogue, dict[str, Toolkit]]: ...

    def retriever(self, name: str, *, retrain: bool = False) -> tuple[Retriever, float | None]: ...

    def relevance(self, modality: Modality | str, *, retrain: bool = False) -> tuple[Relevance, dict | None]: ...

    def train_dir(self, stage: str, *, interactive: bool = False) -> Path:
        """A training stage's run folder under `root` (`sft`, `lookup`, ...)."""
        ...
