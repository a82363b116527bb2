"""The built-in dashboard page at ``/`` (for users without Grafana) and its assets under ``/static/``.

The page is plain HTML/JS/CSS from the package's ``static`` directory (no build step; the one chart library,
uPlot, is vendored under ``static/vendor``, see its README). It only reads the JSON API, like any client.

Static files are served by a handler that answers only regular files inside that directory, found by plain
names (no ``..``, no hidden names, no symlinks, no backslashes), of a known type; everything else is 404,
so no request reaches a file outside it, however encoded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".license": "text/plain; charset=utf-8",
}
"""What is served, by file suffix (lower case); files of any other type are 404."""

NO_CACHE: Final = {"Cache-Control": "no-cache"}
"""Browsers revalidate every time (ETag / Last-Modified), so an upgraded daemon's page is never stale."""


def static_file(relative: str, root: Path = STATIC_DIR) -> Path | None:
    """The regular file ``relative`` (``/``-separated) names under ``root``, or None when it names none, names
    something outside ``root``, goes through a symlink or a hidden name, or has a type not served."""
    parts = relative.split("/")
    if not relative or any(
        not p or p in (".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts
    ):
        return None
    path = root.joinpath(*parts)
    if path.suffix.lower() not in CONTENT_TYPES:
        return None
    real_root = root.resolve()
    current = real_root
    for p in parts:  # no symlink anywhere on the way (follow_symlinks=False)
        current = current / p
        if current.is_symlink():
            return None
    if not path.resolve().is_relative_to(real_root) or not path.is_file():
        return None
    return path


async def index(request: web.Request) -> web.FileResponse:
    """The dashboard page."""
    return web.FileResponse(
        STATIC_DIR / "index.html", headers={"Content-Type": CONTENT_TYPES[".html"], **NO_CACHE}
    )


async def static(request: web.Request) -> web.FileResponse:
    """A file of the page (``/static/<path>``)."""
    path = static_file(request.match_info["path"])
    if path is None:
        raise web.HTTPNotFound(reason="no such static file")
    return web.FileResponse(path, headers={"Content-Type": CONTENT_TYPES[path.suffix.lower()], **NO_CACHE})


def add_dashboard_routes(app: web.Application) -> None:
    """Register ``GET /`` (the page) and ``GET /static/{path}`` (its files) on ``app``."""
    app.router.add_get("/", index)
    app.router.add_get("/static/{path:.+}", static)
