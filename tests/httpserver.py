"""A real HTTP server on 127.0.0.1 for tests: serves a directory, honours Range, and misbehaves on request.

    with MirrorServer(root) as server:
        server.drop_once("a/file.json", after_bytes=1000)  # next GET sends 1000 bytes, then hangs up
        server.cut_once("a/file.json", after_bytes=1000)   # same, without a Content-Length: it looks whole
        server.html_paths.add("a/wrong.json")               # answer 200 with an HTML page
        server.ignore_range = True                          # always send the whole file with 200
        urllib.request.urlopen(server.url + "/a/file.json")
        server.requests  # [(path, Range header or None), ...]

Paths are URL paths relative to the root, without the leading slash.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

from loopback import LoopbackServer

HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Not here</title></head><body>Page not found</body></html>\n"


class MirrorServer(LoopbackServer):
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.requests: list[tuple[str, str | None]] = []
        self.html_paths: set[str] = set()
        self.ignore_range = False
        self._drops: dict[str, int] = {}
        self._cuts: dict[str, int] = {}
        self._lock = threading.Lock()
        super().__init__(_Handler)

    @property
    def url(self) -> str:
        return self.address

    def drop_once(self, path: str, after_bytes: int) -> None:
        """The next GET of `path` announces the full length but sends only `after_bytes`, then closes."""
        with self._lock:
            self._drops[path] = after_bytes

    def cut_once(self, path: str, after_bytes: int) -> None:
        """The next GET of `path` sends only `after_bytes` with no Content-Length, then closes: a cut the client
        cannot see from the headers (HTTP/1.0 ends a body without a length by closing the connection)."""
        with self._lock:
            self._cuts[path] = after_bytes

    def _record(self, path: str, range_header: str | None) -> tuple[int | None, int | None]:
        """Log the request; returns the drop and the cut planned for it."""
        with self._lock:
            self.requests.append((path, range_header))
            return self._drops.pop(path, None), self._cuts.pop(path, None)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        mirror: MirrorServer = self.server.owner  # type: ignore[attr-defined]
        path = unquote(urlsplit(self.path).path).lstrip("/")
        range_header = self.headers.get("Range")
        drop, cut = mirror._record(path, range_header)
        if path in mirror.html_paths:
            self._send(200, HTML_PAGE, {"Content-Type": "text/html; charset=utf-8"})
            return
        file = (mirror.root / path).resolve()
        if not file.is_relative_to(mirror.root) or not file.is_file():
            self._send(404, b"not found\n", {"Content-Type": "text/plain"})
            return
        data = file.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if cut is not None:
            self._send(200, data[:cut], {}, length=False)
            return
        if match is None or mirror.ignore_range:
            self._send(200, data, {"Accept-Ranges": "bytes"}, drop)
            return
        start = int(match[1])
        end = min(int(match[2]), len(data) - 1) if match[2] else len(data) - 1
        if start >= len(data):
            self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        self._send(206, data[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}"}, drop)

    def _send(self, status: int, body: bytes, headers: dict[str, str], drop: int | None = None,
              length: bool = True) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/octet-stream", **headers,
                   **({"Content-Length": str(len(body))} if length else {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body if drop is None else body[:drop])
        self.wfile.flush()
        if drop is not None or not length:
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass
