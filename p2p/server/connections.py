"""Connections the server will hold: a cap on how many, and a deadline for each request's headers.

uvicorn times out idle keep-alive connections but not a client that opens a socket and never finishes its request
line and headers, and it has no cap on open connections (`limit_concurrency` answers plain text). This protocol,
uvicorn's own h11 one with two additions, closes a connection whose request head is not complete within
`header_timeout` seconds of its opening (or of its previous answer), with a 408, and answers a connection beyond
`max_connections` with a 503 at once; both are OpenAI error objects. The body's own deadline is the app's
(`Settings.body_timeout`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def _response(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "server_error" if status >= 500 else
                                 "invalid_request_error", "param": None, "code": code}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n" + ("retry-after: 1\r\n" if status == 503 else "") + "\r\n")
    return head.encode() + body


def guarded_protocol(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a request-head deadline and a connection cap (pass it as `http=`)."""

    class Guarded(H11Protocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(_response(503, "Service Unavailable", f"more than {max_connections} connections "
                                          f"are open; retry after a second", "too_many_connections"))
                transport.close()
                return
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(header_timeout, self._late)

        def _late(self) -> None:
            """No complete request head since the connection opened or its last answer: let it go."""
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(_response(408, "Request Timeout", f"no complete request headers within "
                                               f"{header_timeout:g} s", "request_timeout"))
                self.transport.close()

    return Guarded
