"""Stored profiles: `PUT /v1/profiles/{user}` keeps a user's profile text (and task) so requests can name the user.

SQLite in WAL mode, one row per user, committed before the request is answered, so a stored profile survives a
restart. The file's default place (`serve.profiles_db` in the CLI) is outside every DVC output: DVC deletes a
stage's outputs when the stage reruns, and these are users' data, not a pipeline product.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoredProfile:
    user: str
    profile: str
    task: str | None
    updated: float  # unix seconds


class ProfileStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Users' texts: readable by the server's user only (SQLite gives its WAL files the database's mode).
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS profiles (user TEXT PRIMARY KEY, profile TEXT NOT NULL, "
                             "task TEXT, updated REAL NOT NULL)")

    def get(self, user: str) -> StoredProfile | None:
        with self._lock:
            row = self._db.execute("SELECT user, profile, task, updated FROM profiles WHERE user = ?",
                                   (user,)).fetchone()
        return StoredProfile(*row) if row else None

    def put(self, user: str, profile: str, task: str | None) -> StoredProfile:
        stored = StoredProfile(user, profile, task, time.time())
        with self._lock:
            self._db.execute("INSERT INTO profiles VALUES (?, ?, ?, ?) ON CONFLICT(user) DO UPDATE SET "
                             "profile = excluded.profile, task = excluded.task, updated = excluded.updated",
                             (stored.user, stored.profile, stored.task, stored.updated))
        return stored

    def delete(self, user: str) -> StoredProfile | None:
        """Remove a user's profile; returns what was stored (None if nothing was)."""
        with self._lock:
            row = self._db.execute("DELETE FROM profiles WHERE user = ? RETURNING user, profile, task, updated",
                                   (user,)).fetchone()
        return StoredProfile(*row) if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
