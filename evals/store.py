"""The embedded results store: one SQLite file per run, one row per (method, episode, seed).

Each episode's row is committed as soon as it finishes, so a killed run loses at most the episodes
in flight; a rerun skips every key already stored (the primary key makes a second write of the
same episode impossible, so nothing is counted twice). The run's settings live in `meta`; a rerun
with other settings or other data is refused instead of mixing results.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    method TEXT NOT NULL, split TEXT NOT NULL, protocol TEXT NOT NULL, family TEXT NOT NULL,
    pool INTEGER NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL,          -- ok | fallback | error
    metrics TEXT NOT NULL,         -- JSON: {alpha: {ndcg@10, hr@10, ndcg@20, hr@20}}
    info TEXT NOT NULL,            -- JSON: routing diagnostics, reasons
    error TEXT,                    -- the exception, when status = error
    seconds REAL NOT NULL,
    PRIMARY KEY (method, split, protocol, family, pool, seed)
);
"""
KEY = ("method", "split", "protocol", "family", "pool", "seed")


class RunMismatchError(ValueError):
    """The store holds a run with other settings or data."""


class ResultStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def check_meta(self, meta: dict[str, Any], *, compare: tuple[str, ...]) -> None:
        """Store `meta` on first use; afterwards the `compare` keys must match what is stored."""
        with self._lock:
            stored = {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}
            clash = {k: (stored[k], meta[k]) for k in compare if k in stored and stored[k] != meta[k]}
            if clash:
                msg = (
                    f"{self.path} holds a run with other settings ({clash}); use another run name, or the same settings to resume"
                )
                raise RunMismatchError(msg)
            for k, v in meta.items():
                self._db.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (k, json.dumps(v))
                )

    def meta(self) -> dict[str, Any]:
        with self._lock:
            return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def done(self, method: str) -> set[tuple]:
        with self._lock:
            rows = self._db.execute("SELECT split, protocol, family, pool, seed FROM results WHERE method = ?", (method,))
            return {tuple(r) for r in rows}

    def forget(self, method: str) -> int:
        """Delete a method's rows (to re-run it from scratch); returns how many were deleted."""
        with self._lock:
            return self._db.execute("DELETE FROM results WHERE method = ?", (method,)).rowcount

    def add(self, row: dict[str, Any]) -> bool:
        """Insert one finished episode (committed at once); False if that key was already stored."""
        values = (
            *(row[k] for k in KEY),
            row["status"],
            json.dumps(row["metrics"]),
            json.dumps(row["info"]),
            row.get("error"),
            float(row["seconds"]),
        )
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            return cur.rowcount == 1

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute("SELECT * FROM results ORDER BY method, split, protocol, family, pool, seed")
            names = [d[0] for d in cur.description]
            out = []
            for r in cur:
                row = dict(zip(names, r, strict=True))
                row["metrics"], row["info"] = json.loads(row["metrics"]), json.loads(row["info"])
                out.append(row)
            return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
