"""A run directory as the report reads it: what the twin made durable so far, and the measured power.

A run directory (``<data_dir>/runs/<run_id>/``) holds ``windows.arrowlog`` (the journal),
``agg_results.arrowlog`` (one row per export instant), ``measured.arrowlog``, ``calibration.parquet`` (with
calibration on) and ``topologies/v*.json`` (:mod:`opendt.twin.tables`; runs of the old layout: the same
names in ``.parquet``). Each file is read once, by bytes: the twin appends to them while it runs. Only the
rows of journaled windows are kept, so a run in progress is read as what is durable so far (as a restart
would).

Measured power, in this order: ``measured.arrowlog`` in the run directory (what the twin received), else the
workload's ``consumption.parquet`` (``--workload DIR``, or the workload path a ``run.json`` records), else
none. It is clipped to the run's durable span: nothing is shown past the last durable window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from opendt.metrics import interval_widths
from opendt.twin.tables import AGG, JOURNAL, MEASURED, read_journal, read_rows
from opendt.workload import normalize_consumption, normalize_tasks, read_meta

MS = pl.Datetime("ms", "UTC")


class RunError(ValueError):
    """A path that is not a run directory (nor a data directory holding runs)."""


@dataclass
class Run:
    """The durable part of one run. Times are epoch ms (``*_ms``) throughout."""

    path: Path
    label: str
    agg: pl.DataFrame
    """``timestamp_ms``, ``power_draw`` W, ``energy_usage`` J, ``carbon_intensity`` gCO2/kWh,
    ``carbon_emission`` g, ``tasks_completed``, ``cpu_work`` GHz·s, ``topology_version``, ``width_ms``."""
    windows: pl.DataFrame
    """The journal: ``window_start_ms``, ``window_end_ms``, ``status``, ``latency_s``, ``compute_s``, …"""
    calibration: pl.DataFrame | None
    measured: pl.DataFrame | None
    """``timestamp_ms``, ``power_draw`` W (summed over power sources), within the run's span."""
    measured_source: str
    topologies: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None and self.calibration.height > 0

    @property
    def span_ms(self) -> tuple[int, int] | None:
        """[first window start, last durable window end), None before the first window."""
        if self.windows.is_empty():
            return None
        return int(self.windows["window_start_ms"].min()), int(self.windows["window_end_ms"].max())  # type: ignore[arg-type]

    @property
    def export_interval_ms(self) -> int | None:
        """The export interval: the most common gap between consecutive instants."""
        gaps = self.agg["timestamp_ms"].diff().drop_nulls()
        gaps = gaps.filter(gaps > 0)
        return None if gaps.is_empty() else int(gaps.mode().min())  # type: ignore[arg-type]


def _read(path: Path) -> pl.DataFrame | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return pl.read_parquet(data)


def _epoch(col: str, df: pl.DataFrame) -> pl.Expr:
    """An epoch-ms Int64 of a datetime (any unit/zone; naive = UTC) or an integer column."""
    if isinstance(df.schema[col], pl.Datetime):
        return pl.col(col).dt.epoch("ms")
    return pl.col(col).cast(pl.Int64)


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for t in (JOURNAL, AGG) for name in (t.file, t.legacy))


def expand(paths: list[Path]) -> list[Path]:
    """Run directories named directly, or every run of a data directory (``DIR/runs/*``), in order."""
    out: list[Path] = []
    for p in paths:
        if is_run_dir(p):
            out.append(p)
            continue
        runs = p / "runs" if (p / "runs").is_dir() else p
        found = (
            sorted(d for d in runs.iterdir() if not d.is_symlink() and is_run_dir(d)) if runs.is_dir() else []
        )
        if not found:
            raise RunError(f"{p}: not a run directory (no windows.arrowlog) and no run under it")
        out.extend(found)
    return out


def _windows(df: pl.DataFrame | None) -> pl.DataFrame:
    cols = {
        "window_start_ms": pl.Int64,
        "window_end_ms": pl.Int64,
        "status": pl.Utf8,
        "latency_s": pl.Float64,
    }
    if df is None or df.is_empty():
        return pl.DataFrame(schema={**cols, "compute_s": pl.Float64, "topology_version": pl.Int64})
    return (
        df.with_columns(
            _epoch("window_start", df).alias("window_start_ms"),
            _epoch("window_end", df).alias("window_end_ms"),
        )
        .drop("window_start", "window_end")
        .unique("window_start_ms", keep="last", maintain_order=True)
        .sort("window_start_ms")
    )


AGG_COLUMNS = {
    "power_draw": pl.Float64,
    "energy_usage": pl.Float64,
    "carbon_intensity": pl.Float64,
    "carbon_emission": pl.Float64,
    "tasks_completed": pl.Int64,
    "cpu_work": pl.Float64,
    "topology_version": pl.Int64,
}


def _agg(run_dir: Path, windows: pl.DataFrame, journal: pl.DataFrame | None) -> pl.DataFrame:
    """The durable rows (of journaled windows), one per instant, with the width of each row's interval."""
    schema = {"timestamp_ms": pl.Int64, **AGG_COLUMNS, "width_ms": pl.Int64}
    df = read_rows(run_dir, AGG, journal)
    if df is None or df.is_empty() or windows.is_empty():
        return pl.DataFrame(schema=schema)
    df = df.with_columns(pl.lit(None).alias(c) for c in AGG_COLUMNS if c not in df.columns)
    df = (
        df.with_columns(_epoch("timestamp", df).alias("timestamp_ms"), _epoch("window_start", df).alias("_w"))
        .join(windows.select(pl.col("window_start_ms").alias("_w")), on="_w", how="semi")
        .select("timestamp_ms", *(pl.col(c).cast(t) for c, t in AGG_COLUMNS.items()))
        .unique("timestamp_ms", keep="first", maintain_order=True)
        .sort("timestamp_ms")
    )
    # a row covers (t − Δ, t]; the final flush row covers less (the time since the previous row)
    width = pl.Series("width_ms", interval_widths(df["timestamp_ms"].to_numpy()), pl.Int64)
    return df.with_columns(width).select(list(schema))


