"""The request boundary: one pydantic model that every request passes before anything else runs.

What an app sends is checked field by field, in O(n): ids are strings (an integer id is taken as
its decimal string), scores are finite real numbers of any type (Python, NumPy, arrays or lists),
the mask holds booleans, `max_turns` is an integer in [1, 32], and sizes are bounded. The first
problem becomes the reason of a first-stage fallback, naming the field and the fix; whatever is
rejected, the fallback ranks exactly the valid part of the pool in first-stage order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mma_agent.modalities import MODALITIES

MAX_POOL = 10_000  # candidates per request
MAX_HISTORY = 10_000  # history items per request
MAX_ID_CHARS = 256
MAX_TURNS = 32
MAX_QUERY_CHARS = 500  # the person's request; longer is cut there (and the output says so)


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("rerank_request", message)


def as_id(value: Any) -> str | None:
    """An item or user id as a string, or None when `value` cannot be one."""
    if isinstance(value, str):
        return value if 0 < len(value) <= MAX_ID_CHARS else None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
        return str(int(value))
    return None


def as_score(value: Any) -> float | None:
    """A first-stage score as a finite float, or None."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_):
        return None
    try:
        f = float(value)
    except (OverflowError, ValueError):  # an int beyond float range
        return None
    return f if math.isfinite(f) else None


def _as_list(value: Any, limit: int) -> list:
    """A list from a list, tuple or 1-d NumPy array; a string, a mapping or a scalar is refused
    (a string is not a list of its characters)."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise _fail(f"must be a flat list, got an array of shape {value.shape}")
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise _fail(
            f"must be a list, got {type(value).__name__}{' (a string is not a list of ids)' if isinstance(value, str | bytes) else ''}"
        )
    if len(value) > limit:
        raise _fail(f"{len(value)} entries; at most {limit} per request")
    return list(value)


def _converted(value: Any, limit: int, convert: Callable[[Any], Any], need: str) -> list:
    """`convert` applied to every entry of a list (see `_as_list`); the first entry it refuses
    (None) fails with its position and what is needed."""
    out = []
    for i, v in enumerate(_as_list(value, limit)):
        x = convert(v)
        if x is None:
            raise _fail(f"position {i} is {v!r:.60}; {need}")
        out.append(x)
    return out


def _id_list(value: Any, limit: int) -> list[str]:
    return _converted(value, limit, as_id, f"ids must be non-empty strings of at most {MAX_ID_CHARS} characters (or integers)")


class RerankRequest(BaseModel):
    """A checked reranker request (see `RerankInput` for what each field means)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    candidates: list[str]
    first_stage_scores: list[float]
    user_id: str | None = None
    history: list[str] | None = None
    max_turns: int | None = None
    mask: dict[str, bool] | None = None
    target: str | None = None
    query: str | None = None

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, v: Any) -> str | None:
        """The person's words: text (valid Unicode), cut to MAX_QUERY_CHARS; blank is no query."""
        if v is None:
            return None
        if not isinstance(v, str):
            raise _fail(f"{type(v).__name__} is not text; pass the person's request as a string (or leave it out)")
        v = v.encode("utf-8", "replace").decode("utf-8")[:MAX_QUERY_CHARS]
        return v if v.strip() else None

    @field_validator("candidates", mode="before")
    @classmethod
    def _candidates(cls, v: Any) -> list[str]:
        ids = _id_list(v, MAX_POOL)
        if not ids:
            raise _fail("the pool is empty; pass a non-empty list of item ids")
        seen: set[str] = set()
        for c in ids:
            if c in seen:
                raise _fail(f"duplicate item id {c!r}; each candidate must appear once")
            seen.add(c)
        return ids

    @field_validator("first_stage_scores", mode="before")
    @classmethod
    def _scores(cls, v: Any) -> list[float]:
        return _converted(v, MAX_POOL, as_score, "scores must be finite numbers")

    @field_validator("history", mode="before")
    @classmethod
    def _history(cls, v: Any) -> list[str] | None:
        return None if v is None else _id_list(v, MAX_HISTORY)

    @field_validator("user_id", "target", mode="before")
    @classmethod
    def _one_id(cls, v: Any) -> str | None:
        if v is None:
            return None
        item = as_id(v)
        if item is None:
            raise _fail(f"{v!r:.60} is not an id; pass a non-empty string (or an integer)")
        return item

    @field_validator("max_turns", mode="before")
    @classmethod
    def _max_turns(cls, v: Any) -> int | None:
        if v is None:
            return None
        if not isinstance(v, numbers.Integral) or isinstance(v, bool | np.bool_) or not 1 <= int(v) <= MAX_TURNS:
            raise _fail(f"{v!r:.60} is not a turn budget; pass an integer from 1 to {MAX_TURNS}")
        return int(v)

    @field_validator("mask", mode="before")
    @classmethod
    def _mask(cls, v: Any) -> dict[str, bool] | None:
        if v is None:
            return None
        if not isinstance(v, dict) or set(v) - set(MODALITIES) or not all(isinstance(b, bool | np.bool_) for b in v.values()):
            raise _fail(f"{v!r:.80} must map some of 'text', 'image', 'behaviour' to true/false")
        return {k: bool(b) for k, b in v.items()}

    @model_validator(mode="after")
    def _aligned(self) -> RerankRequest:
        if len(self.first_stage_scores) != len(self.candidates):
            raise _fail(
                f"first_stage_scores: need one score per candidate ({len(self.candidates)}), got {len(self.first_stage_scores)}"
            )
        return self


