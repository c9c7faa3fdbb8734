"""Stored profiles: `PUT /v1/profiles/{user}` keeps a user's profile text (and task) so requests can name the user.

One row per user (user, profile, task, updated, owner, version), committed before the request is answered, in the
database a URL names (`open_store`):

- a plain path or `sqlite:///path` (SQLAlchemy's form: `sqlite:////abs/path`): one SQLite file in WAL mode, created
  readable by the server's user only. The default (`.serve/profiles.db` in the CLI) is outside every DVC output:
  DVC deletes a stage's outputs when the stage reruns, and these are users' data, not a pipeline product.
- `postgresql://` (or `postgres://`): a PostgreSQL server through psycopg 3, which several replicas share.

`owner` is whom a row belongs to: a put or delete by another owner is refused unless it is the admin's. `version`
comes from one counter for the whole store (PostgreSQL: a sequence; SQLite: a one-row table bumped in the put's
transaction), so every put gets a version no row of any user ever had: a replica that made an adapter from
(user, version) knows it is stale as soon as the store says another version (or none).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

COLUMNS = '"user", profile, task, updated, owner, version'  # "user" is a keyword in PostgreSQL: always quoted
CONNECT_TIMEOUT_S = 5  # an unreachable PostgreSQL fails the start in seconds, not at the first request


@dataclass(frozen=True)
class StoredProfile:
    user: str
    profile: str
    task: str | None
    updated: float  # unix seconds
    owner: str  # '' for rows stored before owners existed: only the admin may replace or delete them
    version: int  # unique across the whole store and increasing: a new put never reuses one


@dataclass(frozen=True)
class Dialect:
    """What differs between the backends' SQL (written with `?` placeholders; `placeholder` replaces them)."""

    schema: tuple[str, ...]  # run on open, in one transaction
    begin: str  # starts a write transaction
    bump: str | None  # run before a put, in its transaction: moves the counter on (SQLite)
    next_version: str  # SQL expression for the put's version
    any_of: str  # `"user" <any_of>` matches the users given as one parameter, `users_param(users)`
    users_param: Callable[[list[str]], Any]
    placeholder: str = "?"


SQLITE = Dialect(
    schema=('CREATE TABLE IF NOT EXISTS profiles ("user" TEXT PRIMARY KEY, profile TEXT NOT NULL, task TEXT, '
            "updated REAL NOT NULL, owner TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL DEFAULT 0)",
            "CREATE TABLE IF NOT EXISTS profile_version (version INTEGER NOT NULL)"),
    begin="BEGIN IMMEDIATE",  # the write lock at once: no other connection (or process) writes in between
    bump="UPDATE profile_version SET version = version + 1",
    next_version="(SELECT version FROM profile_version)",
    any_of="IN (SELECT value FROM json_each(?))",
    users_param=json.dumps)

POSTGRES = Dialect(
    schema=("SELECT pg_advisory_xact_lock(2029)",  # replicas starting together: one creates, the others wait
            "CREATE SEQUENCE IF NOT EXISTS profile_version",
            'CREATE TABLE IF NOT EXISTS profiles ("user" TEXT PRIMARY KEY, profile TEXT NOT NULL, task TEXT, '
            "updated DOUBLE PRECISION NOT NULL, owner TEXT NOT NULL, version BIGINT NOT NULL)"),
    begin="BEGIN",
    bump=None,
    next_version="nextval('profile_version')",  # a refused put spends a number: gaps are fine, reuse is not
    any_of="= ANY(?)",
    users_param=list,
    placeholder="%s")


