"""Reading input with precise errors, and writing output atomically.

Every loader in the project reads through these helpers so that bad input always produces one line that names the
file, the record and the field, and every writer goes through a temp file + rename so a crash never leaves a
partial output behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import stat
import tempfile
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
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


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


def write_dir(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Build a directory with `fill(tmp)` in a temporary sibling, then swap it in for `path` (replacing it)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


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
