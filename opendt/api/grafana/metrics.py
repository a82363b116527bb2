"""The Grafana datasource's metrics: each metric's payload options and how it builds its series from the
read model (:mod:`opendt.api.grafana.query`), and the answer formats (timeseries, table)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import polars as pl

from opendt.api.grafana.query import (
    Ctx,
    Params,
    Series,
    calibrated_parameters,
    calibration_history,
    measured_frame,
    points,
    windows_frame,
)
from opendt.api.http import ApiError
from opendt.api.readmodel import JOULES_PER_KWH, TwinView, simulated_frame
from opendt.metrics import ape, bucket

# -- metrics ----------------------------------------------------------------------------------------------


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
    points = ctx.bucketed(measured_frame(view, ctx), "power_draw", p["aggregation"])
    return [Series(_named("Measured power", p["aggregation"]), points, "watt", {"source": "measured"})]


def _power_simulated(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    points = ctx.bucketed(ctx.rows(simulated_frame(view)), "power_draw", p["aggregation"])
    return [Series(_named("Simulated power", p["aggregation"]), points, "watt", {"source": "simulated"})]


def _carbon_intensity(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    points = ctx.bucketed(ctx.rows(simulated_frame(view)), "carbon_intensity", p["aggregation"])
    return [Series(_named("Carbon intensity", p["aggregation"]), points, "suffix: gCO2/kWh")]


def _summed(column: str, title: str, unit: str) -> Build:
    """A per-interval quantity of the simulation (carbon emission, tasks completed, CPU work): summed per
    bucket by default, or a statistic of its export intervals."""

    def build(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
        how = p["aggregation"]
        points = ctx.bucketed(ctx.rows(simulated_frame(view)), column, how)
        name = f"{title} per bucket" if how == "sum" else f"{title} per export interval ({how})"
        return [Series(name, points, unit, {"source": "simulated"})]

    return build


def _mape(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    measured = measured_frame(view, ctx).rename({"power_draw": "measured"})
    both = ctx.rows(simulated_frame(view)).join(measured, on="timestamp_ms")
    errors = both.select(
        "timestamp_ms",
        pl.Series("ape", ape(both["power_draw"].to_numpy(), both["measured"].cast(pl.Float64).to_numpy())),
    )
    if p["mode"] == "bucket":
        return [Series("MAPE", ctx.bucketed(errors, "ape", "mean"), "percent")]
    ts, values = errors["timestamp_ms"].to_numpy(), errors["ape"].to_numpy()
    t, sums = bucket(ts, values, ctx.start, ctx.end + 1, ctx.bucket, "sum", origin=ctx.start)
    _, counts = bucket(ts, values, ctx.start, ctx.end + 1, ctx.bucket, "count", origin=ctx.start)
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.cumsum(sums) / np.cumsum(counts)
    return [Series("MAPE, cumulative", points(zip(t.tolist(), total.tolist(), strict=True)), "percent")]


def _efficiency(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    """Work per kWh of each bucket: the bucket's sums of CPU work (or tasks) over its simulated energy."""
    rows = ctx.rows(simulated_frame(view))
    of = p["of"]
    work = dict(ctx.bucketed(rows, "cpu_work" if of == "cpu_work" else "tasks_completed", "sum"))
    energy = ctx.bucketed(rows, "energy_usage", "sum")
    points = [(t, work[t] / (j / JOULES_PER_KWH)) for t, j in energy if j > 0 and t in work]
    if of == "cpu_work":
        return [Series("CPU work per kWh", points, "suffix: GHz·s/kWh", {"source": "simulated"})]
    return [Series("Tasks completed per kWh", points, "suffix: tasks/kWh", {"source": "simulated"})]


def _calibration_parameter(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    wanted: list[str] = p["parameter"]
    out: list[Series] = []
    for path, history in calibration_history(view).items():
        if wanted and path not in wanted:
            continue
        df = pl.DataFrame(history, schema={"timestamp_ms": pl.Int64, "value": pl.Float64}, orient="row")
        points = ctx.bucketed(ctx.rows(df), "value", "last")
        before = [v for t, v in history if t < ctx.start]
        if before and (not points or points[0][0] > ctx.start):
            points.insert(0, (ctx.start, before[-1]))  # the value in effect when the range starts
        out.append(Series(path, points, "none"))
    return out


def _engine_divergence(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    """The cross-checks' max relative energy error per export interval (builtin engine vs OpenDC)."""
    checks = [] if view.divergence is None else view.divergence()
    df = pl.DataFrame(checks, schema={"timestamp_ms": pl.Int64, "value": pl.Float64}, orient="row")
    points = ctx.bucketed(ctx.rows(df), "value", "max")
    return [Series("Engine divergence (max relative energy error)", points, "none")]


def _window_latency(view: TwinView, ctx: Ctx, p: Params) -> list[Series]:
    quantities = {"latency": ("latency_s", "Window latency"), "compute": ("compute_s", "Window compute time")}
    column, base = quantities[p["quantity"]]
    points = ctx.bucketed(ctx.rows(windows_frame(view)), column, p["aggregation"])
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
            _summed("carbon_emission", "Carbon emission", "massg"),
            (_aggregation("sum", "mean", "max", "min"), FORMAT),
        ),
        Metric(
            "tasks_completed",
            "Tasks completed, simulated",
            _summed("tasks_completed", "Tasks completed", "none"),
            (_aggregation("sum", "mean", "max", "min"), FORMAT),
        ),
        Metric(
            "cpu_work",
            "CPU work delivered, simulated (GHz·s)",
            _summed("cpu_work", "CPU work", "suffix: GHz·s"),
            (_aggregation("sum", "mean", "max", "min"), FORMAT),
        ),
        Metric(
            "efficiency",
            "Efficiency: work per kWh, simulated",
            _efficiency,
            (
                Option(
                    "of",
                    "Work",
                    (("cpu_work", "CPU work (GHz·s/kWh)"), ("tasks", "Tasks (per kWh)")),
                    "cpu_work",
                ),
                FORMAT,
            ),
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
            "engine_divergence",
            "Engine divergence, builtin vs OpenDC (max relative energy error)",
            _engine_divergence,
            (FORMAT,),
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


def expand(target: str) -> list[str]:
    """Metric names of a target: ``(a|b)`` (a multi-value variable in regex format) is a and b, unescaped."""
    t = target.strip()
    parts = t[1:-1].split("|") if len(t) > 2 and t[0] == "(" and t[-1] == ")" else [t]
    return [re.sub(r"\\(.)", r"\1", part) for part in parts]


def payload_of(raw: Any, where: str) -> dict[str, Any]:
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


def metric_params(metric: Metric, payload: dict[str, Any], where: str, view: TwinView) -> Params:
    """The metric's payload values, checked (unknown keys are ignored: builder mode may keep old ones)."""
    out: Params = {}
    for opt in metric.options:
        name = f"{where}.{opt.name}"
        raw = payload.get(opt.name)
        values = raw if isinstance(raw, list) else [] if raw in (None, "") else [raw]
        if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            raise ApiError(400, f"{name}: must be a string or a list of strings, got {repr(raw)[:40]}", name)
        texts = [str(v).strip() for v in values]
        allowed = [v for v, _ in opt.choices] if opt.choices else calibrated_parameters(view)
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


def timeseries(ref: str | None, s: Series) -> dict[str, Any]:
    el: dict[str, Any] = {"target": s.name, "datapoints": [[v, t] for t, v in s.points], "unit": s.unit}
    if ref is not None:
        el["refId"] = ref
    return el


def table(ref: str | None, series: Sequence[Series]) -> dict[str, Any]:
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
