"""mma-agent: a multimodal recommendation reranker that keeps working when modalities are missing.

The public API is the names in `__all__`; they load lazily, so ``import mma_agent`` stays light
(no torch, no pandas) until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # embed the reranker in an app
    "create_mma_reranker": "mma_agent.graphs.reranker",
    "create_rerank_tool": "mma_agent.graphs.embedding",
    "prepare_toolkits": "mma_agent.toolkits",
    "RerankInput": "mma_agent.graphs.state",
    "RerankOutput": "mma_agent.graphs.state",
    # extend it with a toolkit of your own
    "Toolkit": "mma_agent.toolkits.base",
    "ToolSpec": "mma_agent.toolkits.base",
    # data, and the pipeline that builds caches, retrievers and pools from it
    "load_dataset": "mma_agent.data.dataset",
    "split_dataset": "mma_agent.data.splits",
    "Pipeline": "mma_agent.pipeline",
    "PipelineConfig": "mma_agent.config",
    "TASK_FAMILIES": "mma_agent.modalities",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from mma_agent.config import PipelineConfig
    from mma_agent.data.dataset import load_dataset
    from mma_agent.data.splits import split_dataset
    from mma_agent.graphs.embedding import create_rerank_tool
    from mma_agent.graphs.reranker import create_mma_reranker
    from mma_agent.graphs.state import RerankInput, RerankOutput
    from mma_agent.modalities import TASK_FAMILIES
    from mma_agent.pipeline import Pipeline
    from mma_agent.toolkits import prepare_toolkits
    from mma_agent.toolkits.base import Toolkit, ToolSpec


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    msg = f"module 'mma_agent' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
