"""The aiohttp JSON API, embedded in the daemon's loop (AppRunner/TCPSite; it never owns the loop).

Handlers read what the components publish (:class:`TwinView`, :class:`TwinState`); they never talk to Kafka
or spawn simulations themselves: a topology change goes through the twin's
:class:`~opendt.twin.topology.TopologyWriter`. Errors are JSON ``{"error": ..., "field": ...}`` with status
400/401/404/413/422.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import structlog
from aiohttp import web

from opendt.api.dashboard import add_dashboard_routes
from opendt.api.openapi import openapi_document
from opendt.models.messages import iso_ms
from opendt.models.topology import Topology, TopologyError, parse_topology
from opendt.optimizer.component import Optimizer, OptimizerError
from opendt.optimizer.slo import SloError, SloWatcher, parse_slo
from opendt.settings import ApiSettings
from opendt.twin.history import HistoryGap
from opendt.twin.results import ResultStore
from opendt.twin.scenarios import ScenarioBusy, ScenarioRunner
from opendt.twin.status import TwinState
from opendt.twin.topology import TopologyBox, TopologyWriter

log = structlog.get_logger(component="api")


@dataclass
class TwinView:
    """Read access to the twin's data for the API (all optional: `serve` may run without a twin)."""

    store: ResultStore | None = None
    measured: pl.DataFrame | None = None
    """Measured power: ``timestamp_ms`` (epoch ms), ``power_draw`` (W)."""
    box: TopologyBox | None = None
    writer: TopologyWriter | None = None
    """The one write path of the simulated topology (None: a read-only API)."""
    calibration_view: Callable[[], dict[str, Any]] | None = None
    """The calibrator's summary (settings, counts, last round); None = calibration disabled."""
    calibration_series: Callable[[], list[dict[str, Any]]] | None = None
    """Calibrated parameters after each round: ``time_ms``, ``value``, ``in_effect`` (path → value)."""
    calibration_rounds: Callable[[], list[dict[str, Any]]] | None = None
    """The calibration journal, one summary per round (newest last)."""
    scenarios: ScenarioRunner | None = None
    """Warm-started runs over the twin's past (what-if); None = no twin."""
    slo: SloWatcher | None = None
    """The SLOs (config/slo.json, watched); None = no SLO file could be loaded."""
    optimizer: Optimizer | None = None
    """The SLO optimizer; None = optimizer.enabled is false."""


STATE = web.AppKey("state", TwinState)
VIEW = web.AppKey("view", TwinView)
SETTINGS = web.AppKey("settings", ApiSettings)


class ApiError(web.HTTPException):
    """An error answered as JSON naming the offending field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"error": message, "field": field}), content_type="application/json")


def _json(data: Any, status: int = 200) -> web.Response:
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


def _limit(request: web.Request, most: int, default: int = 100) -> int:
    """The ``limit`` query parameter: an integer in 1..``most`` (400 naming it otherwise)."""
    try:
        limit = int(request.query.get("limit", str(default)))
    except ValueError:
        raise ApiError(400, "limit: must be an integer", "limit") from None
    if not 1 <= limit <= most:
        raise ApiError(400, f"limit: must be in 1..{most}", "limit")
    return limit


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


SIMULATED_SCHEMA = {
    "timestamp_ms": pl.Int64,
    "power_draw": pl.Float64,
    "energy_usage": pl.Float64,
    "carbon_intensity": pl.Float64,
    "carbon_emission": pl.Float64,
    "topology_version": pl.Int64,
}


def simulated_frame(view: TwinView) -> pl.DataFrame:
    """The stored results as ``SIMULATED_SCHEMA`` (epoch-ms ``timestamp_ms``); empty without a store."""
    if view.store is None:
        return pl.DataFrame(schema=SIMULATED_SCHEMA)
    return view.store.agg.select(
        pl.col("timestamp").dt.epoch("ms").alias("timestamp_ms"), *list(SIMULATED_SCHEMA)[1:]
    )


def bucket(
    ts: np.ndarray, values: np.ndarray, start: int, end: int, step_ms: int, how: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Per ``step_ms`` bucket of the points in [start, end): the bucket start and the mean (or sum) of the
    finite values. ``ts`` must be ascending (the store and the meter are)."""
    lo, hi = np.searchsorted(ts, (start, end), side="left")
    t, v = ts[lo:hi], values[lo:hi]
    finite = np.isfinite(v)
    if not finite.all():
        t, v = t[finite], v[finite]
    if t.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    b = t // step_ms * step_ms
    first = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
    agg = np.add.reduceat(v, first)
    if how == "mean":
        agg = agg / np.diff(np.append(first, t.size))
    return b[first], agg