def _calibration(run_dir: Path) -> pl.DataFrame | None:
    df = _read(run_dir / "calibration.parquet")
    if df is None:
        return None
    return df.with_columns(_epoch("time", df).alias("time_ms"), _epoch("apply_at", df).alias("apply_at_ms"))


def _topologies(run_dir: Path) -> list[dict[str, Any]]:
    d = run_dir / "topologies"
    out = []
    for p in sorted(d.glob("v*.json")) if d.is_dir() else []:
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # being written: the next report sees it
        out.append({k: doc.get(k) for k in ("version", "source", "reason", "timestamp_ms")})
    return sorted(out, key=lambda d: int(d["version"] or 0))


def _settings(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "run.json"
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _recorded_workload(settings: dict[str, Any]) -> Path | None:
    """The workload directory a run.json records (``workload``, ``workload.path`` or ``replay.workload``)."""
    for v in (settings.get("workload"), (settings.get("replay") or {}).get("workload")):
        if isinstance(v, dict):
            v = v.get("path")
        if isinstance(v, str) and Path(v).is_dir():
            return Path(v)
    return None


def workload_measured(workload_dir: Path) -> pl.DataFrame:
    """The measured power of a workload directory (``consumption.parquet``; relative timestamps count from
    the first submission of a task with fragments, as the replay does), summed per instant."""
    tasks = normalize_tasks(pl.read_parquet(workload_dir / "tasks.parquet"))
    ids = pl.read_parquet(workload_dir / "fragments.parquet", columns=["id"]).unique()
    loaded = tasks.join(ids.cast({"id": tasks.schema["id"]}), on="id", how="semi")
    origin = int(loaded["submission_ms"].min())  # type: ignore[arg-type]
    meta = read_meta(workload_dir)
    raw = pl.read_parquet(workload_dir / "consumption.parquet")
    return _per_instant(normalize_consumption(raw, origin, meta.consumption_offset_ms))


def _per_instant(df: pl.DataFrame) -> pl.DataFrame:
    """The power of every source summed per instant, in time order (added in row order: deterministic)."""
    df = df.sort("timestamp_ms", maintain_order=True)
    ts = df["timestamp_ms"].cast(pl.Int64).to_numpy()
    power = df["power_draw"].cast(pl.Float64).fill_null(0.0).to_numpy()
    starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]]) if ts.size else ts
    return pl.DataFrame(
        {"timestamp_ms": ts[starts], "power_draw": np.add.reduceat(power, starts) if ts.size else power},
        schema={"timestamp_ms": pl.Int64, "power_draw": pl.Float64},
    )


def _measured(
    run_dir: Path,
    settings: dict[str, Any],
    workload: Path | None,
    cache: dict[Path, pl.DataFrame],
    journal: pl.DataFrame | None,
) -> tuple[pl.DataFrame | None, str]:
    own = read_rows(run_dir, MEASURED, journal)
    if own is not None:  # a sample received twice (a redelivered message) counts once; sources add up
        own = own.with_columns(_epoch("timestamp", own).alias("timestamp_ms")).unique(maintain_order=True)
        name = MEASURED.file if (run_dir / MEASURED.file).exists() else MEASURED.legacy
        return _per_instant(own), name
    source = workload or _recorded_workload(settings)
    if source is None or not (source / "consumption.parquet").is_file():
        return None, "none"
    if source not in cache:
        cache[source] = workload_measured(source)
    return cache[source], str(source / "consumption.parquet")


def load_run(
    run_dir: Path,
    label: str = "",
    *,
    workload: Path | None = None,
    cache: dict[Path, pl.DataFrame] | None = None,
) -> Run:
    """Read a run directory (see the module docstring); ``cache`` shares workload power between runs."""
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    journal = read_journal(run_dir)  # first: rows of windows journaled after this read are left out
    windows = _windows(journal)
    agg = _agg(run_dir, windows, journal)
    settings = _settings(run_dir)
    measured, source = _measured(run_dir, settings, workload, {} if cache is None else cache, journal)
    run = Run(
        path=run_dir,
        label=label,
        agg=agg,
        windows=windows,
        calibration=_calibration(run_dir),
        measured=None,
        measured_source=source,
        topologies=_topologies(run_dir),
        settings=settings,
    )
    span = run.span_ms
    if measured is not None and span is not None:
        lo, hi = span
        run.measured = measured.filter((pl.col("timestamp_ms") >= lo) & (pl.col("timestamp_ms") < hi))
    wall = settings.get("wall_s")
    run.wall_s = float(wall) if isinstance(wall, int | float) else None
    return run


def default_labels(runs: list[Run]) -> list[str]:
    """``uncalibrated`` / ``calibrated``; made unique with the data directory's (or the run's) name."""
    base = ["calibrated" if r.calibrated else "uncalibrated" for r in runs]
    out = []
    for r, b in zip(runs, base, strict=True):
        if base.count(b) == 1:
            out.append(b)
            continue
        parent = r.path.parent.parent.name if r.path.parent.name == "runs" else r.path.parent.name
        out.append(f"{b} ({parent or r.run_id})")
    if len(set(out)) < len(out):
        out = [f"{b} ({r.run_id})" for r, b in zip(runs, out, strict=True)]
    return out
