"""A small persistent key-value cache on SQLite, for work that is expensive and keyed by content.

Used for LLM outputs (profile summaries, judge scores) and embeddings: every value is committed as soon as its batch
is done, so a run that is killed halfway keeps what it finished and a rerun only computes what is missing.
SQLite gives atomic commits and safe concurrent readers for free; values are bytes or text.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def content_key(*parts: Any) -> str:
    """A stable sha256 hex key of the parts (JSON-encoded, so `("a", 1)` and `("a", "1")` differ)."""
    payload = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def as_text(value: Any) -> str:
    """A cached value as text (SQLite hands back what was stored: bytes or str)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Cache:
    """`cache.get_many(keys)` -> {key: value} for the keys present; `cache.put_many({key: value})` commits."""

    def __init__(self, path: str | os.PathLike, table: str):
        if not table.isidentifier():
            raise ValueError(f"cache table name must be an identifier, got {table!r}")
        self.path, self.table = Path(path), table
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT key, value FROM {self.table} WHERE key IN ({marks})", chunk))
        return found

    def put_many(self, items: Mapping[str, Any]) -> None:
        with self._db:
            self._db.executemany(f"INSERT OR REPLACE INTO {self.table} (key, value) VALUES (?, ?)", items.items())

    def __len__(self) -> int:
        return self._db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
