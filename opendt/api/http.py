"""HTTP helpers shared by every route: JSON answers and errors, and bounded parsing of what a request
carries (times, limits, tokens, bodies)."""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from opendt.settings import ApiSettings

SETTINGS = web.AppKey("settings", ApiSettings)


class ApiError(web.HTTPException):
    """An error answered as JSON naming the offending field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"error": message, "field": field}), content_type="application/json")


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer via orjson (fast; NaN and ±Infinity become null, never invalid JSON)."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def parse_time(value: str, field: str) -> int:
    """ISO-8601 (a zone, or naive = UTC) or epoch milliseconds → epoch ms."""
    v = value.strip()
    if v.lstrip("-").isdigit():
        return int(v)
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ApiError(
            400, f"{field}: not an ISO-8601 time or epoch milliseconds: {value!r}", field
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def query_limit(request: web.Request, most: int, default: int = 100) -> int:
    """The ``limit`` query parameter: an integer in 1..``most`` (400 naming it otherwise)."""
    try:
        limit = int(request.query.get("limit", str(default)))
    except ValueError:
        raise ApiError(400, "limit: must be an integer", "limit") from None
    if not 1 <= limit <= most:
        raise ApiError(400, f"limit: must be in 1..{most}", "limit")
    return limit


def require_token(request: web.Request) -> None:
    token = request.app[SETTINGS].token
    if token is None:
        return
    given = request.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(given, f"Bearer {token.get_secret_value()}".encode()):
        raise ApiError(
            401, "missing or wrong bearer token (Authorization: Bearer <api.token>)", "Authorization"
        )


async def json_body(request: web.Request) -> Any:
    try:
        return await request.json()  # an oversized body raises 413, answered by the _errors middleware
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "body: not valid JSON", "body") from None
