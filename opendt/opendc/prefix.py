"""Prefix runs of OpenDC made equal to the streaming twin (DESIGN §6; used by :mod:`opendt.twin.opendc`).

A prefix run is a one-shot OpenDC run over the tasks and fragments received up to some instant. Three rules
make its rows equal the twin's, which advances window by window:

* :func:`causal_fragments`: OpenDC completes a task whose fragments are all zero at once (OPENDC_SEMANTICS
  §3.4, §10.4); in a prefix that is a task whose *known* fragments are all zero, which the streaming twin
  keeps on its host. The first fragment of such a task gets ``EPSILON_MHZ`` of demand so OpenDC runs it too
  (power moves by under 1e-10 relative).
* :func:`idle_tail`: a prefix run ends at its last completion; from there every host is idle until the
  prefix's end, which OpenDC does not simulate. Those export instants get the topology's idle power and the
  received carbon intensity; OpenDC's partial final row joins the first of them.
* :func:`write_carbon_trace`: the received carbon steps as OpenDC's carbon trace, in milliseconds.

:func:`twin_rows` turns OpenDC's output into the twin's engine rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from opendt.engine.carbon import CarbonTrace
from opendt.engine.hosts import build_hosts
from opendt.models.topology import Topology, parse_topology
from opendt.opendc.results import SimulationOutput

EPSILON_MHZ = 1e-6
"""Demand given to the first fragment of a task whose known fragments are all zero."""
ROW_SCHEMA = pl.Schema(
    {
        "timestamp": pl.Int64(),
        "timestamp_absolute": pl.Int64(),
        "cluster_name": pl.Utf8(),
        "power_draw": pl.Float64(),
        "energy_usage": pl.Float64(),
        "carbon_intensity": pl.Float64(),
        "carbon_emission": pl.Float64(),
        "tasks_completed": pl.Int64(),
        "cpu_work": pl.Float64(),
    }
)
"""The twin's engine rows (one per cluster per export instant), as the builtin engine returns them."""


def causal_fragments(fragments: pl.DataFrame) -> pl.DataFrame:
    """Give the first fragment of every task whose fragments are all zero ``EPSILON_MHZ`` (see the module)."""
    if fragments.is_empty():
        return fragments
    zero = (
        fragments.group_by("id")
        .agg((pl.col("cpu_usage") > 0).any().alias("busy"), pl.col("index").min().alias("first"))
        .filter(~pl.col("busy"))
    )
    if zero.is_empty():
        return fragments
    bump = zero.select("id", pl.col("first").alias("index"), pl.lit(True).alias("_bump"))
    return (
        fragments.join(bump, on=["id", "index"], how="left", maintain_order="left")
        .with_columns(
            cpu_usage=pl.when(pl.col("_bump")).then(pl.lit(EPSILON_MHZ)).otherwise(pl.col("cpu_usage"))
        )
        .drop("_bump")
    )


def strip_carbon_paths(topology: Topology) -> Topology:
    """The topology without ``carbonTracePath``s: the twin's carbon comes from ``dc.carbon`` only."""
    doc = topology.to_json_dict()
    for cluster in doc.get("clusters", []):
        ps = cluster.get("powerSource")
        if isinstance(ps, dict):
            ps.pop("carbonTracePath", None)
    return parse_topology(doc, source="simulated topology")


def write_carbon_trace(carbon: pl.DataFrame, path: Path) -> None:
    """Carbon steps (``CARBON_SCHEMA``) as an OpenDC carbon trace: ``timestamp`` as timestamp[ms] (OpenDC
    reads the INT64 as epoch ms whatever its unit: a µs column puts every step in the far future) and
    ``carbon_intensity``, sorted."""
    carbon.sort("timestamp_ms", maintain_order=True).select(
        pl.col("timestamp_ms").cast(pl.Datetime("ms")).alias("timestamp"),
        pl.col("carbon_intensity").cast(pl.Float64),
    ).write_parquet(path)


def _carbon_integral(trace: CarbonTrace, a: int, b: int) -> float:
    """∫ intensity dt over ``[a, b]`` (ms × gCO2/kWh) of the step function (the first value holds before)."""
    if b <= a:
        return 0.0
    cuts = np.concatenate(([a], trace.steps_between(a, b), [b])).astype(np.int64)
    return float(np.sum(trace.at(cuts[:-1]) * np.diff(cuts)))


