"""The Grafana JSON datasource (plugin ``simpod-json-datasource`` 0.6.x) served under ``/grafana``.

Protocol: ``shared/grafana/README.md``. The datasource URL is ``http://<api>/grafana`` (no trailing
slash): ``GET /grafana`` (and ``/grafana/``) is "Save & test", the plugin POSTs to ``/grafana/metrics``,
``/metric-payload-options``, ``/query``, ``/variable``, ``/tag-keys`` and ``/tag-values``.

Answers stay in the "strict profile" of the plugin's OpenAPI file (README §12.3): ``/query`` returns
timeseries elements ``{"target", "refId", "unit", "datapoints": [[value, epoch_ms], …]}`` with finite
values only (empty buckets and non-finite values are dropped, never sent as ``null``; a series with no
point is left out, so an empty store answers ``[]``), ``/variable`` a data frame with ``__text`` and
``__value`` fields. The one exception is a target whose payload asks for ``"format": "table"``: Grafana's
table (a list of rows of cells, ``null`` where a series has no value at that time) cannot be written so
that the upstream file accepts it (its defect 1), so that answer conforms to the file with that defect
corrected.

Metrics (``targets[].target``; all datacenter-wide, the twin keeps no per-cluster series). Payload keys
(all optional, values may arrive as strings or one-element lists) are listed by ``/metrics``:

* ``power_measured``, ``power_simulated`` (W): ``aggregation`` mean (default) | max | min per bucket.
* ``carbon_intensity`` (gCO2/kWh, the grid intensity the simulation used): ``aggregation`` as above.
* ``carbon_emission`` (g): ``aggregation`` sum (default: grams emitted in the bucket) | mean | max | min
  (grams per export interval).
* ``mape`` (%): |simulated − measured| / measured at the instants both have (measured > 0); ``mode``
  bucket (default: MAPE of each bucket) | cumulative (MAPE from range.from to the end of each bucket).
* ``calibration_parameter``: one series per calibrated parameter path, the value in effect after each
  calibration round (last round of a bucket; the value in effect at range.from is carried in); only
  numeric parameters; ``parameter`` (multi-select) restricts the paths.
* ``window_latency`` (s): per window, at the window's end; ``quantity`` latency (default: window close to
  durable result) | compute (engine time), ``aggregation`` mean (default) | max | min.

Every metric also takes ``format``: timeseries (default) | table. A target of the form ``(a|b)`` (a
multi-value dashboard variable in Grafana's regex format) is the list of metrics a and b.

Buckets: width = max(``intervalMs`` (default 60 s), ceil((to − from + 1 ms) / ``maxDataPoints``)
(default 1000)), at most the whole range, aligned on ``range.from``, so a series never has more than
``maxDataPoints`` points; a point's time is its bucket's start; the range is ``from <= t <= to``.

Ad hoc filters (``filters``, or ``adhocFilters`` from plugin ≤ 0.6.3), keys from ``/tag-keys``:
``source`` (measured | simulated, per series), ``topology_version`` (per row of the simulated results and
of the window journal) and ``window_status`` (per window). A filter applies only to the series and rows
that carry its key. Operators: ``=``, ``!=``, ``=~``, ``!~`` (regex, whole value), ``=|``, ``!=|`` (one
of ``values``), and ``<``, ``>``, ``<=``, ``>=`` for ``topology_version``.

Bad input is a 400 ``{"error", "field"}`` (Grafana shows ``error``), naming the field, e.g.
``targets[0].target``; unknown request fields are ignored. Answers are written with orjson, and every
value is checked finite before it is put in an answer, so ``NaN``/``Infinity`` never reach the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from opendt.api.grafana.metrics import METRICS, Metric, expand, metric_params, payload_of, table, timeseries
from opendt.api.grafana.query import (
    PREFIX,
    TAG_KEYS,
    Ctx,
    Params,
    calibrated_parameters,
    json_answer,
    query_ctx,
    query_time,
    read_body,
    windows_frame,
)
from opendt.api.http import ApiError
from opendt.api.readmodel import TwinView, simulated_frame
from opendt.api.routes import STATE, VIEW

__all__ = ["METRICS", "add_grafana_routes"]


# -- handlers ---------------------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    """Save & test: exactly 200 while the twin runs; 503 with the plugin's error shape when it failed."""
    status = request.app[STATE].status
    if status == "failed":
        message = "the twin has failed (see GET /api/status)"
        return json_answer({"error": {"code": "TWIN_FAILED", "message": message}}, status=503)
    return json_answer({"status": "ok", "twin": status})


async def metrics(request: web.Request) -> web.Response:
    body = await read_body(request)
    if body.get("payload") is not None and not isinstance(body["payload"], dict):
        raise ApiError(400, "payload: must be a JSON object", "payload")
    return json_answer([m.doc() for m in METRICS.values()])


async def metric_payload_options(request: web.Request) -> web.Response:
    body = await read_body(request)
    if not body:
        return json_answer([])
    name = body.get("metric")
    metric = METRICS.get(name) if isinstance(name, str) else None
    if metric is None:
        raise ApiError(400, f"metric: unknown metric {body.get('metric')!r}", "metric")
    option = next((o for o in metric.options if o.name == body.get("name")), None)
    if option is None:
        names = ", ".join(o.name for o in metric.options)
        raise ApiError(
            400, f"name: {metric.value} has no payload {body.get('name')!r} (has: {names})", "name"
        )
    if option.choices:
        return json_answer([{"label": label, "value": value} for value, label in option.choices])
    return json_answer([{"label": p, "value": p} for p in calibrated_parameters(request.app[VIEW])])


async def query(request: web.Request) -> web.Response:
    body = await read_body(request)
    view = request.app[VIEW]
    targets = body.get("targets", [])
    if not isinstance(targets, list):
        raise ApiError(400, "targets: must be a list", "targets")
    jobs: list[tuple[str | None, Metric, Params]] = []
    for i, target in enumerate(targets):
        where = f"targets[{i}]"
        if not isinstance(target, dict):
            raise ApiError(400, f"{where}: must be an object", where)
        if target.get("hide") is True or target.get("target") in (None, ""):
            continue  # hidden, or no metric chosen yet (the plugin itself drops these)
        name, ref = target["target"], target.get("refId")
        if not isinstance(name, str):
            raise ApiError(400, f"{where}.target: must be a string", f"{where}.target")
        if ref is not None and not isinstance(ref, str):
            raise ApiError(400, f"{where}.refId: must be a string", f"{where}.refId")
        raw_payload = target["payload"] if "payload" in target else target.get("data")
        payload = payload_of(raw_payload, f"{where}.payload")
        for metric_name in expand(name):
            metric = METRICS.get(metric_name)
            if metric is None:
                known = ", ".join(METRICS)
                raise ApiError(
                    400,
                    f"{where}.target: unknown metric {metric_name!r} in target {ref or i} (known: {known})",
                    f"{where}.target",
                )
            jobs.append((ref, metric, metric_params(metric, payload, f"{where}.payload", view)))
    ctx = query_ctx(body, view)
    out: list[dict[str, Any]] = []
    for ref, metric, params in jobs:
        series = [s for s in metric.build(view, ctx, params) if s.points and ctx.shows(s)]
        if params["format"] == "table":
            out.extend([table(ref, series)] if series else [])
        else:
            out.extend(timeseries(ref, s) for s in series)
    return json_answer(out)


def _versions(view: TwinView, ctx: Ctx | None) -> list[int]:
    frames = [simulated_frame(view).select("timestamp_ms", "topology_version")]
    frames.append(windows_frame(view).select("timestamp_ms", "topology_version"))
    seen: set[int] = set()
    for df in frames:
        part = df if ctx is None else ctx.rows(df)
        seen.update(int(v) for v in part["topology_version"].drop_nulls().unique().to_list())
    return sorted(seen)


def _statuses(view: TwinView) -> list[str]:
    return sorted(str(s) for s in windows_frame(view)["status"].drop_nulls().unique().to_list())


def _clusters(view: TwinView) -> list[str]:
    return [] if view.box is None else [c.name for c in view.box.current.topology.clusters]


Variable = Callable[[TwinView, Ctx | None], list[tuple[str, str]]]
VARIABLES: dict[str, Variable] = {
    "metrics": lambda view, _: [(m.label, m.value) for m in METRICS.values()],
    "calibration_parameters": lambda view, _: [(p, p) for p in calibrated_parameters(view)],
    "clusters": lambda view, _: [(c, c) for c in _clusters(view)],
    "topology_versions": lambda view, ctx: [(f"v{v}", str(v)) for v in _versions(view, ctx)],
    "sources": lambda view, _: [("Measured", "measured"), ("Simulated", "simulated")],
}


async def variable(request: web.Request) -> web.Response:
    body = await read_body(request)
    view = request.app[VIEW]
    payload = body.get("payload")
    if not isinstance(payload, dict):
        raise ApiError(400, "payload: must be an object {target: <variable query>}", "payload")
    target = payload.get("target")
    fn = VARIABLES.get(target.strip()) if isinstance(target, str) else None
    if fn is None:
        known = ", ".join(VARIABLES)
        raise ApiError(
            400, f"payload.target: unknown variable query {target!r} (known: {known})", "payload.target"
        )
    ctx = None
    if body.get("range") is not None:
        rng = body["range"]
        if not isinstance(rng, dict):
            raise ApiError(400, "range: must be an object {from, to}", "range")
        start, end = query_time(rng.get("from"), "range.from"), query_time(rng.get("to"), "range.to")
        if end < start:
            raise ApiError(400, "range.to: must not be before range.from", "range.to")
        ctx = Ctx(start, end, 1)
    items = fn(view, ctx)
    return json_answer(
        {
            "fields": [
                {"name": "__text", "values": [text for text, _ in items]},
                {"name": "__value", "values": [value for _, value in items]},
            ]
        }
    )


async def tag_keys(request: web.Request) -> web.Response:
    await read_body(request)
    return json_answer([{"type": k.type, "text": name} for name, k in TAG_KEYS.items()])


async def tag_values(request: web.Request) -> web.Response:
    body = await read_body(request)
    key = body.get("key")
    if key is None:
        raise ApiError(400, "key: missing", "key")
    view = request.app[VIEW]
    values: list[str]
    if key == "source":
        values = ["measured", "simulated"]
    elif key == "topology_version":
        values = [str(v) for v in _versions(view, None)]
    elif key == "window_status":
        values = _statuses(view)
    else:
        raise ApiError(400, f"key: unknown key {key!r} (known: {', '.join(TAG_KEYS)})", "key")
    return json_answer([{"text": v} for v in values])


def add_grafana_routes(app: web.Application) -> None:
    """Serve the datasource under ``/grafana`` on an app made by :func:`opendt.api.app.create_app`."""
    app.router.add_get(PREFIX, health)
    app.router.add_get(PREFIX + "/", health)
    app.router.add_post(PREFIX + "/metrics", metrics)
    app.router.add_post(PREFIX + "/metric-payload-options", metric_payload_options)
    app.router.add_post(PREFIX + "/query", query)
    app.router.add_post(PREFIX + "/variable", variable)
    app.router.add_post(PREFIX + "/tag-keys", tag_keys)
    app.router.add_post(PREFIX + "/tag-values", tag_values)
