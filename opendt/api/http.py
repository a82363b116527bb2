"""HTTP helpers shared by every route: JSON answers and errors, and bounded parsing of what a request
carries (times, integers, limits, bodies) and the guard of writes (token, or same origin and JSON).

Every parse is bounded: times in [1970-01-01, 2200-01-01] (:mod:`opendt.models.bounds`), integers in ASCII
digits within their range, bodies at most ``api.max_body_bytes``, read within ``api.request_timeout_s`` and
nested at most :data:`MAX_JSON_DEPTH` deep. Bad input is a 4xx naming the field, never a 5xx.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from opendt.models.bounds import MAX_TIME_MS, MIN_TIME_MS
from opendt.settings import ApiSettings

SETTINGS = web.AppKey("settings", ApiSettings)
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects in a body (a topology is 6 deep, a Grafana query 5)."""
_EPOCH_MS = re.compile(r"-?[0-9]{1,20}")
_DIGITS = re.compile(r"[0-9]{1,20}")


class ApiError(web.HTTPException):
    """An error answered as JSON naming the offending field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"error": message, "field": field}), content_type="application/json")


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer via orjson (fast; NaN and ±Infinity become null, never invalid JSON)."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _quoted(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")


def parse_time(value: str, field: str) -> int:
    """ISO-8601 (a zone, or naive = UTC) or epoch milliseconds (ASCII digits) → epoch ms, within
    [1970-01-01, 2200-01-01]; 400 naming ``field`` otherwise."""
    v = value.strip()
    if _EPOCH_MS.fullmatch(v):
        ms = int(v)
    else:
        try:
            if not v.isascii():
                raise ValueError(v)
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise ApiError(
                400, f"{field}: not an ISO-8601 time or epoch milliseconds: {_quoted(value)}", field
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ms = round(dt.timestamp() * 1000)
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise ApiError(400, f"{field}: {_quoted(value)} is out of range [1970-01-01, 2200-01-01]", field)
    return ms


def parse_int(value: str, field: str, lo: int, hi: int) -> int:
    """A query parameter's integer (ASCII digits) in ``lo..hi``; 400 naming ``field`` otherwise."""
    v = value.strip()
    if not _DIGITS.fullmatch(v):
        raise ApiError(400, f"{field}: must be an integer in {lo}..{hi}, got {_quoted(value)}", field)
    n = int(v)
    if not lo <= n <= hi:
        raise ApiError(400, f"{field}: must be in {lo}..{hi}, got {n}", field)
    return n


def query_limit(request: web.Request, most: int, default: int = 100) -> int:
    """The ``limit`` query parameter: an integer in 1..``most`` (400 naming it otherwise)."""
    return parse_int(request.query.get("limit", str(default)), "limit", 1, most)


def _authority(url: URL) -> tuple[str, int | None]:
    return (url.host or "").lower().rstrip("."), url.port


def allowed_hosts(settings: ApiSettings) -> list[str]:
    """``api.allowed_hosts``, or its default: localhost, ``*.localhost`` and the bind address."""
    if settings.allowed_hosts is not None:
        return settings.allowed_hosts
    return ["localhost", "*.localhost", settings.host]


def host_allowed(name: str, settings: ApiSettings) -> bool:
    """Whether a request's Host name is one DNS rebinding cannot produce: an IP literal (a rebinding page's
    Host is its own domain name), or a name of ``api.allowed_hosts`` (default: localhost, ``*.localhost``
    and ``api.host``)."""
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        return True
    for n in (x.lower().rstrip(".") for x in allowed_hosts(settings)):
        if n in ("*", name) or (n.startswith("*.") and name.endswith(n[1:])):
            return True
    return False


def check_host(request: web.Request) -> None:
    """403 naming ``Host`` unless the request's Host is allowed (:func:`host_allowed`); every request, reads
    included: a page reached by DNS rebinding must not read the twin's status either."""
    settings = request.app[SETTINGS]
    host = request.headers.get("Host")
    if host is None:
        return  # HTTP/1.0 without Host: not a browser
    try:
        name = _authority(URL(f"http://{host}"))[0]
    except ValueError:
        raise ApiError(400, f"Host: not a host name: {_quoted(host)}", "Host") from None
    if not host_allowed(name, settings):
        raise ApiError(
            403,
            f"Host: {_quoted(host)} is not a name of this twin (api.allowed_hosts: "
            f"{', '.join(allowed_hosts(settings))}; IP addresses pass): a page reached by DNS rebinding is "
            "refused; add the name to api.allowed_hosts to serve it",
            "Host",
        )


def _same_origin(request: web.Request, settings: ApiSettings) -> None:
    """403 unless the request can only come from our own pages or a non-browser client."""
    host = request.headers.get("Host")
    try:
        here = _authority(URL(f"http://{host}")) if host is not None else None
    except ValueError:
        raise ApiError(400, f"Host: not a host name: {_quoted(host or '')}", "Host") from None
    if here is not None and not host_allowed(here[0], settings):  # checked for every request already
        raise ApiError(403, f"Host: {_quoted(host or '')} is not in api.allowed_hosts", "Host")
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise ApiError(
            403,
            f"Sec-Fetch-Site: a {_quoted(site)} browser request cannot write (set api.token)",
            "Sec-Fetch-Site",
        )
    origin = request.headers.get("Origin")
    if origin is None:
        return
    try:
        there = _authority(URL(origin))
    except ValueError:
        there = ("", None)
    if here is None or there != here:
        raise ApiError(
            403, f"Origin: a page of {_quoted(origin)} cannot write to this twin (set api.token)", "Origin"
        )


def require_token(request: web.Request) -> None:
    """The guard of every write (PUT/POST that changes the twin or runs a simulation).

    With ``api.token`` set: ``Authorization: Bearer <token>`` (401 otherwise). Without one, only what a
    foreign web page cannot send: a Host that DNS rebinding cannot produce, an Origin (when sent) equal to
    that Host, no cross-site ``Sec-Fetch-Site`` (403 otherwise), and a body only as JSON (415 otherwise:
    a page may post ``text/plain`` or a form across origins without asking, but not JSON).
    """
    settings = request.app[SETTINGS]
    token = settings.token
    if token is not None:
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(
            given, f"Bearer {token.get_secret_value()}".encode("utf-8", "surrogateescape")
        ):
            raise ApiError(
                401, "missing or wrong bearer token (Authorization: Bearer <api.token>)", "Authorization"
            )
        return
    _same_origin(request, settings)
    if request.body_exists and request.content_type != "application/json":
        raise ApiError(
            415, f"Content-Type: a body must be application/json, not {request.content_type}", "Content-Type"
        )


def parse_json(raw: bytes) -> Any:
    """The JSON document ``raw`` (400 naming the body when it is not JSON or nests deeper than
    :data:`MAX_JSON_DEPTH`)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"body: not valid JSON ({e})", "body") from None
    stack: list[tuple[Any, int]] = [(doc, 1)] if type(doc) is dict or type(doc) is list else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ApiError(400, f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels", "body")
        children = node.values() if type(node) is dict else node
        stack.extend((c, depth + 1) for c in children if type(c) is dict or type(c) is list)
    return doc


async def read_body(request: web.Request) -> bytes:
    """The request body, read within ``api.request_timeout_s`` (408 otherwise; above ``api.max_body_bytes``
    aiohttp raises 413, answered by the app's error middleware)."""
    timeout = request.app[SETTINGS].request_timeout_s
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408, f"body: not received within {timeout:g} s (api.request_timeout_s)", "body"
        ) from None


async def json_body(request: web.Request) -> Any:
    return parse_json(await read_body(request))
