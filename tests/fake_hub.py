"""A loopback stand-in for the Hugging Face hub (`HF_ENDPOINT`): the two routes `snapshot_download` uses, a repo's
file list and each file's bytes, served from a local directory as one model repository."""

from __future__ import annotations

import hashlib
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from loopback import LoopbackServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _route(self, body: bool) -> None:
        hub: FakeHub = self.server.owner  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        hub.requests.append(f"{self.command} {path}")
        files = sorted(p.relative_to(hub.root).as_posix() for p in hub.root.rglob("*") if p.is_file())
        if path.startswith(f"/api/models/{hub.repo}/tree/"):  # the file list (one page)
            listing = [{"type": "file", "path": f, "size": (hub.root / f).stat().st_size,
                        "oid": hashlib.sha1((hub.root / f).read_bytes()).hexdigest()} for f in files]
            return self._send(200, json.dumps(listing).encode(), "application/json", body)
        if path.startswith(f"/api/models/{hub.repo}"):  # the repository at a revision
            data = json.dumps({"id": hub.repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}).encode()
            return self._send(200, data, "application/json", body)
        prefix = f"/{hub.repo}/resolve/"
        if path.startswith(prefix):
            name = path[len(prefix):].split("/", 1)[1]
            file = hub.root / name
            if file.is_file():
                data = file.read_bytes()
                return self._send(200, data, "application/octet-stream", body,
                                  {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})
        self._send(404, b'{"error": "not found"}', "application/json", body)

    def _send(self, status: int, data: bytes, kind: str, body: bool, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)


class FakeHub(LoopbackServer):
    """Serves the files under `root` as model repository `repo`; `requests` records what was asked."""

    def __init__(self, repo: str, root: Path):
        super().__init__(_Hub)
        self.repo, self.root, self.requests = repo, Path(root), []