def request_warnings(raw: Any) -> list[str]:
    """What the request model let through but the caller should see: keys it does not know
    (`unknown_keys`, which `guard_input` and the rerank tool fill in: LangGraph drops a key the
    input schema lacks before any node runs, so a typo such as `max_turn` would pass in silence),
    and a query cut at its cap."""
    out = []
    unknown = sorted({str(k) for k in raw.get("unknown_keys") or ()}) if isinstance(raw, dict) else []
    if unknown:
        out.append(f"unknown request key(s) {unknown} ignored; the request keys are {sorted(RerankRequest.model_fields)}")
    given = raw.get("query") if isinstance(raw, dict) else None
    if isinstance(given, str) and len(given) > MAX_QUERY_CHARS:
        out.append(f"query: {len(given)} characters, cut to the first {MAX_QUERY_CHARS}")
    return out


def parse_request(raw: Any) -> tuple[RerankRequest | None, str | None]:
    """(the checked request, None), or (None, the first problem as "field: what and how to fix")."""
    if not isinstance(raw, dict):
        return None, f"request: expected a mapping of the RerankInput fields, got {type(raw).__name__}"
    try:
        return RerankRequest.model_validate(raw), None
    except ValidationError as err:
        e = err.errors(include_url=False)[0]
        field = ".".join(str(p) for p in e["loc"])
        if e["type"] == "missing":
            return None, f"{field}: missing; a request needs candidates and first_stage_scores"
        return None, f"{field}: {e['msg']}" if field else e["msg"]


def valid_pairs(candidates: Any, scores: Any) -> tuple[list[str], list[float]]:
    """The valid part of a pool, in first-stage order: each candidate that is an id (first
    occurrence) with a finite score at its position. Empty when the pool is not a sequence."""
    if isinstance(candidates, np.ndarray):
        candidates = candidates.tolist() if candidates.ndim == 1 else []
    if isinstance(scores, np.ndarray):
        scores = scores.tolist() if scores.ndim == 1 else []
    if not isinstance(candidates, Sequence) or isinstance(candidates, str | bytes):
        return [], []
    scores = scores if isinstance(scores, Sequence) and not isinstance(scores, str | bytes) else []
    ids, vals, seen = [], [], set()
    scores = [
        *list(scores)[: len(candidates)],
        *([None] * max(0, len(candidates) - len(scores))),
    ]  # a score per candidate, None if missing
    for c, s in zip(candidates, scores, strict=True):
        cid, f = as_id(c), as_score(s)
        if cid is not None and f is not None and cid not in seen:
            seen.add(cid)
            ids.append(cid)
            vals.append(f)
    order = np.argsort(-np.asarray(vals, dtype=float), kind="stable") if vals else []
    return [ids[i] for i in order], [vals[i] for i in order]
