"""The API's listening socket (connections accepted one at a time, at most a cap of them open) and the HTTP
server's own log.

asyncio's own ``create_server`` accepts up to its backlog of connections at once and keeps each one's file
descriptor until a later loop iteration, so a burst of connections can exhaust the daemon's file limit (and
fail its results write with EMFILE) whatever the protocol does with them. Here each accepted connection is
either handed to aiohttp (counted until it is lost) or, at the cap, answered 503 and closed before the next
accept: the daemon never holds more than the cap plus one connection's descriptor. aiohttp's keep-alive
timeout (``api.request_timeout_s``, see :func:`opendt.api.app.serve_api`) reaps idle and half-open ones.

aiohttp logs every request it cannot parse (a line too long, a bad header: a 400 to the client) with a
traceback; :class:`ServerLog` makes that one structlog line, at most one a second (with how many were not
logged), so a hostile client cannot flood the log. Errors of our own handlers keep their traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import resource
import socket
import sys
import time
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = structlog.get_logger(component="api")

_BUSY_BODY = b'{"error": "too many open connections (api.max_connections); try again", "field": null}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
"""The whole answer to a connection over the cap."""


def connection_limit(configured: int) -> int:
    """``api.max_connections``, but at most a quarter of the file limit: the daemon's own files, sockets
    and pipes (results, Kafka, workers) keep the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return configured if soft == resource.RLIM_INFINITY else max(1, min(configured, soft // 4))


class _Counted(asyncio.Protocol):
    """One of aiohttp's handlers, holding a slot of the cap until its connection is lost."""

    def __init__(self, listener: CappedListener, handler: asyncio.Protocol) -> None:
        self._listener = listener
        self._handler = handler
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.open -= 1
        self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


class RateLimited:
    """At most one log line every ``every_s`` seconds; ``skipped`` counts the lines not written since."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.skipped = 0
        self._at = -math.inf

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._at < self.every_s:
            self.skipped += 1
            return False
        self._at = now
        return True

    def take_skipped(self) -> int:
        n, self.skipped = self.skipped, 0
        return n


class ServerLog(logging.Logger):
    """The logger given to aiohttp's request handlers: a request aiohttp cannot parse is one
    ``api_bad_request`` warning (rate-limited, no traceback); anything else keeps its traceback."""

    def __init__(self) -> None:
        super().__init__("aiohttp.server", logging.DEBUG)
        self._bad = RateLimited()

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            if self._bad.due():
                first = str(exc.message).splitlines()[0][:120] if exc.message else ""
                log.warning(
                    "api_bad_request", status=exc.code, error=first, not_logged=self._bad.take_skipped()
                )
            return
        log.error("api_request_error", message=str(msg)[:200], exc_info=exc)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """aiohttp's debug lines (premature disconnections, non-HTTP traffic) are not kept."""


def _same(protocol: _Counted) -> _Counted:
    return protocol


class CappedListener:
    """Accepts on ``sock`` (listening, non-blocking) for aiohttp's low-level ``server``: at most ``limit``
    connections open; one more is answered :data:`BUSY` and closed at once (counted in ``refused``, logged at
    most every 10 s)."""

    def __init__(self, server: web.Server, sock: socket.socket, limit: int) -> None:
        self.server = server
        self.sock = sock
        self.limit = limit
        self.open = 0
        self.refused = 0
        self._refusals = RateLimited(10.0)

    async def run(self) -> None:
        """Accept until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:  # EMFILE and the like: the process is out of something; try again soon
                log.warning("api_accept_failed", error=str(e))
                await asyncio.sleep(1)
                continue
            if self.open >= self.limit:
                self._refuse(conn)
                continue
            self.open += 1
            protocol = _Counted(self, self.server())
            try:
                await loop.connect_accepted_socket(functools.partial(_same, protocol), conn)
            except OSError:
                if not protocol.made:
                    self.open -= 1
                conn.close()

    def _refuse(self, conn: socket.socket) -> None:
        self.refused += 1
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(BUSY)  # a fresh socket's send buffer takes it whole
        conn.close()
        if self._refusals.due():
            log.warning("api_connection_refused", open=self.open, refused=self.refused)


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A non-blocking TCP socket listening on the first address of ``host`` (port 0 = a free one)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.create_server(address[:2], family=family, backlog=backlog)
    sock.setblocking(False)
    return sock
