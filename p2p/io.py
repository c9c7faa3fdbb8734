"""Reading input with precise errors, and writing output atomically.

Every loader in the project reads through these helpers so that bad input always produces one line that names the
file, the record and the field, and every writer goes through a temp file + rename so a crash never leaves a
partial output behind. Directories are replaced whole, and only when they hold nothing someone else wrote;
temporaries carry their writer's pid, so the next writer sweeps those a killed one left; outputs get the modes the
umask allows; a manifest tells a directory's files of one generation from another's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad input. The message is one line: `file: record R: field F: what is wrong`."""

    def __init__(self, path: str | os.PathLike, message: str, *, record: Any = None, field: str | None = None):
        self.path, self.record, self.field, self.reason = str(path), record, field, message
        parts = [self.path]
        if record is not None:
            parts.append(f"record {record}")
        if field is not None:
            parts.append(f"field '{field}'")
        super().__init__(": ".join(parts + [message]).replace("\n", " "))


def read_text(path: str | os.PathLike, *, max_bytes: int | None = None) -> str:
    """Read a UTF-8 text file (of at most `max_bytes`); non-UTF-8 bytes become an InputError with the line and byte
    offset, and anything but a regular file one saying what is there instead."""
    path = Path(path)
    problem = not_a_file(path)
    if problem:
        raise InputError(path, problem)
    if max_bytes is not None and (size := path.stat().st_size) > max_bytes:
        raise InputError(path, f"{size:,} bytes, over the limit of {max_bytes:,}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(path, f"not UTF-8 text (bad byte 0x{data[err.start]:02x} at byte {err.start})",
                         record=f"line {line}") from None


def read_json(path: str | os.PathLike) -> Any:
    """Parse a whole JSON file; truncated or malformed JSON names the line and column (see `parse_json`)."""
    return parse_json(read_text(path), path)


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line number, object) for each non-blank line of a JSON Lines file."""
    text = read_text(path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, parse_json(line, path, lineno)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for `path`; it replaces `path` only if the block finishes without error.

    The temporary file has `path`'s name (writers that go by the suffix see the right one) inside a temporary
    directory beside `path`, which also holds the temporaries of writers that make their own (safetensors does), so
    a crash leaves one directory, which the next writer there sweeps (`_sweep_temporaries`). The file gets the mode
    the umask allows, as `open` gives.
    """
    path = Path(path)
    tmp_dir = _temp_dir_beside(path)
    tmp = tmp_dir / path.name
    try:
        tmp.touch()
        yield tmp
        tmp.chmod(_file_mode(tmp_dir))  # a writer that replaced the file (safetensors does) leaves it 0600
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write one JSON object per line atomically; returns the number of rows."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_dir(path: str | os.PathLike, fill: Callable[[Path], None], *, ours: Callable[[Path], bool],
              force: bool = False) -> Path:
    """Build a directory with `fill(tmp)` in a temporary sibling, then swap it in for `path` as a whole.

    An existing `path` is replaced only if it holds nothing but entries `ours` accepts (what this writer writes) or
    `force` is set (`check_replaceable`), checked before `fill` and again before the swap. On Linux the swap is one
    atomic exchange, so a reader or a crash sees the old directory or the new one, whole.
    """
    out = Path(path)
    check_replaceable(out, ours, force=force)
    tmp = _temp_dir_beside(out)
    try:
        fill(tmp)
        _settle_modes(tmp)
        check_replaceable(out, ours, force=force)  # nothing of someone else's appeared while `fill` ran
        if out.exists() or out.is_symlink():
            _exchange(tmp, out)  # tmp now holds the old directory, removed below
        else:
            os.replace(tmp, out)
    finally:
        _remove(tmp)
    return out


def check_replaceable(path: str | os.PathLike, ours: Callable[[Path], bool], *, force: bool = False) -> None:
    """Refuse to replace a directory that holds anything this writer did not write: a tool never deletes a user's files.

    Nothing there, an empty directory, or one whose every entry `ours` accepts may be replaced; with `force`, any
    directory. A file where a directory should go is always refused.
    """
    out = Path(path)
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise InputError(out, "exists and is not a directory; remove it or choose another path")
    foreign = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in out.iterdir() if not ours(entry))
    if foreign and not force:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(out, f"holds files this command did not write ({shown}), so nothing was changed; choose an "
                              f"empty or new directory, or pass --force to replace it as a whole")


# --- temporaries: named for their writer's pid, swept once that writer is gone ------------------------------------

_TEMP = re.compile(r"^\..+\.p2p-(\d+)-[0-9a-f]{8}\.tmp$")


def _sweep_temporaries(directory: Path) -> None:
    """Remove the temporaries that writers no longer running (killed, crashed) left in `directory`.

    A temporary's name carries its writer's pid, so a live writer's (in this process or another) is left alone.
    Every write into a directory starts with this, so a crash's leftovers live only until the next writer there.
    """
    for entry in directory.iterdir():
        match = _TEMP.match(entry.name)
        if match and not process_alive(int(match.group(1))):
            _remove(entry)


