"""Downloading upstream files: resumable, verified, atomic, and quick to say what to do when there is no network.

`download` streams into `<dest>.part` and renames it to `dest` only once the bytes are complete, look like the
expected kind of file (an HTML page where JSON belongs is the classic wrong-URL answer of the LaMP server) and
match the known sha256; a JSON file without a known sha256 (LaMP's) must parse whole, since a server that sends no
Content-Length ends a cut transfer as if it were complete. A dropped connection is retried a few times with a
short backoff, resuming the `.part` with an HTTP Range request; a server that ignores Range (answers 200) restarts
the file from byte 0. A host that cannot be reached at all (no DNS, connection refused, connect timeout) is not
retried: the error says at once which URL to fetch by hand and the exact path to save it under. `fetch` does this
for every file of a catalogued dataset. Only the standard library's urllib is used, so the downloader has no
dependency to install.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from p2p.data.catalog import CATALOG, RemoteFile, dataset_files, keeping_steps
from p2p.io import InputError, file_sha256, read_json, read_jsonl

CHUNK_BYTES = 1 << 16
#: Environment variable naming a mirror that replaces the scheme and host of every upstream URL (see mirror_url).
MIRROR_ENV = "P2P_MIRROR"
_TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv")


class DownloadError(RuntimeError):
    """A download that failed for good; the message says what to fetch and where to put it."""

    def __init__(self, message: str, *, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


class _Transient(Exception):
    """A failure worth retrying (connection dropped mid-file, 5xx, ...)."""


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, timeout: float = 10.0,
             retries: int = 3, backoff: float = 0.5) -> Path:
    """Download `url` to `dest` (see the module docstring); returns `dest`."""
    dest = Path(dest).absolute()
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _stream_to_part(url, part, dest, timeout)
            _check_content(part, url, dest)
            if sha256 is None and (problem := _not_whole_json(part, dest.suffix)):
                part.unlink()
                raise _Transient(f"the file received does not parse ({problem}): cut short?")
            break
        except _Transient as err:
            if attempt == retries:
                raise DownloadError(f"{url}: {err} ({retries} tries). A partial file {part}, if any, is kept "
                                    f"and the next run resumes it; {_by_hand(url, dest)}") from None
            time.sleep(backoff * 2 ** (attempt - 1))
    if sha256 is not None:
        digest = file_sha256(part)
        if digest != sha256.lower():
            part.unlink()
            raise DownloadError(f"{url}: sha256 {digest} does not match the expected {sha256}, so nothing was saved "
                                f"to {dest} (the upstream file changed, or the transfer was corrupted: retry, or "
                                f"fetch it by hand and check it)")
    os.replace(part, dest)
    return dest


def mirror_url(url: str, base_url: str | None) -> str:
    """Replace the scheme and host of `url` by `base_url`, keeping the path (and query).

    `https://ciir.cs.umass.edu/downloads/LaMP/LaMP_1/train/train_questions.json` with base
    `http://mirror.example/p2p` becomes `http://mirror.example/p2p/downloads/LaMP/LaMP_1/train/train_questions.json`;
    a mirror therefore serves every upstream file under its original URL path, whatever host it came from.
    """
    if not base_url:
        return url
    base = urlsplit(base_url)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise ValueError(f"mirror {base_url!r} is not an http(s) URL such as http://host:port/prefix")
    parts = urlsplit(url)
    return base_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def fetch(name: str, raw_dir: str | os.PathLike, *, base_url: str | None = None, tasks: Sequence[str] | None = None,
          splits: Sequence[str] | None = None, timeout: float = 10.0) -> list[Path]:
    """Download the files of catalogued dataset `name` under `raw_dir`; returns their local paths.

    Only missing files are fetched: files already present with the pinned sha256 (or, where upstream publishes no
    checksum, that parse as the JSON they should be) are kept as they are, and nothing present is ever deleted, so
    files a user saved by hand survive a failed fetch. `base_url`, else the environment variable P2P_MIRROR,
    replaces every URL's scheme and host (`mirror_url`). `tasks` and `splits` limit a per-task, per-split dataset
    (LaMP) to those. Datasets that live only on Hugging Face raise DownloadError with the steps to get them.
    """
    files = dataset_files(name, tasks, splits)
    instructions = CATALOG[name].instructions
    if instructions:
        raise DownloadError(f"{instructions.format(raw_dir=Path(raw_dir).absolute())}\n"
                            f"{keeping_steps(name, Path(raw_dir))}")
    base = base_url if base_url is not None else os.environ.get(MIRROR_ENV)
    paths: list[Path] = []
    for remote in files:
        dest = (Path(raw_dir) / remote.path).absolute()
        if not _present(dest, remote):
            try:
                download(mirror_url(remote.url, base), dest, sha256=remote.sha256, timeout=timeout)
            except DownloadError as err:
                if err.unreachable:
                    raise DownloadError(f"{err}\n{_missing_list(files, raw_dir, base)}\n"
                                        f"{keeping_steps(name, Path(raw_dir))}", unreachable=True) from None
                raise
        paths.append(dest)
    return paths


def _present(dest: Path, remote: RemoteFile) -> bool:
    if not dest.is_file():
        return False
    if remote.sha256 is not None:
        return file_sha256(dest) == remote.sha256
    return _not_whole_json(dest, dest.suffix) is None


def _not_whole_json(path: Path, suffix: str) -> str | None:
    """Why a .json / .jsonl file does not parse to its end (a cut transfer), or None when it does (or is no JSON)."""
    try:
        if suffix.lower() == ".json":
            read_json(path)
        elif suffix.lower() == ".jsonl":
            for _ in read_jsonl(path):
                pass
    except InputError as err:
        return str(err).removeprefix(f"{path}: ")
    return None


def _missing_list(files: Sequence[RemoteFile], raw_dir: str | os.PathLike, base: str | None) -> str:
    lines = ["Files still missing (download each URL and save it at the path below it):"]
    for remote in files:
        dest = (Path(raw_dir) / remote.path).absolute()
        if not _present(dest, remote):
            lines.append(f"  {mirror_url(remote.url, base)}\n    -> {dest}")
    return "\n".join(lines)


def _by_hand(url: str, dest: Path) -> str:
    return f"to do it by hand, download {url} and save it as {dest}"


def _stream_to_part(url: str, part: Path, dest: Path, timeout: float) -> None:
    """One attempt: continue `part` from its current size (or restart it), raising _Transient on a dropped transfer."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "p2p-pipeline (urllib)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            if err.headers.get("Content-Range") == f"bytes */{offset}":
                return  # the part is already whole (an earlier run stopped just before the rename)
            part.unlink()
            raise _Transient("the server refused to resume the partial file; restarting it") from None
        if err.code >= 500 or err.code == 429:
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}; {_by_hand(url, dest)}") from None
    except urllib.error.URLError as err:
        raise DownloadError(f"cannot reach {url} ({err.reason}): no network? {_by_hand(url, dest)}",
                            unreachable=True) from None
    except (OSError, http.client.HTTPException) as err:
        raise _Transient(f"no answer ({str(err) or type(err).__name__})") from None
    with response:
        part.parent.mkdir(parents=True, exist_ok=True)
        if response.status == 206:
            if _range_start(response.headers.get("Content-Range")) != offset:
                part.unlink()
                raise _Transient("the server resumed at another byte than asked; restarting the file")
            mode = "ab"
        else:  # 200: the server ignored the Range header and sends the whole file
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None and length.isdigit() else None
        received = offset
        with part.open(mode) as fh, tqdm(total=expected, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=dest.name, disable=None, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as err:
                    reason = str(err) or type(err).__name__
                    raise _Transient(f"connection lost after {received:,} bytes ({reason})") from None
                if not chunk:
                    break
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received < expected:
        raise _Transient(f"connection closed after {received:,} of {expected:,} bytes")


def _range_start(content_range: str | None) -> int | None:
    """The first byte of `Content-Range: bytes START-END/TOTAL`."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    start = content_range[len("bytes "):].split("-", 1)[0]
    return int(start) if start.isdigit() else None


def _check_content(part: Path, url: str, dest: Path) -> None:
    """Reject an HTML page saved under a data file's name (a wrong URL that still answers 200)."""
    suffix = dest.suffix.lower()
    if suffix not in _TEXT_SUFFIXES:
        return
    with part.open("rb") as fh:
        head = fh.read(1024).lstrip()
    is_html = head.startswith(b"<")
    not_json = suffix in (".json", ".jsonl") and not head.startswith((b"[", b"{"))
    if is_html or not_json:
        part.unlink()
        what = "an HTML page" if is_html else f"something that is not JSON (starts {head[:20]!r})"
        raise DownloadError(f"{url} answered with {what}, not the {suffix[1:].upper()} file, so nothing was saved "
                            f"to {dest}. A wrong URL? (LaMP movie tagging lives under LaMP_2/new/, plain LaMP_2/ is "
                            f"news categorisation.) {_by_hand(url, dest)}")
