"""The profile store's contract (p2p/server/profiles.py), run against both backends: a SQLite file and a real
PostgreSQL server started for the test (tests/postgres.py)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from conftest import free_port

from p2p.server.profiles import CONNECT_TIMEOUT_S, ProfileStore, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """A URL naming an empty store of each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "store" / "profiles.db")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store(url):
    opened = open_store(url)
    yield opened
    opened.close()


def test_put_get_delete(store: ProfileStore):
    assert store.get("alice") is None
    stored = store.put("alice", "likes sci-fi", "LaMP-2M", "team-a")
    assert (stored.user, stored.profile, stored.task, stored.owner) == ("alice", "likes sci-fi", "LaMP-2M", "team-a")
    assert abs(stored.updated - time.time()) < 60 and stored.version > 0
    assert store.get("alice") == stored
    assert store.put("bob", "likes westerns", None, "team-a").task is None
    assert store.delete("alice", "team-a") == stored
    assert store.get("alice") is None and store.delete("alice", "team-a") is None
    assert store.get("bob").profile == "likes westerns"


def test_versions_never_repeat_across_put_delete_put(store: ProfileStore):
    seen = [store.put("alice", "one", None, "a").version]
    seen.append(store.put("alice", "two", None, "a").version)
    seen.append(store.put("bob", "three", None, "a").version)
    assert store.delete("alice", "a").version == seen[1]
    seen.append(store.put("alice", "one", None, "a").version)  # the same text again: still a new version
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert store.versions(["alice", "bob", "carol"]) == {"alice": seen[3], "bob": seen[2]}
    assert store.versions([]) == {}


def test_another_owner_can_neither_replace_nor_delete_but_the_admin_can(store: ProfileStore):
    mine = store.put("alice", "mine", "LaMP-2M", "a")
    assert store.put("alice", "theirs", None, "b") is None
    assert store.delete("alice", "b") is None
    assert store.get("alice") == mine  # refused means unchanged, version included

    replaced = store.put("alice", "admin's", None, "root", admin=True)
    assert replaced.owner == "a" and replaced.profile == "admin's" and replaced.version > mine.version
    assert store.put("dave", "new", None, "root", admin=True).owner == "root"  # a new user: the admin's own
    assert store.delete("alice", "root", admin=True) == replaced
    assert store.get("alice") is None


def test_stored_rows_outlive_the_store_and_the_counter_goes_on(url):
    first = open_store(url)
    stored = first.put("alice", "likes sci-fi", None, "a")
    first.delete(first.put("bob", "x", None, "a").user, "a")
    first.close()
    again = open_store(url)
    try:
        assert again.get("alice") == stored
        assert again.put("bob", "x", None, "a").version > stored.version + 1  # bob's old version is not reused
    finally:
        again.close()


def test_concurrent_writers_never_share_a_version_and_one_owner_wins_a_new_user(url):
    """Two connections (two replicas) and several threads each: every put gets its own version, and when two
    owners race to create the same user exactly one of them gets it."""
    stores = [open_store(url), open_store(url)]
    versions, winners, lock = [], {}, threading.Lock()

    def writer(i: int) -> None:
        store, owner = stores[i % 2], f"owner{i}"
        for round_ in range(8):
            got = store.put(f"race{round_}", f"text {i}", None, owner)
            with lock:
                if got is not None:
                    versions.append(got.version)
                    winners.setdefault(round_, set()).add(owner)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(versions)) == len(versions) == 8
        assert all(len(owners) == 1 for owners in winners.values()) and len(winners) == 8
        for round_, (owner,) in winners.items():
            assert stores[0].get(f"race{round_}").owner == owner
    finally:
        for store in stores:
            store.close()


def test_sqlite_files_of_the_old_schema_are_migrated(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema before owners and versions
        db.execute("CREATE TABLE profiles (user TEXT PRIMARY KEY, profile TEXT NOT NULL, task TEXT, "
                   "updated REAL NOT NULL)")
        db.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?)",
                       [("alice", "likes sci-fi", "LaMP-2M", 1.0), ("bob", "likes westerns", None, 2.0)])
    db.close()
    store = open_store(path)
    try:
        alice, bob = store.get("alice"), store.get("bob")
        assert (alice.profile, alice.task, alice.updated, alice.owner) == ("likes sci-fi", "LaMP-2M", 1.0, "")
        assert bob.owner == "" and {alice.version, bob.version} == {1, 2}
        assert store.put("alice", "mine now", None, "a") is None  # old rows are the admin's alone
        assert store.put("alice", "updated", None, "root", admin=True).version == 3
        assert store.put("carol", "new", None, "a").version == 4
    finally:
        store.close()
    reopened = open_store(f"sqlite:///{path}")  # migrated once: opening again changes nothing
    try:
        assert reopened.versions(["alice", "bob", "carol"]) == {"alice": 3, "bob": bob.version, "carol": 4}
    finally:
        reopened.close()


def test_sqlite_file_is_private_and_urls_name_it(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "dir" / "profiles.db"
    store = open_store(f"sqlite:///{path}")  # sqlite:////absolute/path
    store.put("alice", "x", None, "a")
    store.close()
    assert path.stat().st_mode & 0o077 == 0
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///deep/dir/profiles.db")
    try:
        assert relative.get("alice").profile == "x"
    finally:
        relative.close()


def test_bad_and_unreachable_urls_fail_at_once_in_one_line_without_the_password():
    with pytest.raises(ValueError, match="unsupported scheme 'mysql'"):
        open_store("mysql://root:hunter2@db/profiles")
    with pytest.raises(ValueError, match="no file named"):
        open_store("sqlite:///")
    pytest.importorskip("psycopg")
    port = free_port()  # nothing listens there
    url = f"postgresql://p2p:hunter2@127.0.0.1:{port}/profiles?password=hunter2"
    started = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        open_store(url)
    message = str(caught.value)
    assert time.monotonic() - started <= CONNECT_TIMEOUT_S + 1
    assert "hunter2" not in message and "\n" not in message
    assert message.startswith(f"profiles database postgresql://p2p:***@127.0.0.1:{port}/profiles?password=***: ")
