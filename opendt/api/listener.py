"""The API's listening socket (connections accepted one at a time, at most a cap of them open, and at most
a per-client cap from one address) and the HTTP server's own log.

asyncio's own ``create_server`` accepts up to its backlog of connections at once and keeps each one's file
descriptor until a later loop iteration, so a burst of connections can exhaust the daemon's file limit (and
fail its results write with EMFILE) whatever the protocol does with them. Here each accepted connection is
either handed to aiohttp (counted until it is lost) or, at the cap, answered 503 and closed before the next
accept: the daemon never holds more than the cap plus one connection's descriptor. aiohttp's keep-alive
timeout (``api.request_timeout_s``, see :func:`opendt.api.app.serve_api`) reaps idle and half-open ones.

``/health`` has its own budget: a connection over either cap goes, while that lane has room
(:data:`HEALTH_LANE` connections, :data:`HEALTH_LANE_PER_CLIENT` per address), to a server that answers
``/health`` only (and 503 to anything else), closing after one answer. So idle connections that fill the cap
(128 of them, or one client's 32) do not make a liveness probe see 503 and restart a healthy twin.

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

BUSY_BODY = (
    b'{"error": "too many open connections (api.max_connections, api.max_connections_per_client); try again",'
    b' "field": null}'
)
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(BUSY_BODY), BUSY_BODY)
)
"""The whole answer to a connection over the cap."""


def connection_limit(configured: int) -> int:
    """``api.max_connections``, but at most a quarter of the file limit: the daemon's own files, sockets
    and pipes (results, Kafka, workers) keep the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return configured if soft == resource.RLIM_INFINITY else max(1, min(configured, soft // 4))


HEALTH_LANE = 8
"""Connections the ``/health`` lane serves at once (beyond the caps)."""
HEALTH_LANE_PER_CLIENT = 2
"""Of those, from one client address."""


class _Lane:
    """Open connections of one lane: in all, and per client address (an address is forgotten at zero)."""

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.open = 0
        self.by_client: dict[str, int] = {}

    def has_room(self, client: str) -> bool:
        return self.open < self.limit and self.by_client.get(client, 0) < self.per_client

    def take(self, client: str) -> None:
        self.open += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1

    def release(self, client: str) -> None:
        self.open -= 1
        left = self.by_client.get(client, 1) - 1
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)


class _Counted(asyncio.Protocol):
    """One of aiohttp's handlers, holding a slot of its lane until its connection is lost."""

    def __init__(self, lane: _Lane, client: str, handler: asyncio.Protocol) -> None:
        self._lane = lane
        self._client = client
        self._handler = handler
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane.release(self._client)
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
    connections open, ``per_client`` of them from one address; one more goes to the ``health`` server while
    its lane has room, else it is answered :data:`BUSY` and closed at once (counted in ``refused``, logged at
    most every 10 s)."""

    def __init__(
        self,
        server: web.Server,
        sock: socket.socket,
        limit: int,
        *,
        per_client: int | None = None,
        health: web.Server | None = None,
    ) -> None:
        self.server = server
        self.sock = sock
        self.limit = limit
        self.per_client = min(limit, per_client or limit)
        self.main = _Lane(limit, self.per_client)
        self.health = health
        self.health_lane = _Lane(HEALTH_LANE, HEALTH_LANE_PER_CLIENT)
        self.refused = 0
        self._refusals = RateLimited(10.0)

    @property
    def open(self) -> int:
        return self.main.open

    async def run(self) -> None:
        """Accept until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except OSError as e:  # EMFILE and the like: the process is out of something; try again soon
                log.warning("api_accept_failed", error=str(e))
                await asyncio.sleep(1)
                continue
            client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            if self.main.has_room(client):
                lane, server = self.main, self.server
            elif self.health is not None and self.health_lane.has_room(client):
                lane, server = self.health_lane, self.health
            else:
                self._refuse(conn, client)
                continue
            lane.take(client)
            protocol = _Counted(lane, client, server())
            try:
                await loop.connect_accepted_socket(functools.partial(_same, protocol), conn)
            except OSError:
                if not protocol.made:
                    lane.release(client)
                conn.close()

    def _refuse(self, conn: socket.socket, client: str) -> None:
        self.refused += 1
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(BUSY)  # a fresh socket's send buffer takes it whole
        conn.close()
        if self._refusals.due():
            log.warning(
                "api_connection_refused",
                open=self.main.open,
                client=client,
                client_open=self.main.by_client.get(client, 0),
                refused=self.refused,
            )


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A non-blocking TCP socket listening on the first address of ``host`` (port 0 = a free one)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.create_server(address[:2], family=family, backlog=backlog)
    sock.setblocking(False)
    return sock
