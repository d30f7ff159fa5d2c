"""Shared helpers at the bottom of the import graph: score normalisation, content digests, atomic
writes, append-only JSONL and Markdown tables. Imports nothing of mma_agent, so every layer may use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# --- numerics ---------------------------------------------------------------------------------


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] within the array; a constant array maps to zeros (no evidence either way)."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi > lo and not np.isfinite(hi - lo):  # finite values whose range overflows (near +-1.7e308): scale down first
        x, lo, hi = x / max(abs(lo), abs(hi)), lo / max(abs(lo), abs(hi)), hi / max(abs(lo), abs(hi))
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x, dtype=float)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Unit rows (the last axis); a zero row stays zero."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --- content digests --------------------------------------------------------------------------
# Cache keys and file names: the first n hex digits of a SHA-256. Every scheme below is kept
# exactly as it was first written, so existing caches and workdirs keep their names.


def digest(chunks: str | Iterable[str | bytes], n: int = 16) -> str:
    """SHA-256 over a string, or over the concatenation of string/bytes chunks, cut to n digits."""
    h = hashlib.sha256()
    for c in [chunks] if isinstance(chunks, str) else chunks:
        h.update(c.encode() if isinstance(c, str) else c)
    return h.hexdigest()[:n]


def json_digest(obj: Any, n: int = 16) -> str:
    """Digest of an object's canonical JSON (sorted keys; non-JSON values by str)."""
    return digest(json.dumps(obj, sort_keys=True, default=str), n)


def joined_digest(parts: Iterable[str], n: int = 16, *, terminated: bool = False) -> str:
    """Digest of strings joined by NUL (`terminated`: each one followed by NUL)."""
    parts = list(parts)
    return digest("".join(p + "\x00" for p in parts) if terminated else "\x00".join(parts), n)


# --- atomic writes ----------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[Path], Any], *, suffix: str = ".tmp") -> Path:
    """Write through `write(tmp)` beside `path`, then rename over it: a reader sees the old file or
    the whole new one, never a torn write. `suffix` keeps what numpy appends (".tmp.npy")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(suffix)
    write(tmp)
    tmp.replace(path)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda tmp: np.save(tmp, array), suffix=".tmp.npy")


def read_jsonl(path: Path, *, repair: bool = False, error: type[Exception] = ValueError) -> list[tuple[int, Any]]:
    """(line number, object) for each non-blank line of an append-only JSONL file. A half-written
    last line (a kill mid-write) is dropped, and cut off the file if `repair`, so appending goes on
    cleanly; a bad line anywhere else raises `error` naming it."""
    path = Path(path)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as err:
            if n == len(lines):  # after the last newline: a write that did not finish
                log.warning("%s: line %d is half-written (a crash mid-write); it is redone", path, n)
                if repair:
                    with path.open("r+b") as fh:
                        fh.truncate(len(raw) - len(line))
                break
            msg = f"{path}: line {n} is not valid JSON ({err.msg}); fix or remove that line"
            raise error(msg) from err
    return out


# --- tables -----------------------------------------------------------------------------------


def format_table(rows: list[dict], title: str | None = None) -> str:
    """A Markdown table from a list of dicts (floats to 4 decimals); a key a row lacks is an empty cell."""
    if not rows:
        return f"{title}\n(no rows)" if title else "(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))  # every row's keys, first-seen order
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    body = [[cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"  # noqa: E731
    out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)]
    return "\n".join(([f"\n{title}\n"] if title else []) + out)
