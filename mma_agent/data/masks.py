"""Availability masks over {text, image, behaviour} and the one place they are enforced.

What each modality is, precisely:

- **text**: every item's text fields (title, genres, user tags, overview, tagline, keywords).
- **image**: every item's poster and anything computed from it (image embeddings, tags).
- **behaviour**: the collaborative signal, i.e. other users' interactions and everything learned
  from them (the co-interaction graph, popularity, CF retrievers).

The user's own history (which items they liked, in order) is the request itself, as a host app
passes it in, and stays visible in every family: with text and image masked it is a list of ids
whose content the agent cannot see. A cold user (behaviour masked) still has a history, e.g. from
onboarding, but no graph evidence.

Every component downstream (pools, tools, caches, baselines) reads data through a
:class:`ModalityView`, never through the `Split` directly, so a masked modality returns ``None``
everywhere at once. ``tests/test_masks.py`` proves it: with a modality masked, changing that
modality's data changes no output.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mma_agent.modalities import Mask, Modality

if TYPE_CHECKING:
    from mma_agent.data.splits import Split


def compose_item_text(title: str, genres: str, tags: str, overview: str, tagline: str, keywords: str) -> str:
    parts = [title + "."] if title else []
    if genres:
        parts.append("Genres: " + ", ".join(genres.split("|")) + ".")
    if tags:
        parts.append("Tags: " + ", ".join(tags.split("|")[:20]) + ".")
    if overview:
        parts.append(overview)
    if tagline:
        parts.append(tagline)
    if keywords:
        parts.append("Keywords: " + ", ".join(keywords.split("|")[:20]) + ".")
    return " ".join(parts)


# Split-level caches shared by every view of a split (views are made per request, so they stay cheap).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(split: Split, key: str, build):
    entry = _CACHE.setdefault(split, {})
    if key not in entry:
        entry[key] = build()
    return entry[key]


def _item_texts(split: Split) -> list[str]:
    def build() -> list[str]:
        items = split.dataset.items
        cols = (items["title"], items["genres"], split.item_tags, items["overview"], items["tagline"], items["keywords"])
        return [compose_item_text(*row) for row in zip(*cols, strict=True)]

    return _cached(split, "texts", build)


def _histories(split: Split) -> dict[str, list[np.ndarray]]:
    def build() -> dict[str, list[np.ndarray]]:
        out = {}
        for key, names in {"train": ("train",), "train+valid": ("train", "valid"), "all": ("train", "valid", "test")}.items():
            df = pd.concat([split.frame(n) for n in names]).sort_values(["user", "timestamp", "item"], kind="stable")
            groups = dict(iter(df.groupby("user")["item"]))
            out[key] = [groups[u].to_numpy() if u in groups else np.empty(0, dtype=np.int64) for u in range(split.n_users)]
        return out

    return _cached(split, "histories", build)


class ModalityView:
    """Read access to one split's data under one mask. Masked modalities read as ``None``.

    `features` are catalogue-level derived data, each tagged with the modality it comes from
    (text embeddings, image embeddings, the co-interaction graph); `image_embeddings` is shorthand
    for the feature "image". Components get them through `feature`, never from a cache directly.
    """

    def __init__(
        self,
        split: Split,
        mask: Mask,
        *,
        image_embeddings: np.ndarray | None = None,
        features: dict[str, tuple[Modality | str, Any]] | None = None,
    ) -> None:
        if image_embeddings is not None and image_embeddings.shape[0] != split.n_items:
            msg = f"image_embeddings has {image_embeddings.shape[0]} rows but the catalogue has {split.n_items} items"
            raise ValueError(msg)
        self._split = split
        self._features = {k: (Modality(m), v) for k, (m, v) in (features or {}).items()}
        if image_embeddings is not None:
            self._features["image"] = (Modality.IMAGE, image_embeddings)
        self.mask = mask

    def feature(self, name: str) -> Any:
        """A derived feature (embeddings, a graph), or None when its modality is masked or it is absent."""
        if name not in self._features:
            return None
        modality, value = self._features[name]
        return value if self.mask.available(modality) else None

    # --- always visible: catalogue ids and the user's own history (the request) -------------
    @property
    def n_items(self) -> int:
        return self._split.n_items

    @property
    def n_users(self) -> int:
        return self._split.n_users

    @property
    def item_ids(self) -> np.ndarray:
        return self._split.item_ids

    @property
    def item_index(self) -> dict[str, int]:
        """Item id -> catalogue index (ids are never masked)."""
        return self._split.item_index

    @property
    def user_ids(self) -> np.ndarray:
        return self._split.user_ids

    def history(self, user: int, *, include_valid: bool = False) -> np.ndarray:
        """The user's positives in time order: train, plus validation when scoring test targets."""
        return self._history_by_split["train+valid" if include_valid else "train"][user]

    def known_positives(self, user: int) -> np.ndarray:
        """Every positive of the user in any split: never used as a negative."""
        return self._history_by_split["all"][user]

    @property
    def _history_by_split(self) -> dict[str, list[np.ndarray]]:
        return _histories(self._split)

    # --- text -------------------------------------------------------------------------------
    def item_text(self, item: int) -> str | None:
        if not self.mask.text:
            return None
        return self._texts[item] or None

    def item_texts(self) -> list[str] | None:
        """All item texts (catalogue order), or None when text is masked."""
        return list(self._texts) if self.mask.text else None

    def item_field(self, item: int, name: str) -> str | None:
        """One text field ('title', 'genres', 'tags', 'overview', 'tagline', 'keywords')."""
        if not self.mask.text:
            return None
        if name == "tags":
            return self._split.item_tags[item] or None
        return str(self._split.dataset.items.at[item, name]) or None

    def item_titles(self) -> list[str] | None:
        """All item titles (catalogue order), or None when text is masked."""
        return self._split.dataset.items["title"].tolist() if self.mask.text else None

    @property
    def _texts(self) -> list[str]:
        return _item_texts(self._split)

    # --- image ------------------------------------------------------------------------------
    def image_path(self, item: int) -> Path | None:
        if not self.mask.image:
            return None
        return self._split.dataset.image_path(self._split.dataset.items.at[item, "image"])

    def has_image(self) -> np.ndarray | None:
        """(n_items,) bool: the item has a poster; None when image is masked."""
        if not self.mask.image:
            return None
        return self._split.dataset.items["image"].ne("").to_numpy()

    def image_embeddings(self) -> np.ndarray | None:
        return self.feature("image")

    # --- behaviour --------------------------------------------------------------------------
    def interactions(self) -> sp.csr_matrix | None:
        """(n_users, n_items) train positives of all users; None when behaviour is masked."""
        return self._split.matrix("train") if self.mask.behaviour else None

    def popularity(self) -> np.ndarray | None:
        """(n_items,) train interaction counts; None when behaviour is masked."""
        m = self.interactions()
        return None if m is None else np.asarray(m.sum(axis=0)).ravel()
