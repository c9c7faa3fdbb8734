"""A real OpenAI-style chat-completions server on 127.0.0.1 for tests, scripted to fail in chosen ways.

    def script(n, body):                      # n: 0-based number of the request, body: its parsed JSON
        return Reply(500) if n < 2 else completion("ok")
    with ChatServer(script) as server:
        OpenAIBackend(server.url, "m").generate(...)
        server.requests                       # [Seen(path, headers, body), ...] in arrival order

Without a script every request is answered with "echo: <last message's content>".
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from loopback import LoopbackServer


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0  #: seconds to wait before answering (longer than the client's timeout: a stalled server)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]  #: names lower-cased
    body: dict[str, Any]


def completion(text: str, prompt_tokens: int | None = 3, completion_tokens: int | None = 2,
               stall: float = 0.0) -> Reply:
    """A successful chat completion; token counts None leave `usage` out."""
    body: dict[str, Any] = {"object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
    if prompt_tokens is not None and completion_tokens is not None:
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
    return Reply(body=body, stall=stall)


def echo(n: int, body: dict[str, Any]) -> Reply:
    return completion(f"echo: {body['messages'][-1]['content']}")


Script = Callable[[int, dict[str, Any]], Reply]


class ChatServer(LoopbackServer):
    def __init__(self, script: Script = echo):
        self.script = script
        self.requests: list[Seen] = []
        self.stopping = threading.Event()  # ends stalls early when the test is over
        self._lock = threading.Lock()
        super().__init__(_Handler)

    @property
    def url(self) -> str:
        """The API root, as a client's base_url."""
        return self.address + "/v1"

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        super().__exit__(*exc)

    def _answer(self, seen: Seen) -> Reply:
        with self._lock:
            self.requests.append(seen)
            return self.script(len(self.requests) - 1, seen.body)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        chat: ChatServer = self.server.owner  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {key.lower(): value for key, value in self.headers.items()}
        reply = chat._answer(Seen(self.path, headers, json.loads(raw or b"{}")))
        if reply.stall and chat.stopping.wait(reply.stall):
            return
        body = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        data = body.encode()
        try:
            self.send_response(reply.status)
            content_type = "text/html" if isinstance(reply.body, str) else "application/json"
            for key, value in {"Content-Type": content_type, **reply.headers, "Content-Length": str(len(data))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up waiting (a stall longer than its timeout)
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass
