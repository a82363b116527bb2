"""The JSON routes: health, status, power and carbon series, the window journal, the topology, the
calibrator, the SLOs and the optimizer. What-if is :mod:`opendt.api.whatif`; the Grafana datasource
:mod:`opendt.api.grafana`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import polars as pl
from aiohttp import web

from opendt.api.http import (
    ApiError,
    json_body,
    json_response,
    parse_int,
    parse_time,
    query_limit,
    require_token,
)
from opendt.api.readmodel import (
    TwinView,
    activity,
    data_bounds,
    downsample,
    measured_power,
    power_metrics,
    simulated_frame,
    simulated_mean_power,
)
from opendt.models.bounds import MAX_REASON_LEN
from opendt.models.messages import iso_ms
from opendt.models.topology import TopologyError, parse_topology
from opendt.optimizer.component import OptimizerError
from opendt.optimizer.slo import SloError, SloWatcher, parse_slo
from opendt.twin.status import TwinState

STATE = web.AppKey("state", TwinState)
VIEW = web.AppKey("view", TwinView)
SERIES_CACHE = web.AppKey("series_cache", dict)
"""Rendered series answers by (path, start, end, step, result rows): a new window invalidates them."""


RANGE_PARAMS = frozenset({"start", "end", "step_s"})
MAX_STEP_S = 366 * 86_400  # a step_s of more than a year is refused when the range follows the data
QUERY_PARAMS: dict[str, frozenset[str]] = {
    "/api/power": RANGE_PARAMS,
    "/api/carbon": RANGE_PARAMS,
    "/api/activity": RANGE_PARAMS,
    "/api/windows": frozenset({"limit"}),
    "/api/optimizer": frozenset({"limit"}),
}
"""The query parameters each route of ``/api/``, ``/health`` and ``/metrics`` takes; any other is a 400 naming
it."""


@web.middleware
async def reject_unknown_query(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """400 for a query parameter the route does not take (``/api/…``, ``/health``, ``/metrics``), before the
    handler."""
    path = request.path
    if path.startswith("/api/") or path in ("/health", "/metrics"):
        info = request.match_info
        route = info.route.resource.canonical if info.route.resource is not None else path
        unknown = sorted(set(request.query) - QUERY_PARAMS.get(route, frozenset()))
        if unknown:
            allowed = sorted(QUERY_PARAMS.get(route, frozenset()))
            takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
            raise ApiError(400, f"unknown query parameter {unknown[0]!r} ({route}: {takes})", unknown[0])
    return await handler(request)


def _range(request: web.Request, default_step_s: int = 60) -> tuple[int, int, int]:
    q = request.query
    start = parse_time(q["start"], "start") if "start" in q else None
    end = parse_time(q["end"], "end") if "end" in q else None
    view = request.app[VIEW]
    lo, hi = data_bounds(view)
    start = lo if start is None else start
    end = hi + 1 if end is None else end
    if end <= start:
        raise ApiError(400, "end: must be after start", "end")
    span_s = -(-(end - start) // 1000)  # the step is at most the range, in whole seconds
    if "step_s" not in q:
        return start, end, min(default_step_s, span_s) * 1000
    if "start" in q and "end" in q:  # a range the client chose: a step longer than it is a mistake
        return start, end, parse_int(q["step_s"], "step_s", 1, span_s) * 1000
    # a range that follows the data (empty or short so far, as in a twin that just started): any sane step
    # is accepted and clamped to the data so far
    return start, end, min(parse_int(q["step_s"], "step_s", 1, MAX_STEP_S), span_s) * 1000


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    problems = [] if state.liveness is None else state.liveness.problems()
    if state.status == "failed":
        problems.insert(0, "the daemon failed (see its log)")
    doc: dict[str, Any] = {"status": "failing" if problems else "ok", "twin": state.status}
    if problems:
        doc["problems"] = problems
    return json_response(doc, status=503 if problems else 200)


async def status(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].snapshot())


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
        measured = measured_power(view)
        return {
            "start": iso_ms(start),
            "end": iso_ms(end),
            "step_s": step // 1000,
            "unit": "W",
            "measured": downsample(measured, "power_draw", start, end, step),
            "simulated": downsample(sim, "power_draw", start, end, step),
            "simulated_mean": simulated_mean_power(sim, start, end, step),
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


async def activity_series(request: web.Request) -> web.Response:
    start, end, step = _range(request, default_step_s=3600)
    view = request.app[VIEW]

    def render() -> dict[str, Any]:
        return {
            "start": iso_ms(start),
            "end": iso_ms(end),
            "step_s": step // 1000,
            **activity(simulated_frame(view), start, end, step),
            "units": {
                "tasks_completed": "tasks per step",
                "cpu_work": "GHz·s per step",
                "efficiency": "GHz·s per kWh",
                "tasks_per_kwh": "tasks per kWh",
            },
        }

    return _cached(request, ("activity", start, end, step), render)


async def windows(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    limit = query_limit(request, 10_000)
    if view.store is None:
        return json_response({"windows": [], "total": 0})
    w = view.store.windows.tail(limit).with_columns(
        pl.col("window_start").dt.epoch("ms"), pl.col("window_end").dt.epoch("ms")
    )
    rows = [
        {**r, "window_start": iso_ms(r["window_start"]), "window_end": iso_ms(r["window_end"])}
        for r in w.iter_rows(named=True)
    ]
    return json_response({"windows": rows, "total": view.store.windows.height})


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
    return json_response(_topology_doc(request.app[VIEW]))


async def put_topology(request: web.Request) -> web.Response:
    require_token(request)
    view = request.app[VIEW]
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(422, "body: must be a JSON object", "body")
    doc = body.get("topology", body)
    reason = body.get("reason", "set via the API") if "topology" in body else "set via the API"
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LEN:
        raise ApiError(422, f"reason: must be a string of at most {MAX_REASON_LEN} characters", "reason")
    try:
        topo = parse_topology(doc, source="request body")
    except TopologyError as e:
        field = ".".join(p for p in ("topology" if "topology" in body else "", e.field) if p)
        raise ApiError(422, str(e), field or "body") from None
    if view.writer is None:
        raise ApiError(404, "no twin to apply a topology to")
    version = (await view.writer.write(topo, "api", reason)).version
    return json_response({"version": version, "source": "api", "applies": "from the next window"}, status=202)


async def reset_topology(request: web.Request) -> web.Response:
    require_token(request)
    view = request.app[VIEW]
    if view.writer is None or view.box is None:
        raise ApiError(404, "no twin to reset")
    version = (await view.writer.write(view.box.physical, "api", "reset to the physical topology")).version
    return json_response({"version": version, "source": "api", "applies": "from the next window"}, status=202)


async def calibration(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    if view.calibration_view is None:
        raise ApiError(404, "calibration is disabled (calibration.enabled: false)")
    doc = dict(view.calibration_view())
    doc["series"] = view.calibration_series() if view.calibration_series is not None else []
    doc["rounds_detail"] = view.calibration_rounds() if view.calibration_rounds is not None else []
    return json_response(doc)


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
    return json_response(_slo_doc(watcher))


async def put_slo(request: web.Request) -> web.Response:
    require_token(request)
    watcher = request.app[VIEW].slo
    body = await json_body(request)
    if watcher is None:
        raise ApiError(404, "no SLOs loaded (optimizer.slo_path missing or invalid at start)")
    if isinstance(body, dict) and isinstance(body.get("slo"), dict):
        # what GET answers: {"slo": {...}, "path", "changes", "rejections"} (the last three are read-only)
        extra = sorted(set(body) - {"slo", "path", "changes", "rejections"})
        if extra:
            raise ApiError(422, f"unknown field {extra[0]!r} (send the SLOs, or GET's answer)", extra[0])
        body = body["slo"]
    if request.app[VIEW].writer is None:
        raise ApiError(404, "no twin to apply SLOs to (opendt serve is read-only)")
    try:
        slo = parse_slo(body, source="body")
    except SloError as e:
        raise ApiError(422, str(e), e.field or "body") from None
    try:
        await watcher.update(slo)
    except OSError as e:
        raise ApiError(409, f"cannot write {watcher.path}: {e}", None) from None
    return json_response(_slo_doc(watcher))


async def get_optimizer(request: web.Request) -> web.Response:
    opt = request.app[VIEW].optimizer
    if opt is None:
        raise ApiError(404, "the optimizer is disabled (optimizer.enabled: false)")
    return json_response(opt.view(query_limit(request, 1000)))


async def accept_optimizer(request: web.Request) -> web.Response:
    require_token(request)
    opt = request.app[VIEW].optimizer
    index: int | None = None
    if request.can_read_body:
        body = await json_body(request)
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
    if r.accepted_version is None:  # optimizer.accept: plan
        plan = opt.planner.view()
        assert plan is not None
        return json_response(
            {
                "round": r.index,
                "plan": plan,
                "applies": "as a plan: the twin keeps twinning the physical datacenter and forecasts the "
                "plan every optimizer.forecast_every_s; done when dc.topology shows it",
            },
            status=202,
        )
    return json_response(
        {
            "version": r.accepted_version,
            "source": "optimizer",
            "round": r.index,
            "applies": "from the next window",
        },
        status=202,
    )


def add_routes(app: web.Application) -> None:
    """Register the JSON routes on ``app`` (made by :func:`opendt.api.app.create_app`)."""
    app.router.add_get("/health", health)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/power", power)
    app.router.add_get("/api/carbon", carbon)
    app.router.add_get("/api/activity", activity_series)
    app.router.add_get("/api/windows", windows)
    app.router.add_get("/api/topology", get_topology)
    app.router.add_put("/api/topology", put_topology)
    app.router.add_post("/api/topology/reset", reset_topology)
    app.router.add_get("/api/calibration", calibration)
    app.router.add_get("/api/slo", get_slo)
    app.router.add_put("/api/slo", put_slo)
    app.router.add_get("/api/optimizer", get_optimizer)
    app.router.add_post("/api/optimizer/accept", accept_optimizer)