class ProfileStore:
    """The store over one connection, shared by the app's worker threads and the engine thread under a lock."""

    def __init__(self, connect: Callable[[], Any], dialect: Dialect):
        self._connect, self.dialect = connect, dialect
        self._lock = threading.Lock()
        self._db = connect()
        with self._lock:
            self._transaction(lambda: [self._run(sql) for sql in dialect.schema])
            if dialect is SQLITE:
                self._transaction(self._migrate_sqlite)

    def get(self, user: str) -> StoredProfile | None:
        with self._lock:
            row = self._run(f"SELECT {COLUMNS} FROM profiles WHERE \"user\" = ?", (user,)).fetchone()
        return StoredProfile(*row) if row else None

    def put(self, user: str, profile: str, task: str | None, owner: str, *,
            admin: bool = False) -> StoredProfile | None:
        """Store `profile` as `user`'s, under a new version; None (nothing changed) when `user` belongs to another
        owner and this is not the admin. The admin's put keeps an existing user's owner. One statement decides and
        writes, so no other put or delete slips between the owner check and the write."""
        def write() -> tuple | None:
            if self.dialect.bump:
                self._run(self.dialect.bump)
            return self._run(
                f"INSERT INTO profiles ({COLUMNS}) VALUES (?, ?, ?, ?, ?, {self.dialect.next_version}) "
                'ON CONFLICT ("user") DO UPDATE SET profile = excluded.profile, task = excluded.task, '
                "updated = excluded.updated, version = excluded.version WHERE ? OR profiles.owner = excluded.owner "
                f"RETURNING {COLUMNS}", (user, profile, task, time.time(), owner, admin)).fetchone()

        with self._lock:
            row = self._transaction(write, keep=lambda row: row is not None)
        return StoredProfile(*row) if row else None

    def delete(self, user: str, owner: str, *, admin: bool = False) -> StoredProfile | None:
        """Remove `user`'s row and return it; None when there is none or it belongs to another owner (and this is
        not the admin). One statement: atomic."""
        with self._lock:
            row = self._run(f"DELETE FROM profiles WHERE \"user\" = ? AND (? OR owner = ?) RETURNING {COLUMNS}",
                            (user, admin, owner)).fetchone()
        return StoredProfile(*row) if row else None

    def versions(self, users: Collection[str]) -> dict[str, int]:
        """The current version of each of `users` that has a row (the others are absent): one query for a sweep
        over the adapters a replica holds."""
        if not users:
            return {}
        with self._lock:
            rows = self._run(f'SELECT "user", version FROM profiles WHERE "user" {self.dialect.any_of}',
                             (self.dialect.users_param(list(users)),)).fetchall()
        return dict(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, params: tuple = ()) -> Any:
        if getattr(self._db, "broken", False):  # PostgreSQL went away (a restart, a failover): connect again
            self._db = self._connect()
        return self._db.execute(sql.replace("?", self.dialect.placeholder), params)

    def _transaction(self, body: Callable[[], Any], keep: Callable[[Any], bool] = lambda result: True) -> Any:
        """`body()` in one write transaction: committed when `keep(result)`, else (or on an error) rolled back."""
        self._run(self.dialect.begin)
        try:
            result = body()
        except BaseException:
            if not getattr(self._db, "broken", False):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT" if keep(result) else "ROLLBACK")
        return result

    def _migrate_sqlite(self) -> None:
        """Files from before owners and versions (user, profile, task, updated) keep working: their rows get owner ''
        (the admin's alone) and versions 1..n in row order, and the counter starts at the highest version."""
        columns = {row[1] for row in self._run("PRAGMA table_info(profiles)").fetchall()}
        if "owner" not in columns:
            self._run("ALTER TABLE profiles ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
            self._run("ALTER TABLE profiles ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
            self._run("UPDATE profiles SET version = rowid")
        self._run("INSERT INTO profile_version SELECT COALESCE(MAX(version), 0) FROM profiles "
                  "WHERE NOT EXISTS (SELECT 1 FROM profile_version)")


def open_store(url: str | Path) -> ProfileStore:
    """The profile store a URL names: a path or `sqlite:///path` (SQLite), `postgresql://...` or `postgres://...`
    (PostgreSQL). A bad or unreachable URL fails here, in one line naming the URL without its password."""
    url = str(url)
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        return ProfileStore(lambda: connect_postgres(url), POSTGRES)
    if scheme == "sqlite":
        path = url.split("://", 1)[1].removeprefix("/")  # sqlite:///rel.db, sqlite:////abs/path.db
        if not path:
            raise ValueError(f"profiles database {url}: no file named (sqlite:///relative/path or "
                             f"sqlite:////absolute/path)")
        return sqlite_store(Path(path))
    if scheme:
        raise ValueError(f"profiles database {redact(url)}: unsupported scheme {scheme!r} (use a path, "
                         f"sqlite:///path or postgresql://...)")
    return sqlite_store(Path(url))


def sqlite_store(path: Path) -> ProfileStore:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Users' texts: readable by the server's user only (SQLite gives its WAL files the database's mode).
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))

    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)  # transactions: ours, explicit
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=5000")  # another process holding the write lock: wait, don't fail
        db.execute("PRAGMA secure_delete=ON")  # a deleted profile's text is overwritten, not left in a free page
        return db

    try:
        return ProfileStore(connect, SQLITE)
    except sqlite3.DatabaseError as err:
        raise ValueError(f"profiles database {path}: {err}") from None


def connect_postgres(url: str) -> Any:
    try:
        import psycopg
    except ImportError:
        raise ValueError(f"profiles database {redact(url)}: PostgreSQL needs psycopg (pip install "
                         f"'psycopg[binary]', in the `serve` extra)") from None
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as err:
        password = urlsplit(url).password
        reason = " ".join(str(err).split())
        if password:
            reason = reason.replace(password, "***")
        raise ConnectionError(f"profiles database {redact(url)}: {reason}") from None


def redact(url: str) -> str:
    """`url` with its password (in the authority, or a `password=` parameter) replaced by ***."""
    url = re.sub(r"^([^:/]+://[^/@:]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)
