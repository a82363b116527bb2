"""The read model: what the API's JSON routes and the Grafana datasource read of the twin.

:class:`TwinView` holds read access to the twin's data (the result store, measured power, the topology box,
the calibrator's, scenario runner's, SLO watcher's and optimizer's views); the functions here turn it into the
frames and series both front ends serve, through the one bucketing and MAPE of :mod:`opendt.metrics`.
Handlers never talk to Kafka or spawn simulations themselves: a topology change goes through the twin's
:class:`~opendt.twin.topology.TopologyWriter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from opendt.api.http import ApiError
from opendt.metrics import bucket, mape, mean_power
from opendt.models.topology import Topology
from opendt.optimizer.component import Optimizer
from opendt.optimizer.slo import SloWatcher
from opendt.twin.results import ResultStore
from opendt.twin.scenarios import ScenarioRunner
from opendt.twin.topology import TopologyBox, TopologyWriter


@dataclass
class TwinView:
    """Read access to the twin's data for the API (all optional: `serve` may run without a twin)."""

    store: ResultStore | None = None
    measured: pl.DataFrame | None = None
    """Measured power given directly (``timestamp_ms`` epoch ms, ``power_draw`` W); by default it is what
    the twin received in its durable windows (the store's ``measured.arrowlog``)."""
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
    divergence: Callable[[], list[tuple[int, float]]] | None = None
    """The engine cross-checks: (trace ms, max relative energy error per interval); None = off."""


MEASURED_POWER = pl.Schema({"timestamp_ms": pl.Int64(), "power_draw": pl.Float64()})


def measured_power(view: TwinView) -> pl.DataFrame:
    """Measured power per instant, summed over the power sources (null when any source's value is not
    finite), ascending: never later than the twin's last durable window (it comes from the store)."""
    if view.measured is not None:
        raw = view.measured.select("timestamp_ms", "power_draw")
    elif view.store is not None:
        raw = view.store.measured.select(
            pl.col("timestamp").dt.epoch("ms").alias("timestamp_ms"), "power_draw"
        )
    else:
        return pl.DataFrame(schema=MEASURED_POWER)
    power = pl.col("power_draw")
    return (
        raw.group_by("timestamp_ms")
        .agg(pl.when(power.is_finite().fill_null(False).all()).then(power.sum()).alias("power_draw"))
        .sort("timestamp_ms")
        .cast(MEASURED_POWER)
    )


def data_bounds(view: TwinView) -> tuple[int, int]:
    candidates: list[tuple[int, int]] = []
    if view.store is not None and view.store.agg.height:
        ts = view.store.agg["timestamp"].dt.epoch("ms")
        candidates.append((int(ts.min()), int(ts.max())))  # type: ignore[arg-type]
    measured = measured_power(view)
    if measured.height:
        ts = measured["timestamp_ms"]
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
    "tasks_completed": pl.Int64,
    "cpu_work": pl.Float64,
}

JOULES_PER_KWH = 3.6e6


def activity(sim: pl.DataFrame, start: int, end: int, step_ms: int) -> dict[str, list[tuple[int, float]]]:
    """Per step bucket in [start, end) (aligned on the epoch, as :func:`downsample`): tasks completed and CPU
    work delivered (sums), and the efficiency, work and tasks per kWh of the bucket's simulated energy
    (buckets without energy have none)."""
    t = pl.col("timestamp_ms")
    sums = (
        sim.filter((t >= start) & (t < end))
        .group_by((t // step_ms * step_ms).alias("t"))
        .agg(
            pl.col("tasks_completed").cast(pl.Float64).sum().alias("tasks"),
            pl.col("cpu_work").cast(pl.Float64).sum().alias("work"),
            (pl.col("energy_usage").cast(pl.Float64).sum() / JOULES_PER_KWH).alias("kwh"),
        )
        .sort("t")
        .with_columns(
            pl.when(pl.col("kwh") > 0).then(pl.col("work") / pl.col("kwh")).alias("efficiency"),
            pl.when(pl.col("kwh") > 0).then(pl.col("tasks") / pl.col("kwh")).alias("tasks_per_kwh"),
        )
    )

    def series(column: str) -> list[tuple[int, float]]:
        return [
            (int(a), float(v))
            for a, v in sums.select("t", column).iter_rows()
            if v is not None and math.isfinite(v)
        ]

    return {
        "tasks_completed": series("tasks"),
        "cpu_work": series("work"),
        "efficiency": series("efficiency"),
        "tasks_per_kwh": series("tasks_per_kwh"),
    }


def simulated_frame(view: TwinView) -> pl.DataFrame:
    """The stored results as ``SIMULATED_SCHEMA`` (epoch-ms ``timestamp_ms``); empty without a store."""
    if view.store is None:
        return pl.DataFrame(schema=SIMULATED_SCHEMA)
    return view.store.agg.select(
        pl.col("timestamp").dt.epoch("ms").alias("timestamp_ms"), *list(SIMULATED_SCHEMA)[1:]
    )


def downsample(
    df: pl.DataFrame, column: str, start: int, end: int, step_ms: int, how: str = "mean"
) -> list[tuple[int, float]]:
    """``[[epoch_ms, value], …]`` of ``column`` in [start, end), one point per step bucket (finite only)."""
    if df.is_empty():
        return []
    ts = df["timestamp_ms"].to_numpy()
    vals = df[column].cast(pl.Float64).to_numpy()
    t, v = bucket(ts, vals, start, end, step_ms, "sum" if how == "sum" else "mean")
    return list(zip(t.tolist(), v.tolist(), strict=True))


def simulated_mean_power(sim: pl.DataFrame, start: int, end: int, step_ms: int) -> list[tuple[int, float]]:
    """``[[epoch_ms, W], …]``: the twin's mean power per step bucket, from its energy over the time its rows
    cover (:func:`~opendt.metrics.mean_power`; what the report plots: the final flush row at a trace's end,
    whose instant follows the last task's end, does not read as a drop)."""
    if sim.is_empty():
        return []
    ordered = sim.sort("timestamp_ms")
    t, v = mean_power(
        ordered["timestamp_ms"].to_numpy(),
        ordered["energy_usage"].cast(pl.Float64).to_numpy(),
        start,
        end,
        step_ms,
    )
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
    value = mape(both["power_draw"].to_numpy(), both["measured"].to_numpy())
    err = (float(both["power_draw"].sum()) / float(both["measured"].sum()) - 1) * 100
    return {"mape_pct": round(value, 4), "energy_error_pct": round(err, 4), "points": both.height}


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