def downsample(
    df: pl.DataFrame, column: str, start: int, end: int, step_ms: int, how: str = "mean"
) -> list[tuple[int, float]]:
    """``[[epoch_ms, value], …]`` of ``column`` in [start, end), one point per step bucket (finite only)."""
    if df.is_empty():
        return []
    ts = df["timestamp_ms"].to_numpy()
    vals = df[column].cast(pl.Float64).to_numpy()
    if ts.size > 1 and (np.diff(ts) < 0).any():
        order = np.argsort(ts, kind="stable")
        ts, vals = ts[order], vals[order]
    t, v = bucket(ts, vals, start, end, step_ms, how)
    return list(zip(t.tolist(), v.tolist(), strict=True))


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
    return _json({"status": "ok" if ok else "failing", "twin": state.status}, status=200 if ok else 503)


async def status(request: web.Request) -> web.Response:
    return _json(request.app[STATE].snapshot())


SERIES_CACHE = web.AppKey("series_cache", dict)
"""Rendered series answers by (path, start, end, step, result rows): a new window invalidates them."""


def _cached(request: web.Request, key: tuple[Any, ...], render: Callable[[], Any]) -> web.Response:
    cache: dict[tuple[Any, ...], bytes] = request.app[SERIES_CACHE]
    view = request.app[VIEW]
    full = (*key, -1 if view.store is None else view.store.agg.height)
    body = cache.get(full)
    if body is None:
        body = orjson.dumps(render())
        if len(cache) >= 256:
            cache.clear()
        cache[full] = body
    return web.Response(body=body, content_type="application/json")


async def power(request: web.Request) -> web.Response:
    start, end, step = _range(request)
    view = request.app[VIEW]

    def render() -> dict[str, Any]:
        sim = simulated_frame(view)
        measured = view.measured
        return {
            "start": iso_ms(start),
            "end": iso_ms(end),
            "step_s": step // 1000,
            "unit": "W",
            "measured": [] if measured is None else downsample(measured, "power_draw", start, end, step),
            "simulated": downsample(sim, "power_draw", start, end, step),
            "metrics": power_metrics(sim, measured, start, end),
        }

    return _cached(request, ("power", start, end, step), render)


async def carbon(request: web.Request) -> web.Response:
    start, end, step = _range(request)
    view = request.app[VIEW]

    def render() -> dict[str, Any]:
        sim = simulated_frame(view)
        return {
            "start": iso_ms(start),
            "end": iso_ms(end),
            "step_s": step // 1000,
            "carbon_intensity": downsample(sim, "carbon_intensity", start, end, step),
            "carbon_emission": downsample(sim, "carbon_emission", start, end, step, how="sum"),
            "units": {"carbon_intensity": "gCO2/kWh", "carbon_emission": "gCO2 per step"},
        }

    return _cached(request, ("carbon", start, end, step), render)


