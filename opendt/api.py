"""The aiohttp JSON API, embedded in the daemon's loop (AppRunner/TCPSite; it never owns the loop).

Handlers read what the components publish (:class:`TwinView`, :class:`TwinState`); they never talk to Kafka
or spawn simulations themselves: a topology change is handed to ``publish_topology`` (the daemon publishes
it on ``sim.topology``). Errors are JSON ``{"error": ..., "field": ...}`` with status 400/401/404/413/422.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
import structlog
from aiohttp import web

from opendt.models.messages import iso_ms
from opendt.models.topology import Topology, TopologyError, parse_topology
from opendt.results import ResultStore
from opendt.settings import ApiSettings
from opendt.simulator import TopologyBox
from opendt.state import TwinState

log = structlog.get_logger(component="api")

PublishTopology = Callable[[Topology, str, str], Awaitable[int]]


@dataclass
class TwinView:
    """Read access to the twin's data for the API (all optional: `serve` may run without a twin)."""

    store: ResultStore | None = None
    measured: pl.DataFrame | None = None
    """Measured power: ``timestamp_ms`` (epoch ms), ``power_draw`` (W)."""
    box: TopologyBox | None = None
    publish_topology: PublishTopology | None = None
    calibration_view: Callable[[], dict[str, Any]] | None = None
    """The calibrator's summary (settings, counts, last round); None = calibration disabled."""
    calibration_series: Callable[[], list[dict[str, Any]]] | None = None
    """Calibrated parameters after each round: ``time_ms``, ``value`` (summary), ``in_effect`` (path → value)."""


STATE = web.AppKey("state", TwinState)
VIEW = web.AppKey("view", TwinView)
SETTINGS = web.AppKey("settings", ApiSettings)