def process_alive(pid: int) -> bool:
    """Whether a process of that pid runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _temp_dir_beside(path: Path) -> Path:
    """A new empty directory beside `path`, named for this process; `mkdir` gives it the mode the umask allows."""
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_temporaries(parent)
    while True:
        tmp = parent / f".{path.name}.p2p-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            tmp.mkdir(mode=0o777)
            return tmp
        except FileExistsError:
            continue


def _file_mode(made_dir: Path) -> int:
    """The mode `open` gives a new file under the current umask, read off a directory `mkdir(mode=0o777)` made."""
    return made_dir.stat().st_mode & 0o666


def _settle_modes(tree: Path) -> None:
    """Give everything under `tree` the modes the umask allows (some writers, e.g. safetensors, make files 0600)."""
    dir_mode = tree.stat().st_mode & 0o777
    for root, dirs, files in os.walk(tree):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(root, name), dir_mode & 0o666)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(new: Path, old: Path) -> None:
    """Swap two directory entries: in one step where the system can (Linux renameat2), else in three renames.

    Only directories `check_replaceable` let through are swapped; where three renames are needed, a crash between
    them leaves the old one under a temporary name, which the next writer sweeps: ours, never a user's file, is lost.
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(old), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # only "cannot exchange here" falls back
            raise OSError(code, os.strerror(code), str(old))
    aside = old.with_name(f".{old.name}.p2p-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    os.rename(old, aside)  # the old one is kept until the new one is in place
    os.rename(new, old)
    os.rename(aside, new)


# --- manifests: which files belong to one generation of a directory -----------------------------------------------

MANIFEST = "manifest.json"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | os.PathLike) -> None:
    """Write `directory/manifest.json` (last): the sha256 of each of its files, one generation's fingerprint."""
    directory = Path(directory)
    files = {p.name: file_sha256(p) for p in sorted(directory.iterdir())
             if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
    write_json(directory / MANIFEST, {"files": files})


def check_manifest(directory: str | os.PathLike) -> None:
    """Where `directory` holds a manifest.json, its files must be the ones listed, with the listed sha256.

    Files of two generations (a copy by hand, a run of an older version interrupted halfway) then fail with one
    line naming the file, where they would otherwise be read together. Hidden files (temporaries) are not data.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        return
    manifest = read_json(path)
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(listed, dict):
        raise InputError(path, "missing or not an object of file name -> sha256", field="files")
    for name, digest in listed.items():
        file = directory / name
        if not file.is_file():
            raise InputError(file, f"missing, though {MANIFEST} lists it; write the whole directory again")
        if file_sha256(file) != digest:
            raise InputError(file, f"does not belong with the other files here: its sha256 is not the one {MANIFEST} "
                                   f"lists (files of two generations?); write the whole directory again")
    for file in sorted(directory.iterdir()):
        if file.is_file() and file.name != MANIFEST and not file.name.startswith(".") and file.name not in listed:
            raise InputError(file, f"not listed in {MANIFEST}, so not part of this directory's generation; remove it "
                                   f"or write the whole directory again")


# --- read-side checks shared by the readers above ---------------------------------------------------------------------


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why `path` is not a regular file to read (None when it is): missing, a broken or looping symbolic link, a
    directory, a FIFO, ... Reading a FIFO would block forever, so every reader asks first."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
        return "file not found"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        if err.errno == errno.ENOTDIR:
            return "not found (a parent of it is a file, not a directory)"
        raise
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    return f"is {kind}, not a file"


def parse_json(text: str, path: str | os.PathLike, line: int | None = None) -> Any:
    """Parse strict JSON from `path` (`line`: its line in a JSON Lines file). Malformed text names the line and
    column; nesting past Python's recursion limit and the NaN/Infinity that Python's json accepts (no other JSON
    reader does) are InputErrors too, the latter naming the record and field where they stand."""
    constants: list[str] = []

    def constant(name: str) -> float:
        constants.append(name)
        return float(name)

    record = None if line is None else f"line {line}"
    try:
        obj = json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno if line is None else line}"
        raise InputError(path, f"malformed JSON ({err.msg}, column {err.colno})", record=where) from None
    except RecursionError:
        raise InputError(path, "JSON nested too deeply to read (past Python's recursion limit)",
                         record=record) from None
    if constants:
        at = _non_finite_at(obj) or None
        if line is None and at and at.startswith("["):  # a JSON array of records: name the record by its index
            index, _, rest = at[1:].partition("]")
            record, at = f"item {index}", rest.lstrip(".") or None
        raise InputError(path, f"{constants[0]} is not valid JSON (numbers must be finite)", record=record, field=at)
    return obj


def _non_finite_at(obj: Any, at: str = "") -> str | None:
    """The path (`[3].profile[0].score`) of the first NaN or infinity in a parsed JSON value ('' for the value)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return at
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in children:
        found = _non_finite_at(value, f"{at}[{key}]" if isinstance(key, int) else f"{at}.{key}" if at else key)
        if found is not None:
            return found
    return None
