"""The Grafana datasource's query side: bounded parsing of what the plugin posts (times, numbers, ad hoc
filters), the query window (:class:`Ctx`: range, bucket width, filters) and the twin's data as frames of
``timestamp_ms`` read through the read model."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl
from aiohttp import web

from opendt.api import http
from opendt.api.http import ApiError, parse_time
from opendt.api.readmodel import TwinView, data_bounds, measured_power
from opendt.metrics import How, bucket
from opendt.models.bounds import MAX_TIME_MS, MIN_TIME_MS

PREFIX = "/grafana"
DEFAULT_INTERVAL_MS = 60_000
DEFAULT_MAX_POINTS = 1000

Point = tuple[int, float]
Params = dict[str, Any]


# -- plumbing ---------------------------------------------------------------------------------------------


def json_answer(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object posted; an empty body is ``{}`` (the plugin's spec makes some bodies optional)."""
    raw = await http.read_body(request)  # bounded in size and time, like every body
    if not raw.strip():
        return {}
    body = http.parse_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "body: must be a JSON object", "body")
    return body


def finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def query_time(value: Any, name: str) -> int:
    """range.from / range.to: ISO-8601 (what Grafana sends) or epoch milliseconds."""
    if value is None:
        raise ApiError(400, f"{name}: missing", name)
    if isinstance(value, str):
        return parse_time(value, name)  # within the model's time bounds
    f = finite(value)
    if f is None:
        shown = repr(value)[:40]
        raise ApiError(400, f"{name}: must be an ISO-8601 time or epoch milliseconds, got {shown}", name)
    if not MIN_TIME_MS <= f <= MAX_TIME_MS:
        raise ApiError(400, f"{name}: {f:.15g} is out of range [1970-01-01, 2200-01-01]", name)
    return int(f)


def _number(body: dict[str, Any], name: str, default: int, minimum: int) -> int:
    raw = body.get(name)
    if raw is None:
        return default
    value: float | None
    if isinstance(raw, str):
        try:
            value = float(raw) if raw.isascii() else None
        except ValueError:
            value = None
    else:
        value = finite(raw)
    if value is None or not math.isfinite(value) or value < minimum:
        raise ApiError(400, f"{name}: must be a number >= {minimum}, got {repr(raw)[:40]}", name)
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


def query_filters(body: dict[str, Any]) -> tuple[Filter, ...]:
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
class Series:
    name: str
    points: list[Point]
    unit: str
    tags: dict[str, str] = field(default_factory=dict)


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

    def bucketed(self, df: pl.DataFrame, column: str, how: How) -> list[Point]:
        """``(bucket start, aggregate)`` of the finite values of ``column`` in rows cut by :meth:`rows`
        (buckets aligned on the range start; the range is inclusive)."""
        if df.is_empty():
            return []
        t, v = bucket(
            df["timestamp_ms"].cast(pl.Int64).to_numpy(),
            df[column].cast(pl.Float64).to_numpy(),
            self.start,
            self.end + 1,
            self.bucket,
            how,
            origin=self.start,
        )
        return points(zip(t.tolist(), v.tolist(), strict=True))


def points(rows: Any) -> list[Point]:
    return [(int(t), f) for t, v in rows if (f := finite(v)) is not None]


def query_ctx(body: dict[str, Any], view: TwinView) -> Ctx:
    rng = body.get("range")
    if rng is None:
        start, end = data_bounds(view)
    elif isinstance(rng, dict):
        start, end = query_time(rng.get("from"), "range.from"), query_time(rng.get("to"), "range.to")
    else:
        raise ApiError(400, "range: must be an object {from, to}", "range")
    if end < start:
        raise ApiError(400, "range.to: must not be before range.from", "range.to")
    max_points = _number(body, "maxDataPoints", DEFAULT_MAX_POINTS, 1)
    interval = _number(body, "intervalMs", DEFAULT_INTERVAL_MS, 0)
    span = end - start + 1
    bucket = max(1, min(max(interval, -(-span // max_points)), span))  # one bucket at most spans the range
    return Ctx(start, end, bucket, query_filters(body))


# -- the twin's data as frames of ``timestamp_ms`` ---------------------------------------------------------


def measured_frame(view: TwinView, ctx: Ctx) -> pl.DataFrame:
    """Measured power per instant in the query's range (the read model's sum over power sources)."""
    return ctx.rows(measured_power(view))


def windows_frame(view: TwinView) -> pl.DataFrame:
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


def calibration_history(view: TwinView) -> dict[str, list[tuple[int, float]]]:
    """Numeric calibrated parameters: path → ``(round time, value in effect after it)``, time ascending."""
    if view.calibration_series is None:
        return {}
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in sorted(view.calibration_series(), key=lambda e: int(e["time_ms"])):
        for path, v in (entry.get("in_effect") or {}).items():
            if (f := finite(v)) is not None:
                out.setdefault(str(path), []).append((int(entry["time_ms"]), f))
    return out


def calibrated_parameters(view: TwinView) -> list[str]:
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
