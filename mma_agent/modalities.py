"""The three modalities, an episode's availability mask over them, and the task families.

A leaf: it imports nothing from the package, so configs, splits and masks can all name a
family without importing each other.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Modality(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    BEHAVIOUR = "behaviour"


MODALITIES: tuple[str, ...] = tuple(m.value for m in Modality)  # the names a request's mask may use


@dataclass(frozen=True)
class Mask:
    """Which modalities an episode may see (True = available). Hidden from the agent itself."""

    text: bool = True
    image: bool = True
    behaviour: bool = True

    def available(self, modality: Modality | str) -> bool:
        return bool(getattr(self, Modality(modality).value))

    @classmethod
    def of(cls, available: Mapping[str, bool] | None) -> Mask:
        """The mask of a mapping from some modalities to availability (the rest available): one
        shared instance per pattern, so resolving a request's mask costs a lookup."""
        return _mask_of(tuple(bool((available or {}).get(m.value, True)) for m in Modality))

    def to_dict(self) -> dict[str, bool]:
        return {"text": self.text, "image": self.image, "behaviour": self.behaviour}

    def __str__(self) -> str:
        return "".join(m.value[0].upper() if self.available(m) else "-" for m in Modality)


@functools.cache
def _mask_of(flags: tuple[bool, bool, bool]) -> Mask:
    return Mask(*flags)


TASK_FAMILIES: dict[str, Mask] = {
    "full": Mask(True, True, True),
    "no-text": Mask(False, True, True),
    "no-image": Mask(True, False, True),
    "cold-user": Mask(True, True, False),
    "text-only": Mask(True, False, False),
    "image-only": Mask(False, True, False),
    "behaviour-only": Mask(False, False, True),
}
OOMA_FAMILIES = ("text-only", "image-only", "behaviour-only")


def family_mask(family: str) -> Mask:
    try:
        return TASK_FAMILIES[family]
    except KeyError:
        msg = f"unknown task family {family!r}; choose one of {list(TASK_FAMILIES)}"
        raise ValueError(msg) from None


def assign_families(n: int, seed: int, families: tuple[str, ...] = tuple(TASK_FAMILIES)) -> list[str]:
    """Balanced, deterministic family assignment for `n` episodes: each family n/len(families) times
    (+-1), shuffled by `seed`."""
    for f in families:
        family_mask(f)
    rng = np.random.default_rng(seed)
    order = np.resize(np.arange(len(families)), n)
    rng.shuffle(order)
    return [families[k] for k in order]