async def windows(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    limit = _limit(request, 10_000)
    if view.store is None:
        return _json({"windows": [], "total": 0})
    w = view.store.windows.tail(limit).with_columns(
        pl.col("window_start").dt.epoch("ms"), pl.col("window_end").dt.epoch("ms")
    )
    rows = [
        {**r, "window_start": iso_ms(r["window_start"]), "window_end": iso_ms(r["window_end"])}
        for r in w.iter_rows(named=True)
    ]
    return _json({"windows": rows, "total": view.store.windows.height})


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
    return _json(_topology_doc(request.app[VIEW]))


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
    if view.writer is None:
        raise ApiError(404, "no twin to apply a topology to")
    version = (await view.writer.write(topo, "api", str(reason))).version
    return _json({"version": version, "source": "api", "applies": "from the next window"}, status=202)


async def reset_topology(request: web.Request) -> web.Response:
    _require_token(request)
    view = request.app[VIEW]
    if view.writer is None or view.box is None:
        raise ApiError(404, "no twin to reset")
    version = (await view.writer.write(view.box.physical, "api", "reset to the physical topology")).version
    return _json({"version": version, "source": "api", "applies": "from the next window"}, status=202)


def topology_at(view: TwinView, at_ms: int) -> Topology:
    """The simulated topology in effect at ``at_ms``: that of the window containing it (else the current)."""
    box = view.box
    if box is None:
        raise ApiError(404, "no twin topology (the API runs without a twin)")
    version = box.current.version
    if view.store is not None and view.store.windows.height:
        w = view.store.windows.filter(
            (pl.col("window_start").dt.epoch("ms") <= at_ms) & (pl.col("window_end").dt.epoch("ms") > at_ms)
        )
        if w.height:
            version = int(w["topology_version"][-1])
    topology = box.of_version(version, view.store)
    return box.physical if topology is None else topology


def _totals(df: pl.DataFrame, start: int, end: int) -> dict[str, float | None]:
    part = df.filter((pl.col("timestamp_ms") > start) & (pl.col("timestamp_ms") <= end))
    if part.is_empty():
        return {"energy_kwh": None, "carbon_kg": None, "peak_w": None, "mean_w": None}
    return {
        "energy_kwh": round(float(part["energy_usage"].sum()) / 3.6e6, 6),
        "carbon_kg": round(float(part["carbon_emission"].sum()) / 1000, 6),
        "peak_w": round(float(part["power_draw"].max()), 3),  # type: ignore[arg-type]
        "mean_w": round(float(part["power_draw"].mean()), 3),  # type: ignore[arg-type]
    }


def _measured_totals(measured: pl.DataFrame | None, start: int, end: int) -> dict[str, float | None]:
    """Measured: mean and peak power of the samples in the range, energy = mean × range length."""
    none: dict[str, float | None] = {"energy_kwh": None, "carbon_kg": None, "peak_w": None, "mean_w": None}
    if measured is None:
        return none
    part = measured.filter((pl.col("timestamp_ms") > start) & (pl.col("timestamp_ms") <= end))
    if part.is_empty():
        return none
    mean = float(part["power_draw"].mean())  # type: ignore[arg-type]
    return {
        "energy_kwh": round(mean * (end - start) / 3.6e9, 6),
        "carbon_kg": None,
        "peak_w": round(float(part["power_draw"].max()), 3),  # type: ignore[arg-type]
        "mean_w": round(mean, 3),
    }


def _pct(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return round((new / old - 1) * 100, 4)


WHATIF_KEYS = {"start", "end", "topology", "patch", "step_s", "reason"}


async def whatif(request: web.Request) -> web.Response:
    """Simulate a past range with another topology, from the twin's state at the range start."""
    _require_token(request)
    view = request.app[VIEW]
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(422, "body: must be a JSON object", "body")
    unknown = sorted(set(body) - WHATIF_KEYS)
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r} (allowed: {sorted(WHATIF_KEYS)})", unknown[0])
    for name in ("start", "end"):
        if name not in body:
            raise ApiError(422, f"{name}: required (ISO-8601 time or epoch milliseconds)", name)
        if not isinstance(body[name], str | int) or isinstance(body[name], bool):
            raise ApiError(422, f"{name}: must be an ISO-8601 string or epoch milliseconds", name)
    start, end = parse_time(str(body["start"]), "start"), parse_time(str(body["end"]), "end")
    if end <= start:
        raise ApiError(422, "end: must be after start", "end")
    limit = request.app[SETTINGS].whatif_max_range_s
    if end - start > limit * 1000:
        raise ApiError(422, f"end: the range is longer than api.whatif_max_range_s ({limit} s)", "end")
    step_s = body.get("step_s", 0)
    if not isinstance(step_s, int) or isinstance(step_s, bool) or step_s < 0:
        raise ApiError(422, "step_s: must be a positive integer number of seconds", "step_s")
    if ("topology" in body) == ("patch" in body):
        raise ApiError(
            422, "give exactly one of topology (a whole topology) or patch (dotted parameters)", "patch"
        )
    if view.scenarios is None or view.box is None:
        raise ApiError(404, "no twin to run a what-if on")
    base = topology_at(view, start)
    changes: list[dict[str, Any]] = []
    if "patch" in body:
        from opendt.models.patch import PatchError, apply_patch, topology_diff

        patch = body["patch"]
        if not isinstance(patch, dict) or not patch:
            raise ApiError(422, "patch: must be a non-empty object of dotted path → value", "patch")
        try:
            topo = apply_patch(base, patch)
            changes = [vars(c) for c in topology_diff(base, topo)]
        except PatchError as e:
            raise ApiError(422, f"patch: {e}", "patch") from None
    else:
        try:
            topo = parse_topology(body["topology"], source="topology")
        except TopologyError as e:
            raise ApiError(422, str(e), "topology") from None
    try:
        [res] = await view.scenarios.run(start, end, [topo], what="whatif")
    except HistoryGap as e:
        raise ApiError(422, f"start/end: {e}", "start") from None
    except ScenarioBusy as e:
        raise ApiError(429, f"too many what-if runs queued: {e}", None) from None
    if res.rows is None:
        raise ApiError(500, f"the what-if simulation failed: {res.error}", None)
    sim = simulated_frame(view)
    step_ms = (step_s or max(60, -(-(end - start) // 1000 // 500))) * 1000
    measured = view.measured
    totals = {
        "measured": _measured_totals(measured, start, end),
        "baseline": _totals(sim, start, end),
        "whatif": _totals(res.rows, start, end),
    }
    delta = {
        f"{name}_pct": _pct(totals["whatif"][key], totals["baseline"][key])
        for name, key in (("energy", "energy_kwh"), ("carbon", "carbon_kg"), ("peak", "peak_w"))
    }
    return _json(
        {
            "start": iso_ms(start),
            "end": iso_ms(end),
            "step_s": step_ms // 1000,
            "base_topology_version": view.box.current.version,
            "changes": changes,
            "topology": topo.to_json_dict(),
            "series": {
                "measured": []
                if measured is None
                else downsample(measured, "power_draw", start, end, step_ms),
                "baseline": downsample(sim, "power_draw", start, end, step_ms),
                "whatif": downsample(res.rows, "power_draw", start, end, step_ms),
            },
            "totals": totals,
            "delta": {
                k.replace("_kwh", "").replace("_kg", "").replace("_w", ""): v for k, v in delta.items()
            },
            "elapsed_s": round(res.compute_s, 4),
        }
    )


async def calibration(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    if view.calibration_view is None:
        raise ApiError(404, "calibration is disabled (calibration.enabled: false)")
    doc = dict(view.calibration_view())
    doc["series"] = view.calibration_series() if view.calibration_series is not None else []
    doc["rounds_detail"] = view.calibration_rounds() if view.calibration_rounds is not None else []
    return _json(doc)


def _slo_doc(watcher: SloWatcher) -> dict[str, Any]:
    return {
        "slo": watcher.current.to_json_dict(),
        "path": str(watcher.path),
        "changes": watcher.changes,
        "rejections": watcher.rejections,
    }


async def get_slo(request: web.Request) -> web.Response:
    watcher = request.app[VIEW].slo
    if watcher is None:
        raise ApiError(404, "no SLOs loaded (optimizer.slo_path missing or invalid at start)")
    return _json(_slo_doc(watcher))


async def put_slo(request: web.Request) -> web.Response:
    _require_token(request)
    watcher = request.app[VIEW].slo
    body = await _json_body(request)
    if watcher is None:
        raise ApiError(404, "no SLOs loaded (optimizer.slo_path missing or invalid at start)")
    try:
        slo = parse_slo(body, source="body")
    except SloError as e:
        field = next((f for f in type(watcher.current).model_fields if f in str(e)), "body")
        raise ApiError(422, str(e), field) from None
    try:
        await watcher.update(slo)
    except OSError as e:
        raise ApiError(409, f"cannot write {watcher.path}: {e}", None) from None
    return _json(_slo_doc(watcher))


async def get_optimizer(request: web.Request) -> web.Response:
    opt = request.app[VIEW].optimizer
    if opt is None:
        raise ApiError(404, "the optimizer is disabled (optimizer.enabled: false)")
    return _json(opt.view(_limit(request, 1000)))


async def accept_optimizer(request: web.Request) -> web.Response:
    _require_token(request)
    opt = request.app[VIEW].optimizer
    index: int | None = None
    if request.can_read_body:
        body = await _json_body(request)
        if not isinstance(body, dict) or set(body) - {"round"}:
            raise ApiError(422, 'body: must be {} or {"round": <round number>}', "body")
        index = body.get("round")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise ApiError(422, "round: must be an integer", "round")
    if opt is None:
        raise ApiError(404, "the optimizer is disabled (optimizer.enabled: false)")
    try:
        r = await opt.accept(index)
    except OptimizerError as e:
        raise ApiError(409, str(e), "round") from None
    return _json(
        {
            "version": r.accepted_version,
            "source": "optimizer",
            "round": r.index,
            "applies": "from the next window",
        },
        status=202,
    )


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
        return _json({"error": f"request body larger than {limit} bytes", "field": "body"}, status=413)
    except ApiError:
        raise
    except web.HTTPException as e:
        return _json({"error": e.reason, "field": None}, status=e.status)


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
    app.router.add_post("/api/whatif", whatif)
    app.router.add_get("/api/calibration", calibration)
    app.router.add_get("/api/slo", get_slo)
    app.router.add_put("/api/slo", put_slo)
    app.router.add_get("/api/optimizer", get_optimizer)
    app.router.add_post("/api/optimizer/accept", accept_optimizer)
    app[SERIES_CACHE] = {}
    app[OPENAPI] = orjson.dumps(openapi_document(token=settings.token is not None))
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    from opendt.api.grafana import add_grafana_routes  # it builds on this module's app keys and helpers

    add_grafana_routes(app)
    add_dashboard_routes(app)
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
