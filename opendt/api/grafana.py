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

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl
from aiohttp import web

from opendt.api.app import STATE, VIEW, ApiError, TwinView, _data_bounds, parse_time, simulated_frame

PREFIX = "/grafana"
DEFAULT_INTERVAL_MS = 60_000
DEFAULT_MAX_POINTS = 1000
MAX_ABS_MS = 8_640_000_000_000_000
"""JavaScript's Date range: a time outside it is refused as bad input."""

Point = tuple[int, float]
Params = dict[str, Any]


# -- plumbing ---------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object posted; an empty body is ``{}`` (the plugin's spec makes some bodies optional)."""
    raw = await request.read()  # an oversized body raises 413, answered by the api's error middleware
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "body: not valid JSON", "body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body: must be a JSON object", "body")
    return body


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _time(value: Any, name: str) -> int:
    """range.from / range.to: ISO-8601 (what Grafana sends) or epoch milliseconds."""
    if value is None:
        raise ApiError(400, f"{name}: missing", name)
    if isinstance(value, str):
        ms = parse_time(value, name)
    elif (f := _finite(value)) is not None:
        ms = int(f)
    else:
        raise ApiError(400, f"{name}: must be an ISO-8601 time or epoch milliseconds, got {value!r}", name)
    if abs(ms) > MAX_ABS_MS:
        raise ApiError(400, f"{name}: {value!r} is out of range", name)
    return ms


def _number(body: dict[str, Any], name: str, default: int, minimum: int) -> int:
    raw = body.get(name)
    if raw is None:
        return default
    value: float | None
    if isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            value = None
    else:
        value = _finite(raw)
    if value is None or not math.isfinite(value) or value < minimum:
        raise ApiError(400, f"{name}: must be a number >= {minimum}, got {raw!r}", name)
    return int(value)


# -- ad hoc filters ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagKey:
    type: str
    """Grafana's tag type: string | number."""
    column: str | None
    """The column a filter on this key selects rows by (None = it selects whole series)."""


TAG_KEYS: dict[str, TagKey] = {
    "source": TagKey("string", None),
    "topology_version": TagKey("number", "topology_version"),
    "window_status": TagKey("string", "status"),
}
_ORDER_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}
_OPS = ("=", "!=", "=~", "!~", "=|", "!=|", *_ORDER_OPS)


@dataclass(frozen=True)
class Filter:
    key: str
    op: str
    values: tuple[str, ...]
    pattern: re.Pattern[str] | None = None
    number: float | None = None

    def test(self, value: Any) -> bool:
        text = str(value)
        if self.op == "=":
            return text == self.values[0]
        if self.op == "!=":
            return text != self.values[0]
        if self.op in ("=~", "!~"):
            assert self.pattern is not None
            return (self.pattern.fullmatch(text) is not None) == (self.op == "=~")
        if self.op in ("=|", "!=|"):
            return (text in self.values) == (self.op == "=|")
        assert self.number is not None
        try:
            return _ORDER_OPS[self.op](float(text), self.number)
        except ValueError:
            return False


def _filters(body: dict[str, Any]) -> tuple[Filter, ...]:
    """``filters`` (plugin 0.6.4+) and ``adhocFilters`` (up to 0.6.3); all must hold."""
    out: list[Filter] = []
    for name in ("filters", "adhocFilters"):
        raw = body.get(name)
        if raw is None:
            continue
        if not isinstance(raw, list):
            raise ApiError(400, f"{name}: must be a list of {{key, operator, value}}", name)
        out.extend(_filter(item, f"{name}[{i}]") for i, item in enumerate(raw))
    return tuple(out)


def _filter(item: Any, where: str) -> Filter:
    if not isinstance(item, dict):
        raise ApiError(400, f"{where}: must be an object {{key, operator, value}}", where)
    key, op = item.get("key"), item.get("operator", "=")
    if not isinstance(key, str) or key not in TAG_KEYS:
        known = ", ".join(TAG_KEYS)
        raise ApiError(400, f"{where}.key: unknown key {key!r} (known: {known})", f"{where}.key")
    if not isinstance(op, str) or op not in _OPS:
        raise ApiError(400, f"{where}.operator: {op!r} is not one of {' '.join(_OPS)}", f"{where}.operator")
    many = item.get("values") if op in ("=|", "!=|") else None
    raw_values = many if many is not None else [item.get("value")]
    if not isinstance(raw_values, list) or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in raw_values
    ):
        raise ApiError(400, f"{where}.value: must be a string", f"{where}.value")
    values = tuple(str(v) for v in raw_values)
    pattern: re.Pattern[str] | None = None
    number: float | None = None
    if op in ("=~", "!~"):
        try:
            pattern = re.compile(values[0])
        except re.error as e:
            raise ApiError(400, f"{where}.value: not a regular expression ({e})", f"{where}.value") from None
    elif op in _ORDER_OPS:
        if TAG_KEYS[key].type != "number":
            raise ApiError(
                400, f"{where}.operator: {op} needs a numeric key, {key} is not", f"{where}.operator"
            )
        try:
            number = float(values[0])
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise ApiError(400, f"{where}.value: {op} needs a number, got {values[0]!r}", f"{where}.value")
    return Filter(key, op, values, pattern, number)


