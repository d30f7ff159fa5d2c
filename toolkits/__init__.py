"""Evidence toolkits: text, image, graph and clarification, as LangChain tools."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mma_agent.data.splits import Split
    from mma_agent.models.relevance import Relevance
    from mma_agent.toolkits.base import Catalogue, Toolkit, ToolVocabulary


def builtin_toolkits() -> tuple[type[Toolkit], ...]:
    """The library's toolkits, in the order their tools are offered."""
    from mma_agent.toolkits.clarify import ClarifyToolkit
    from mma_agent.toolkits.graph import GraphToolkit
    from mma_agent.toolkits.image import ImageToolkit
    from mma_agent.toolkits.text import TextToolkit

    return (TextToolkit, ImageToolkit, GraphToolkit, ClarifyToolkit)


def tool_vocabulary(toolkits: Mapping[str, Toolkit] | None = None) -> ToolVocabulary:
    """The tools a reranker offers: every built-in toolkit's (one that is not configured still
    offers its tool, which answers Null, as when its modality is missing), then the tools of any
    other toolkit in `toolkits`, under its key, in the order given."""
    from mma_agent.toolkits.base import ToolVocabulary

    toolkits = toolkits or {}
    builtin = builtin_toolkits()
    keys = {cls.name for cls in builtin}
    pairs = [(cls.name, toolkits.get(cls.name, cls)) for cls in builtin]
    return ToolVocabulary.of([*pairs, *((k, kit) for k, kit in toolkits.items() if k not in keys)])


def with_relevance(catalogue: Catalogue, relevance: Mapping[str, Relevance]) -> Catalogue:
    """The catalogue with each modality's learned relevance model as a feature (hidden, like the
    modality's other features, when the modality is masked); the owning toolkit adds its channel."""
    from mma_agent.modalities import Modality
    from mma_agent.models.relevance import relevance_feature

    return catalogue.with_features(**{relevance_feature(m): (Modality(m), model) for m, model in relevance.items()})


def prepare_toolkits(
    split: Split,
    cache_dir: Path,
    *,
    image_model: str | None,
    image_pretrained: str | None = None,
    text_model: str | None = None,
    clarify: bool = True,
    relevance: Mapping[str, Relevance] | None = None,
) -> tuple[Catalogue, dict[str, Toolkit]]:
    """Build every toolkit's cached features over the catalogue. `image_model=None` leaves the
    image toolkit out (its tool then answers Null, as when the modality is missing). `relevance`
    maps a modality to its learned relevance model (`Pipeline.relevance`): the owning toolkit
    adds its channel, hidden like the modality's other features when the modality is masked."""
    from mma_agent.toolkits.base import Catalogue
    from mma_agent.toolkits.clarify import ClarifyToolkit
    from mma_agent.toolkits.graph import GraphToolkit
    from mma_agent.toolkits.image import ImageToolkit
    from mma_agent.toolkits.text import TextToolkit

    catalogue = Catalogue(split)
    kits: dict[str, Toolkit] = {"text": TextToolkit(text_model), "graph": GraphToolkit()}
    if image_model is not None:
        kits["image"] = ImageToolkit(image_model, image_pretrained)
    for kit in kits.values():
        catalogue = kit.prepare(catalogue, Path(cache_dir))
    catalogue = with_relevance(catalogue, relevance or {})
    if clarify:
        kits["clarify"] = ClarifyToolkit(kits["text"], kits.get("image"))
    return catalogue, kits
