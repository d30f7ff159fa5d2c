"""mma-agent: a multimodal recommendation reranker that keeps working when modalities are missing.

The public API is the names in `__all__`; they load lazily, so ``import mma_agent`` stays light
(no torch, no pandas) until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": "mma_agent.config",
    "PipelineConfig": "mma_agent.config",
    "PoolConfig": "mma_agent.config",
    "load_dataset": "mma_agent.dataset",
    "split_dataset": "mma_agent.splits",
    "Mask": "mma_agent.masks",
    "TASK_FAMILIES": "mma_agent.masks",
    "ModalityView": "mma_agent.masks",
    "PoolSet": "mma_agent.pools",
    "create_retriever": "mma_agent.retrievers",
    "Pipeline": "mma_agent.pipeline",
    "ndcg_at_k": "mma_agent.metrics",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from mma_agent.config import DataConfig, PipelineConfig, PoolConfig
    from mma_agent.dataset import load_dataset
    from mma_agent.masks import TASK_FAMILIES, Mask, ModalityView
    from mma_agent.metrics import ndcg_at_k
    from mma_agent.pipeline import Pipeline
    from mma_agent.pools import PoolSet
    from mma_agent.retrievers import create_retriever
    from mma_agent.splits import split_dataset


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    msg = f"module 'mma_agent' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