# -- the query window -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    start: int
    end: int
    """Inclusive, like Grafana's range."""
    bucket: int
    filters: tuple[Filter, ...] = ()

    def rows(self, df: pl.DataFrame) -> pl.DataFrame:
        """``df`` cut to the range (its ``timestamp_ms``) and to the row-level ad hoc filters."""
        df = df.filter(pl.col("timestamp_ms").is_between(self.start, self.end))
        for f in self.filters:
            column = TAG_KEYS[f.key].column
            if column is None or column not in df.columns:
                continue
            keep = [v for v in df[column].unique().to_list() if v is not None and f.test(v)]
            df = df.filter(pl.col(column).is_in(pl.Series(keep, dtype=df.schema[column])))
        return df

    def shows(self, series: Series) -> bool:
        return all(f.test(series.tags[f.key]) for f in self.filters if f.key in series.tags)

    def bucketed(self, df: pl.DataFrame, column: str, how: str) -> list[Point]:
        """``(bucket start, aggregate)`` of the finite values of ``column`` in rows cut by :meth:`rows`."""
        part = df.filter(pl.col(column).is_finite())
        if part.is_empty():
            return []
        value = pl.col(column)
        aggs = {"mean": value.mean(), "max": value.max(), "min": value.min(), "sum": value.sum()}
        agg = aggs[how] if how in aggs else value.last()
        out = (
            part.sort("timestamp_ms")
            .group_by(self.bucket_start(), maintain_order=True)
            .agg(agg.alias("v"))
            .sort("t")
        )
        return _points(out.iter_rows())

    def bucket_start(self) -> pl.Expr:
        return ((pl.col("timestamp_ms") - self.start) // self.bucket * self.bucket + self.start).alias("t")


def _points(rows: Any) -> list[Point]:
    return [(int(t), f) for t, v in rows if (f := _finite(v)) is not None]


def _ctx(body: dict[str, Any], view: TwinView) -> Ctx:
    rng = body.get("range")
    if rng is None:
        start, end = _data_bounds(view)
    elif isinstance(rng, dict):
        start, end = _time(rng.get("from"), "range.from"), _time(rng.get("to"), "range.to")
    else:
        raise ApiError(400, "range: must be an object {from, to}", "range")
    if end < start:
        raise ApiError(400, "range.to: must not be before range.from", "range.to")
    max_points = _number(body, "maxDataPoints", DEFAULT_MAX_POINTS, 1)
    interval = _number(body, "intervalMs", DEFAULT_INTERVAL_MS, 0)
    span = end - start + 1
    bucket = max(1, min(max(interval, -(-span // max_points)), span))  # one bucket at most spans the range
    return Ctx(start, end, bucket, _filters(body))


# -- the twin's data as frames of ``timestamp_ms`` ---------------------------------------------------------


def _measured(view: TwinView, ctx: Ctx) -> pl.DataFrame:
    """Measured power per instant: the sum over power sources (unknown if any value is not finite)."""
    if view.measured is None:
        return pl.DataFrame(schema={"timestamp_ms": pl.Int64, "power_draw": pl.Float64})
    power = pl.col("power_draw")
    return (
        ctx.rows(view.measured.select("timestamp_ms", "power_draw"))
        .group_by("timestamp_ms")
        .agg(pl.when(power.is_finite().fill_null(False).all()).then(power.sum()).alias("power_draw"))
    )


def _windows(view: TwinView) -> pl.DataFrame:
    if view.store is None:
        return pl.DataFrame(
            schema={
                "timestamp_ms": pl.Int64,
                "latency_s": pl.Float64,
                "compute_s": pl.Float64,
                "topology_version": pl.Int64,
                "status": pl.Utf8,
            }
        )
    return view.store.windows.select(
        pl.col("window_end").dt.epoch("ms").alias("timestamp_ms"),
        "latency_s",
        "compute_s",
        "topology_version",
        "status",
    )


def _calibration(view: TwinView) -> dict[str, list[tuple[int, float]]]:
    """Numeric calibrated parameters: path → ``(round time, value in effect after it)``, time ascending."""
    if view.calibration_series is None:
        return {}
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in sorted(view.calibration_series(), key=lambda e: int(e["time_ms"])):
        for path, v in (entry.get("in_effect") or {}).items():
            if (f := _finite(v)) is not None:
                out.setdefault(str(path), []).append((int(entry["time_ms"]), f))
    return out


def _parameters(view: TwinView) -> list[str]:
    """Calibrated parameter paths: the configured axes, then any other path a round reported."""
    axes: list[str] = []
    if view.calibration_view is not None:
        cal = view.calibration_view() or {}
        axes = [str(a) for a in cal.get("axes") or []]
    seen = dict.fromkeys(axes)
    if view.calibration_series is not None:
        for entry in view.calibration_series():
            seen.update(dict.fromkeys(str(p) for p in entry.get("in_effect") or {}))
    return list(seen)


# -- metrics ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    name: str
    points: list[Point]
    unit: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """A payload key of a metric (a builder-mode drop-down)."""

    name: str
    label: str
    choices: tuple[tuple[str, str], ...] = ()
    """``(value, label)``; empty = the values are the twin's (listed by ``/metric-payload-options``)."""
    default: str | None = None
    multi: bool = False

    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "label": self.label}
        doc["type"] = "multi-select" if self.multi else "select"
        if self.choices:
            doc["options"] = [{"label": label, "value": value} for value, label in self.choices]
        doc["placeholder"] = f"default: {self.default}" if self.default else "all"
        return doc


Build = Callable[[TwinView, Ctx, Params], list[Series]]


@dataclass(frozen=True)
class Metric:
    value: str
    label: str
    build: Build
    options: tuple[Option, ...]

    def doc(self) -> dict[str, Any]:
        return {"label": self.label, "value": self.value, "payloads": [o.doc() for o in self.options]}


def _aggregation(*names: str) -> Option:
    labels = {"mean": "Mean", "max": "Maximum", "min": "Minimum", "sum": "Sum"}
    return Option("aggregation", "Aggregation", tuple((n, labels[n]) for n in names), names[0])


FORMAT = Option("format", "Format", (("timeseries", "Time series"), ("table", "Table")), "timeseries")
STATS = _aggregation("mean", "max", "min")


def _named(base: str, how: str, default: str = "mean") -> str:
    return base if how == default else f"{base} ({how})"


def _power_measured(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    points = ctx.bucketed(_measured(view, ctx), "power_draw", p["aggregation"])
    return [Series(_named("Measured power", p["aggregation"]), points, "watt", {"source": "measured"})]


def _power_simulated(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    points = ctx.bucketed(ctx.rows(simulated_frame(view)), "power_draw", p["aggregation"])
    return [Series(_named("Simulated power", p["aggregation"]), points, "watt", {"source": "simulated"})]


def _carbon_intensity(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    points = ctx.bucketed(ctx.rows(simulated_frame(view)), "carbon_intensity", p["aggregation"])
    return [Series(_named("Carbon intensity", p["aggregation"]), points, "suffix: gCO2/kWh")]


def _carbon_emission(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    how = p["aggregation"]
    points = ctx.bucketed(ctx.rows(simulated_frame(view)), "carbon_emission", how)
    name = "Carbon emission per bucket" if how == "sum" else f"Carbon emission per export interval ({how})"
    return [Series(name, points, "massg", {"source": "simulated"})]


def _mape(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    measured = _measured(view, ctx).rename({"power_draw": "measured"})
    both = (
        ctx.rows(simulated_frame(view))
        .join(measured, on="timestamp_ms")
        .filter(pl.col("power_draw").is_finite() & pl.col("measured").is_finite() & (pl.col("measured") > 0))
        .with_columns(
            ((pl.col("power_draw") - pl.col("measured")).abs() / pl.col("measured") * 100).alias("ape")
        )
        .filter(pl.col("ape").is_finite())
    )
    if p["mode"] == "bucket":
        return [Series("MAPE", ctx.bucketed(both, "ape", "mean"), "percent")]
    per_bucket = (
        both.group_by(ctx.bucket_start())
        .agg(pl.col("ape").sum().alias("s"), pl.len().alias("n"))
        .sort("t")
        .select("t", (pl.col("s").cum_sum() / pl.col("n").cum_sum()).alias("v"))
    )
    return [Series("MAPE, cumulative", _points(per_bucket.iter_rows()), "percent")]


def _calibration_parameter(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    wanted: list[str] = p["parameter"]
    out: list[Series] = []
    for path, history in _calibration(view).items():
        if wanted and path not in wanted:
            continue
        df = pl.DataFrame(history, schema={"timestamp_ms": pl.Int64, "value": pl.Float64}, orient="row")
        points = ctx.bucketed(ctx.rows(df), "value", "last")
        before = [v for t, v in history if t < ctx.start]
        if before and (not points or points[0][0] > ctx.start):
            points.insert(0, (ctx.start, before[-1]))  # the value in effect when the range starts
        out.append(Series(path, points, "none"))
    return out


def _window_latency(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    quantities = {"latency": ("latency_s", "Window latency"), "compute": ("compute_s", "Window compute time")}
    column, base = quantities[p["quantity"]]
    points = ctx.bucketed(ctx.rows(_windows(view)), column, p["aggregation"])
    return [Series(_named(base, p["aggregation"]), points, "s")]


METRICS: dict[str, Metric] = {
    m.value: m
    for m in (
        Metric("power_measured", "Power, measured (W)", _power_measured, (STATS, FORMAT)),
        Metric("power_simulated", "Power, simulated (W)", _power_simulated, (STATS, FORMAT)),
        Metric("carbon_intensity", "Grid carbon intensity (gCO2/kWh)", _carbon_intensity, (STATS, FORMAT)),
        Metric(
            "carbon_emission",
            "Carbon emission, simulated (g)",
            _carbon_emission,
            (_aggregation("sum", "mean", "max", "min"), FORMAT),
        ),
        Metric(
            "mape",
            "MAPE, simulated vs measured power (%)",
            _mape,
            (
                Option("mode", "Mode", (("bucket", "Per bucket"), ("cumulative", "Cumulative")), "bucket"),
                FORMAT,
            ),
        ),
        Metric(
            "calibration_parameter",
            "Calibrated parameters (value in effect)",
            _calibration_parameter,
            (Option("parameter", "Parameter", multi=True), FORMAT),
        ),
        Metric(
            "window_latency",
            "Window latency (s)",
            _window_latency,
            (
                Option(
                    "quantity", "Quantity", (("latency", "Latency"), ("compute", "Compute time")), "latency"
                ),
                STATS,
                FORMAT,
            ),
        ),
    )
}


def _expand(target: str) -> list[str]:
    """Metric names of a target: ``(a|b)`` (a multi-value variable in regex format) is a and b, unescaped."""
    t = target.strip()
    parts = t[1:-1].split("|") if len(t) > 2 and t[0] == "(" and t[-1] == ")" else [t]
    return [re.sub(r"\\(.)", r"\1", part) for part in parts]


def _payload(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):  # a hand-written request or an old dashboard: the code editor's JSON text
        if not raw.strip():
            return {}
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, f"{where}: not valid JSON", where) from None
    if not isinstance(raw, dict):
        raise ApiError(400, f"{where}: must be a JSON object", where)
    return raw


def _params(metric: Metric, payload: dict[str, Any], where: str, view: TwinView) -> Params:
    """The metric's payload values, checked (unknown keys are ignored: builder mode may keep old ones)."""
    out: Params = {}
    for opt in metric.options:
        name = f"{where}.{opt.name}"
        raw = payload.get(opt.name)
        values = raw if isinstance(raw, list) else [] if raw in (None, "") else [raw]
        if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            raise ApiError(400, f"{name}: must be a string or a list of strings, got {raw!r}", name)
        texts = [str(v).strip() for v in values]
        allowed = [v for v, _ in opt.choices] if opt.choices else _parameters(view)
        bad = [t for t in texts if t not in allowed]
        if bad and (opt.choices or view.calibration_view is not None):
            known = ", ".join(allowed) or "none configured"
            raise ApiError(400, f"{name}: {bad[0]!r} is not one of: {known}", name)
        if opt.multi:
            out[opt.name] = texts
        elif len(texts) > 1:
            raise ApiError(400, f"{name}: takes one value, got {len(texts)}", name)
        else:
            out[opt.name] = texts[0] if texts else opt.default
    return out


def _timeseries(ref: str | None, s: Series) -> dict[str, Any]:
    el: dict[str, Any] = {"target": s.name, "datapoints": [[v, t] for t, v in s.points], "unit": s.unit}
    if ref is not None:
        el["refId"] = ref
    return el


def _table(ref: str | None, series: Sequence[Series]) -> dict[str, Any]:
    """One wide table: a ``Time`` column, one number column per series (``null`` where it has no value)."""
    times = sorted({t for s in series for t, _ in s.points})
    columns = [{"text": "Time", "type": "time"}] + [{"text": s.name, "type": "number"} for s in series]
    index = [dict(s.points) for s in series]
    el: dict[str, Any] = {
        "type": "table",
        "columns": columns,
        "rows": [[t, *(ix.get(t) for ix in index)] for t in times],
    }
    if ref is not None:
        el["refId"] = ref
    return el


# -- handlers ---------------------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    """Save & test: exactly 200 while the twin runs; 503 with the plugin's error shape when it failed."""
    status = request.app[STATE].status
    if status == "failed":
        message = "the twin has failed (see GET /api/status)"
        return _json({"error": {"code": "TWIN_FAILED", "message": message}}, status=503)
    return _json({"status": "ok", "twin": status})


async def metrics(request: web.Request) -> web.Response:
    body = await _body(request)
    if body.get("payload") is not None and not isinstance(body["payload"], dict):
        raise ApiError(400, "payload: must be a JSON object", "payload")
    return _json([m.doc() for m in METRICS.values()])


async def metric_payload_options(request: web.Request) -> web.Response:
    body = await _body(request)
    if not body:
        return _json([])
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
        return _json([{"label": label, "value": value} for value, label in option.choices])
    return _json([{"label": p, "value": p} for p in _parameters(request.app[VIEW])])


async def query(request: web.Request) -> web.Response:
    body = await _body(request)
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
        payload = _payload(raw_payload, f"{where}.payload")
        for metric_name in _expand(name):
            metric = METRICS.get(metric_name)
            if metric is None:
                known = ", ".join(METRICS)
                raise ApiError(
                    400,
                    f"{where}.target: unknown metric {metric_name!r} in target {ref or i} (known: {known})",
                    f"{where}.target",
                )
            jobs.append((ref, metric, _params(metric, payload, f"{where}.payload", view)))
    ctx = _ctx(body, view)
    out: list[dict[str, Any]] = []
    for ref, metric, params in jobs:
        series = [s for s in metric.build(view, ctx, params) if s.points and ctx.shows(s)]
        if params["format"] == "table":
            out.extend([_table(ref, series)] if series else [])
        else:
            out.extend(_timeseries(ref, s) for s in series)
    return _json(out)


def _versions(view: TwinView, ctx: Ctx | None) -> list[int]:
    frames = [simulated_frame(view).select("timestamp_ms", "topology_version")]
    frames.append(_windows(view).select("timestamp_ms", "topology_version"))
    seen: set[int] = set()
    for df in frames:
        part = df if ctx is None else ctx.rows(df)
        seen.update(int(v) for v in part["topology_version"].drop_nulls().unique().to_list())
    return sorted(seen)


def _statuses(view: TwinView) -> list[str]:
    return sorted(str(s) for s in _windows(view)["status"].drop_nulls().unique().to_list())


def _clusters(view: TwinView) -> list[str]:
    return [] if view.box is None else [c.name for c in view.box.current.topology.clusters]


Variable = Callable[[TwinView, Ctx | None], list[tuple[str, str]]]
VARIABLES: dict[str, Variable] = {
    "metrics": lambda view, _: [(m.label, m.value) for m in METRICS.values()],
    "calibration_parameters": lambda view, _: [(p, p) for p in _parameters(view)],
    "clusters": lambda view, _: [(c, c) for c in _clusters(view)],
    "topology_versions": lambda view, ctx: [(f"v{v}", str(v)) for v in _versions(view, ctx)],
    "sources": lambda view, _: [("Measured", "measured"), ("Simulated", "simulated")],
}


async def variable(request: web.Request) -> web.Response:
    body = await _body(request)
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
        start, end = _time(rng.get("from"), "range.from"), _time(rng.get("to"), "range.to")
        if end < start:
            raise ApiError(400, "range.to: must not be before range.from", "range.to")
        ctx = Ctx(start, end, 1)
    items = fn(view, ctx)
    return _json(
        {
            "fields": [
                {"name": "__text", "values": [text for text, _ in items]},
                {"name": "__value", "values": [value for _, value in items]},
            ]
        }
    )


async def tag_keys(request: web.Request) -> web.Response:
    await _body(request)
    return _json([{"type": k.type, "text": name} for name, k in TAG_KEYS.items()])


async def tag_values(request: web.Request) -> web.Response:
    body = await _body(request)
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
    return _json([{"text": v} for v in values])


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
