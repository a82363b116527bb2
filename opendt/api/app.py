"""The aiohttp app, embedded in the daemon's loop (AppRunner/TCPSite; it never owns the loop).

Handlers read what the components publish (:class:`~opendt.api.readmodel.TwinView`, the read model, and
:class:`~opendt.twin.status.TwinState`). Errors are JSON ``{"error": ..., "field": ...}`` with status
400/401/404/413/422.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import structlog
from aiohttp import web

from opendt.api.asyncapi import asyncapi_document
from opendt.api.dashboard import add_dashboard_routes
from opendt.api.grafana import add_grafana_routes
from opendt.api.http import SETTINGS, ApiError, check_host, json_response
from opendt.api.listener import BUSY_BODY, CappedListener, ServerLog, connection_limit, listening_socket
from opendt.api.openapi import openapi_document
from opendt.api.prometheus import metrics
from opendt.api.readmodel import TwinView
from opendt.api.routes import SERIES_CACHE, STATE, VIEW, add_routes, health, reject_unknown_query
from opendt.api.whatif import whatif
from opendt.settings import ApiSettings
from opendt.twin.status import TwinState
from opendt.twin.topology import TopologyUnknown

log = structlog.get_logger(component="api")

OPENAPI = web.AppKey("openapi", bytes)
ASYNCAPI = web.AppKey("asyncapi", bytes)
DOCS_PAGE = Path(__file__).parent / "static" / "docs.html"


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def asyncapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[ASYNCAPI], content_type="application/json")


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
    except TopologyUnknown as e:  # a twin with --no-replay before the datacenter sent its topology
        return json_response(
            {"error": f"{e}: the twin has nothing to simulate on yet", "field": None}, status=503
        )


@web.middleware
async def _host(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    check_host(request)  # every request, reads included (DNS rebinding)
    return await handler(request)


@web.middleware
async def _one_answer(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as e:
        response = e
    response.force_close()
    return response


async def _busy(request: web.Request) -> web.Response:
    return web.Response(
        body=BUSY_BODY, status=503, content_type="application/json", headers={"Retry-After": "1"}
    )


def create_health_app(state: TwinState, settings: ApiSettings) -> web.Application:
    """The ``/health`` lane's app (:mod:`opendt.api.listener`): ``/health`` only, one answer per connection;
    anything else is 503, as a connection over the cap."""
    app = web.Application(
        client_max_size=1024, middlewares=[_one_answer, _errors, _host, reject_unknown_query]
    )
    app[STATE] = state
    app[VIEW] = TwinView()
    app[SETTINGS] = settings
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", _busy)
    return app


def create_app(state: TwinState, settings: ApiSettings, view: TwinView | None = None) -> web.Application:
    middlewares = [_errors, _host, reject_unknown_query]
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    app[STATE] = state
    app[VIEW] = view if view is not None else TwinView()
    app[SETTINGS] = settings
    add_routes(app)
    app.router.add_post("/api/whatif", whatif)
    app[SERIES_CACHE] = {}
    app[OPENAPI] = orjson.dumps(openapi_document(token=settings.token is not None))
    app.router.add_get("/openapi.json", openapi_json)
    app[ASYNCAPI] = orjson.dumps(asyncapi_document())
    app.router.add_get("/asyncapi.json", asyncapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_get("/metrics", metrics)
    add_grafana_routes(app)
    add_dashboard_routes(app)
    return app


API_SHUTDOWN_S = 5.0
"""At shutdown, requests still in flight get this long to finish (aiohttp's default, 60 s, held a stopping
daemon for a minute; what-ifs are cancelled before: :meth:`~opendt.twin.scenarios.ScenarioRunner.close`)."""


@asynccontextmanager
async def serve_api(
    state: TwinState, settings: ApiSettings, view: TwinView | None = None
) -> AsyncIterator[str]:
    """Serve the API on ``settings.host:port`` (port 0 = a free one); yields the base URL.

    A connection must send a request's headers within ``api.request_timeout_s`` of opening or of its
    previous answer (else it is closed: half-open and idle connections are reaped), and at most
    :func:`~opendt.api.listener.connection_limit` are open at once (:mod:`opendt.api.listener`)."""
    runner = web.AppRunner(
        create_app(state, settings, view),
        handle_signals=False,
        shutdown_timeout=API_SHUTDOWN_S,
        access_log=None,
        keepalive_timeout=settings.request_timeout_s,
        logger=ServerLog(),
    )
    lane = web.AppRunner(
        create_health_app(state, settings),
        handle_signals=False,
        shutdown_timeout=1.0,
        access_log=None,
        keepalive_timeout=min(settings.request_timeout_s, 2.0),
        logger=ServerLog(),
    )
    await runner.setup()
    await lane.setup()
    assert runner.server is not None
    assert lane.server is not None
    sock = listening_socket(settings.host, settings.port)
    listener = CappedListener(
        runner.server,
        sock,
        connection_limit(settings.max_connections),
        per_client=settings.max_connections_per_client,
        health=lane.server,
    )
    accepting = asyncio.create_task(listener.run(), name="api-accept")
    try:
        port = sock.getsockname()[1]
        url = f"http://{settings.host}:{port}"
        log.info(
            "api_listening",
            url=url,
            max_connections=listener.limit,
            max_connections_per_client=listener.per_client,
            request_timeout_s=settings.request_timeout_s,
        )
        yield url
    finally:
        accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await accepting
        sock.close()
        await lane.cleanup()
        await runner.cleanup()