def idle_tail(
    rows: pl.DataFrame,
    topology: Topology,
    carbon: pl.DataFrame,
    origin_ms: int,
    interval_ms: int,
    until_ms: int,
    *,
    final: bool,
) -> pl.DataFrame:
    """``rows`` (one per cluster per instant) continued with an idle datacenter from their last instant to
    ``until_ms``: one row per export instant, OpenDC's off-grid final row merged into the first; when
    ``final``, a last partial row at ``until_ms`` as the twin's final flush."""
    t_end = int(rows["timestamp_absolute"].max())  # type: ignore[arg-type]
    if t_end >= until_ms:
        return rows
    hosts = build_hosts(topology)
    idle = hosts.idle_by_cluster()
    names = hosts.cluster_names
    trace = CarbonTrace.from_frame(carbon) if carbon.height else None

    def intensity(t: int) -> float:  # no carbon received: intensity 0, as OpenDC without a trace
        return 0.0 if trace is None else float(trace.at(np.array([t]))[0])

    def carbon_ms(a: int, b: int) -> float:
        return 0.0 if trace is None else _carbon_integral(trace, a, b)

    off_grid = (t_end - origin_ms) % interval_ms != 0
    carry = dict.fromkeys(names, (0.0, 0.0, 0))
    if off_grid:  # OpenDC's final row covers (last grid instant, t_end]: it joins the next grid instant
        last = rows.filter(pl.col("timestamp_absolute") == t_end)
        for r in last.iter_rows(named=True):
            carry[r["cluster_name"]] = (
                r["energy_usage"],
                r["carbon_emission"],
                r.get("tasks_completed") or 0,
            )
        rows = rows.filter(pl.col("timestamp_absolute") != t_end)
    k = (t_end - origin_ms) // interval_ms + 1
    instants = list(range(origin_ms + k * interval_ms, until_ms + 1, interval_ms))
    if final and (not instants or instants[-1] < until_ms):
        instants.append(until_ms)
    out: list[dict[str, Any]] = []
    prev = t_end
    for g in instants:
        for c, name in enumerate(names):
            p = float(idle[c])
            e0, c0, n0 = carry[name] if prev == t_end else (0.0, 0.0, 0)
            out.append(
                {
                    "timestamp": g - origin_ms,
                    "timestamp_absolute": g,
                    "cluster_name": name,
                    "power_draw": p,
                    "energy_usage": e0 + p * (g - prev) * 0.001,
                    "carbon_intensity": intensity(g),
                    "carbon_emission": c0 + carbon_ms(prev, g) * p * 0.001 / 3.6e6,
                    "tasks_completed": n0,
                    "cpu_work": None,
                }
            )
        prev = g
    if not out:
        return rows
    return pl.concat([rows.select(list(ROW_SCHEMA)), pl.DataFrame(out, schema=ROW_SCHEMA)])


def twin_rows(out: SimulationOutput) -> pl.DataFrame:
    """OpenDC's powerSource rows in the twin's engine-row columns; ``tasks_completed`` from service.parquet
    (the increase of its cumulative count, on the first cluster's row); ``cpu_work`` is not exported by
    OpenDC (null)."""
    power = out.power.sort("timestamp_absolute", maintain_order=True)
    cumulative = completed_by_instant(out)
    done = (
        pl.DataFrame(schema={"timestamp_absolute": pl.Int64, "tasks_completed": pl.Int64})
        if cumulative is None
        else cumulative.with_columns(pl.col("tasks_completed").diff().fill_null(pl.col("tasks_completed")))
    )
    first = power["cluster_name"][0] if power.height else None
    return (
        power.join(done, on="timestamp_absolute", how="left")
        .with_columns(
            tasks_completed=pl.when(pl.col("cluster_name") == first)
            .then(pl.col("tasks_completed").fill_null(0))
            .otherwise(0),
            cpu_work=pl.lit(None, pl.Float64),
        )
        .select(list(ROW_SCHEMA))
        .cast(ROW_SCHEMA)
    )


def completed_by_instant(out: SimulationOutput) -> pl.DataFrame | None:
    """The tasks completed so far at each instant of the run's service table (``timestamp_absolute``,
    ``tasks_completed``), read raw: at an end on the export grid OpenDC writes the instant twice and the
    final flush, which the normalized table drops, may count more. None without the table."""
    raw = out.directory / "service.parquet"
    if not raw.is_file():
        return None
    svc = pl.read_parquet(raw, columns=["timestamp_absolute", "tasks_completed"])
    return (
        svc.group_by("timestamp_absolute")
        .agg(pl.col("tasks_completed").max().cast(pl.Int64))
        .sort("timestamp_absolute")
        .with_columns(pl.col("timestamp_absolute").cast(pl.Int64))
    )
