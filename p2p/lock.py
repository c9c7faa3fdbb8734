"""One writer at a time per project: the CLI commands that write pipeline outputs hold the project's lock.

In a DVC project the lock is DVC's own repository lock, `.dvc/tmp/lock` (an flock on the file, as DVC takes it), so
`p2p prepare` and `dvc repro` exclude each other. DVC holds that lock while it plans and commits, but lets go of it
while a stage's command runs; then the stage's outputs stand in `.dvc/tmp/rwlock` with DVC's PID, so the CLI reads
that file too. Elsewhere the lock is a file at the project root (`p2p.paths.Paths.lock`). The second writer is
refused at once with one line saying who holds the project; it never waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from p2p.io import process_alive


class LockHeld(RuntimeError):
    """Another writer (a p2p command or `dvc repro`) holds the project; the message says who."""


@contextlib.contextmanager
def project_lock(lock: Path, rwlock: Path | None = None) -> Iterator[None]:
    """Hold `lock` (and check DVC's `rwlock` for a running stage) for the block, or raise LockHeld."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+", encoding="utf-8") as fh:  # closing the file lets go of the lock, even on a crash
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise LockHeld(f"{lock}: {who} is writing this project (`dvc repro` or another p2p command); run this "
                           f"again when it has finished") from None
        if rwlock is not None and (running := _running_dvc_stage(rwlock)):
            raise LockHeld(f"{rwlock}: `{running['cmd']}` (process {running['pid']}) is running a stage of this "
                           f"project; run this again when it has finished")
        fh.seek(0)
        fh.truncate()
        fh.write(f" {os.getpid()}\n")  # what DVC writes into its lock file: the holder's PID
        fh.flush()
        yield


def _running_dvc_stage(rwlock: Path) -> dict | None:
    """The first live `{pid, cmd}` in DVC's rwlock file (read under DVC's guard of it), leaving out this process's
    ancestors: a p2p command that a `dvc repro` stage runs is that stage's writer, not a second one."""
    if not rwlock.is_file():
        return None
    with open(rwlock.with_name(rwlock.name + ".lock"), "a+") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # DVC holds it only while it rewrites the file
        try:
            entries = json.loads(rwlock.read_text(encoding="utf-8") or "{}")
        except json.JSONDecodeError:
            raise LockHeld(f"{rwlock}: DVC's lock file is not valid JSON; if no `dvc` runs, delete it") from None
    infos = [*entries.get("write", {}).values(), *(i for group in entries.get("read", {}).values() for i in group)]
    ancestors = _ancestors()
    return next((info for info in infos if info["pid"] not in ancestors and process_alive(info["pid"])), None)


def _ancestors() -> set[int]:
    """This process and its ancestors' PIDs (through /proc; only the parent where there is none)."""
    pids, pid = {os.getpid()}, os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after `(comm) state` is the parent's PID
    return pids
