"""The aiohttp JSON API, embedded in the daemon's loop (AppRunner/TCPSite; it never owns the loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from aiohttp import web

from opendt.settings import ApiSettings
from opendt.state import TwinState

STATE = web.AppKey("state", TwinState)

log = structlog.get_logger(component="api")


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ok = state.status not in ("failed",)
    return web.json_response(
        {"status": "ok" if ok else "failing", "twin": state.status}, status=200 if ok else 503
    )


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


def create_app(state: TwinState, settings: ApiSettings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[STATE] = state
    app.router.add_get("/health", health)
    app.router.add_get("/api/status", status)
    return app


@asynccontextmanager
async def serve_api(state: TwinState, settings: ApiSettings) -> AsyncIterator[str]:
    """Serve the API on ``settings.host:port`` (port 0 = a free one); yields the base URL."""
    runner = web.AppRunner(create_app(state, settings), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://{settings.host}:{port}"
        log.info("api_listening", url=url)
        yield url
    finally:
        await runner.cleanup()
