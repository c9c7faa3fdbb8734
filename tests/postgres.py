"""A throwaway PostgreSQL server for tests: Debian's binaries (scripts/test_deps.sh installs them), a data directory in
a temp dir, a free loopback port, a password (so URLs carry one, as deployments' do), stopped and removed at the end.

initdb and postgres refuse to run as root: as root (CI, this container) they run as the `postgres` system user,
which owns the temp dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

PASSWORD = "test-secret-pw"


def postgres_bin() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    port: int
    names: Iterator[int]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database on this server; its URL."""
        import psycopg

        name = f"test_{next(self.names)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def postgres_server(port: int) -> Iterator[PostgresServer]:
    """A running server on 127.0.0.1:`port` (user `postgres`, password PASSWORD) until the block ends.
    Raises LookupError where there are no PostgreSQL binaries."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise LookupError("no PostgreSQL binaries (initdb, pg_ctl): run scripts/test_deps.sh or apt-get install "
                          "postgresql")
    root = Path(tempfile.mkdtemp(prefix="p2p-pg-"))  # not under pytest's tmp dirs: those are root's alone
    as_owner = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"

    def run(*command: str) -> None:
        done = subprocess.run([*as_owner, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log_text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}{log_text}")

    try:
        (root / "pw").write_text(PASSWORD)
        if as_owner:
            shutil.chown(root / "pw", "postgres", "postgres")
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "scram-sha-256",
            f"--pwfile={root / 'pw'}", "-E", "UTF8", "--no-sync")
        with open(data / "postgresql.conf", "a") as conf:  # loopback only, its own socket dir; speed over safety
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start")
        try:
            yield PostgresServer(port, count())
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
