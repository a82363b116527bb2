"""The aiohttp app, embedded in the daemon's loop (AppRunner/TCPSite; it never owns the loop).

Handlers read what the components publish (:class:`~opendt.api.readmodel.TwinView`, the read model, and
:class:`~opendt.twin.status.TwinState`). Errors are JSON ``{"error": ..., "field": ...}`` with status
400/401/404/413/422.
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import structlog
from aiohttp import web

from opendt.api.dashboard import add_dashboard_routes
from opendt.api.grafana import add_grafana_routes
from opendt.api.http import SETTINGS, ApiError, json_response
from opendt.api.openapi import openapi_document
from opendt.api.readmodel import TwinView
from opendt.api.routes import SERIES_CACHE, STATE, VIEW, add_routes
from opendt.api.whatif import whatif
from opendt.settings import ApiSettings
from opendt.twin.status import TwinState

log = structlog.get_logger(component="api")

OPENAPI = web.AppKey("openapi", bytes)
DOCS_PAGE = Path(__file__).parent / "static" / "docs.html"


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def docs(request: web.Request) -> web.FileResponse:
    return web.FileResponse(DOCS_PAGE, headers={"Cache-Control": "no-cache"})


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        return json_response(
            {"error": f"request body larger than {limit} bytes", "field": "body"}, status=413
        )
    except ApiError:
        raise
    except web.HTTPException as e:
        return json_response({"error": e.reason, "field": None}, status=e.status)


def create_app(state: TwinState, settings: ApiSettings, view: TwinView | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_errors])
    app[STATE] = state
    app[VIEW] = view if view is not None else TwinView()
    app[SETTINGS] = settings
    add_routes(app)
    app.router.add_post("/api/whatif", whatif)
    app[SERIES_CACHE] = {}
    app[OPENAPI] = orjson.dumps(openapi_document(token=settings.token is not None))
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    add_grafana_routes(app)
    add_dashboard_routes(app)
    return app


_BUSY_BODY = b'{"error": "too many open connections (api.max_connections); try again", "field": null}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Refuse(asyncio.Protocol):
    """A connection over the cap: answered 503 at once and closed, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class ConnectionCap:
    """The listening socket's protocol factory: aiohttp's handlers for at most ``limit`` open connections,
    :class:`_Refuse` beyond (counted in ``refused``, logged at most every 10 s)."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server = server
        self.limit = limit
        self.refused = 0
        self._logged_at = -math.inf

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) < self.limit:
            return self.server()
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_at >= 10:
            self._logged_at = now
            log.warning("api_connection_refused", open=self.limit, refused=self.refused)
        return _Refuse()


def connection_limit(configured: int) -> int:
    """``api.max_connections``, but at most a quarter of the file limit: the daemon's own files, sockets
    and pipes (results, Kafka, workers) keep the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return configured if soft == resource.RLIM_INFINITY else max(1, min(configured, soft // 4))


@asynccontextmanager
async def serve_api(
    state: TwinState, settings: ApiSettings, view: TwinView | None = None
) -> AsyncIterator[str]:
    """Serve the API on ``settings.host:port`` (port 0 = a free one); yields the base URL.

    A connection must send a request's headers within ``api.request_timeout_s`` of opening or of its
    previous answer (else it is closed: half-open and idle connections are reaped), and at most
    :func:`connection_limit` are open at once."""
    runner = web.AppRunner(
        create_app(state, settings, view),
        handle_signals=False,
        access_log=None,
        keepalive_timeout=settings.request_timeout_s,
    )
    await runner.setup()
    assert runner.server is not None
    cap = ConnectionCap(runner.server, connection_limit(settings.max_connections))
    listener = await asyncio.get_running_loop().create_server(cap, settings.host, settings.port)
    try:
        port = listener.sockets[0].getsockname()[1]
        url = f"http://{settings.host}:{port}"
        log.info(
            "api_listening", url=url, max_connections=cap.limit, request_timeout_s=settings.request_timeout_s
        )
        yield url
    finally:
        listener.close()
        await runner.cleanup()