class ApiError(web.HTTPException):
    """An error answered as JSON naming the offending field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"error": message, "field": field}), content_type="application/json")


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


def _range(request: web.Request, default_step_s: int = 60) -> tuple[int, int, int]:
    q = request.query
    unknown = set(q) - {"start", "end", "step_s"}
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(400, f"unknown query parameter {name!r}", name)
    start = parse_time(q["start"], "start") if "start" in q else None
    end = parse_time(q["end"], "end") if "end" in q else None
    try:
        step_s = int(q.get("step_s", default_step_s))
    except ValueError:
        raise ApiError(400, "step_s: must be an integer number of seconds", "step_s") from None
    if step_s <= 0:
        raise ApiError(400, "step_s: must be > 0", "step_s")
    view = request.app[VIEW]
    lo, hi = _data_bounds(view)
    start = lo if start is None else start
    end = hi + 1 if end is None else end
    if end <= start:
        raise ApiError(400, "end: must be after start", "end")
    return start, end, step_s * 1000


def _data_bounds(view: TwinView) -> tuple[int, int]:
    candidates: list[tuple[int, int]] = []
    if view.store is not None and view.store.agg.height:
        ts = view.store.agg["timestamp"].dt.epoch("ms")
        candidates.append((int(ts.min()), int(ts.max())))  # type: ignore[arg-type]
    if view.measured is not None and view.measured.height:
        ts = view.measured["timestamp_ms"]
        candidates.append((int(ts.min()), int(ts.max())))  # type: ignore[arg-type]
    if not candidates:
        return 0, 0
    return min(c[0] for c in candidates), max(c[1] for c in candidates)


def _simulated(view: TwinView) -> pl.DataFrame:
    if view.store is None or view.store.agg.is_empty():
        return pl.DataFrame(
            schema={
                "timestamp_ms": pl.Int64,
                "power_draw": pl.Float64,
                "energy_usage": pl.Float64,
                "carbon_intensity": pl.Float64,
                "carbon_emission": pl.Float64,
            }
        )
    return view.store.agg.select(
        pl.col("timestamp").dt.epoch("ms").alias("timestamp_ms"),
        "power_draw",
        "energy_usage",
        "carbon_intensity",
        "carbon_emission",
    )


def downsample(
    df: pl.DataFrame, column: str, start: int, end: int, step_ms: int, how: str = "mean"
) -> list[list[Any]]:
    """``[[epoch_ms, value], …]`` of ``column`` in [start, end), one point per step bucket (finite only)."""
    part = df.filter(
        (pl.col("timestamp_ms") >= start) & (pl.col("timestamp_ms") < end) & pl.col(column).is_finite()
    )
    if part.is_empty():
        return []
    agg = pl.col(column).mean() if how == "mean" else pl.col(column).sum()
    out = (
        part.group_by((pl.col("timestamp_ms") // step_ms * step_ms).alias("t"), maintain_order=True)
        .agg(agg.alias("v"))
        .sort("t")
    )
    return [[t, v] for t, v in out.iter_rows()]


def power_metrics(sim: pl.DataFrame, measured: pl.DataFrame | None, start: int, end: int) -> dict[str, Any]:
    """MAPE and energy error of simulated vs measured power at the instants both have, in [start, end)."""
    if measured is None or sim.is_empty():
        return {"mape_pct": None, "energy_error_pct": None, "points": 0}
    both = (
        sim.filter((pl.col("timestamp_ms") >= start) & (pl.col("timestamp_ms") < end))
        .join(measured.select("timestamp_ms", pl.col("power_draw").alias("measured")), on="timestamp_ms")
        .filter(pl.col("measured") > 0)
    )
    if both.is_empty():
        return {"mape_pct": None, "energy_error_pct": None, "points": 0}
    mape = float(((both["power_draw"] - both["measured"]).abs() / both["measured"]).mean()) * 100  # type: ignore[arg-type]
    err = (float(both["power_draw"].sum()) / float(both["measured"].sum()) - 1) * 100
    return {"mape_pct": round(mape, 4), "energy_error_pct": round(err, 4), "points": both.height}


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ok = state.status not in ("failed",)
    return web.json_response(
        {"status": "ok" if ok else "failing", "twin": state.status}, status=200 if ok else 503
    )


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


async def power(request: web.Request) -> web.Response:
    start, end, step = _range(request)
    view = request.app[VIEW]
    sim = _simulated(view)
    measured = view.measured
    return web.json_response(
        {
            "start": iso_ms(start),
            "end": iso_ms(end),
            "step_s": step // 1000,
            "unit": "W",
            "measured": [] if measured is None else downsample(measured, "power_draw", start, end, step),
            "simulated": downsample(sim, "power_draw", start, end, step),
            "metrics": power_metrics(sim, measured, start, end),
        }
    )


async def carbon(request: web.Request) -> web.Response:
    start, end, step = _range(request)
    sim = _simulated(request.app[VIEW])
    return web.json_response(
        {
            "start": iso_ms(start),
            "end": iso_ms(end),
            "step_s": step // 1000,
            "carbon_intensity": downsample(sim, "carbon_intensity", start, end, step),
            "carbon_emission": downsample(sim, "carbon_emission", start, end, step, how="sum"),
            "units": {"carbon_intensity": "gCO2/kWh", "carbon_emission": "gCO2 per step"},
        }
    )


async def windows(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise ApiError(400, "limit: must be an integer", "limit") from None
    if not 1 <= limit <= 10_000:
        raise ApiError(400, "limit: must be in 1..10000", "limit")
    if view.store is None:
        return web.json_response({"windows": [], "total": 0})
    w = view.store.windows.tail(limit).with_columns(
        pl.col("window_start").dt.epoch("ms"), pl.col("window_end").dt.epoch("ms")
    )
    rows = [
        {**r, "window_start": iso_ms(r["window_start"]), "window_end": iso_ms(r["window_end"])}
        for r in w.iter_rows(named=True)
    ]
    return web.json_response({"windows": rows, "total": view.store.windows.height})


def _topology_doc(view: TwinView) -> dict[str, Any]:
    box = view.box
    if box is None:
        raise ApiError(404, "no twin topology (the API runs without a twin)")
    cur = box.current
    return {
        "physical": box.physical.to_json_dict(),
        "simulated": {
            "version": cur.version,
            "source": cur.source,
            "reason": cur.reason,
            "topology": cur.topology.to_json_dict(),
        },
    }


async def get_topology(request: web.Request) -> web.Response:
    return web.json_response(_topology_doc(request.app[VIEW]))


def _require_token(request: web.Request) -> None:
    token = request.app[SETTINGS].token
    if token is None:
        return
    if request.headers.get("Authorization", "") != f"Bearer {token}":
        raise ApiError(
            401, "missing or wrong bearer token (Authorization: Bearer <api.token>)", "Authorization"
        )


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()  # an oversized body raises 413, answered by the _errors middleware
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "body: not valid JSON", "body") from None


async def put_topology(request: web.Request) -> web.Response:
    _require_token(request)
    view = request.app[VIEW]
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(422, "body: must be a JSON object", "body")
    doc = body.get("topology", body)
    reason = body.get("reason", "set via the API") if "topology" in body else "set via the API"
    try:
        topo = parse_topology(doc, source="request body")
    except TopologyError as e:
        raise ApiError(422, str(e), "topology") from None
    if view.publish_topology is None:
        raise ApiError(404, "no twin to apply a topology to")
    version = await view.publish_topology(topo, "api", str(reason))
    return web.json_response(
        {"version": version, "source": "api", "applies": "from the next window"}, status=202
    )


async def reset_topology(request: web.Request) -> web.Response:
    _require_token(request)
    view = request.app[VIEW]
    if view.publish_topology is None or view.box is None:
        raise ApiError(404, "no twin to reset")
    version = await view.publish_topology(view.box.physical, "api", "reset to the physical topology")
    return web.json_response(
        {"version": version, "source": "api", "applies": "from the next window"}, status=202
    )


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        return web.json_response(
            {"error": f"request body larger than {limit} bytes", "field": "body"}, status=413
        )
    except ApiError:
        raise
    except web.HTTPException as e:
        return web.json_response({"error": e.reason, "field": None}, status=e.status)


def create_app(state: TwinState, settings: ApiSettings, view: TwinView | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_errors])
    app[STATE] = state
    app[VIEW] = view if view is not None else TwinView()
    app[SETTINGS] = settings
    app.router.add_get("/health", health)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/power", power)
    app.router.add_get("/api/carbon", carbon)
    app.router.add_get("/api/windows", windows)
    app.router.add_get("/api/topology", get_topology)
    app.router.add_put("/api/topology", put_topology)
    app.router.add_post("/api/topology/reset", reset_topology)
    return app


@asynccontextmanager
async def serve_api(
    state: TwinState, settings: ApiSettings, view: TwinView | None = None
) -> AsyncIterator[str]:
    """Serve the API on ``settings.host:port`` (port 0 = a free one); yields the base URL."""
    runner = web.AppRunner(create_app(state, settings, view), handle_signals=False, access_log=None)
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
