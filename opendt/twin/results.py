"""Durable results of a run: ``agg_results.parquet`` (one row per export instant) and ``windows.parquet``.

Both are rewritten whole on each window, to a temporary file then renamed (atomic on POSIX), in a thread.
``windows.parquet`` is the journal: a window is durable once it is listed there (status ``ok`` or
``failed``). Rows of a window that is not in the journal (a crash between the two renames) are dropped on
load, so a restart never duplicates and never loses rows.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from opendt.engine.rows import ACTIVITY_COLUMNS
from opendt.models.messages import iso_ms
from opendt.models.topology import Topology
from opendt.stream.windowing import Window
from opendt.twin.files import write_atomic

AGG_SCHEMA = pl.Schema(
    {
        "timestamp": pl.Datetime("ms", "UTC"),
        "power_draw": pl.Float64(),
        "energy_usage": pl.Float64(),
        "carbon_intensity": pl.Float64(),
        "carbon_emission": pl.Float64(),
        "topology_version": pl.Int64(),
        "window_start": pl.Datetime("ms", "UTC"),
        "tasks_completed": pl.Int64(),  # completed in [t − Δ, t): finish < t, as OpenDC's service table
        "cpu_work": pl.Float64(),  # GHz·s the hosts delivered over (t − Δ, t] (demand capped at capacity)
    }
)
WINDOW_SCHEMA = pl.Schema(
    {
        "window_start": pl.Datetime("ms", "UTC"),
        "window_end": pl.Datetime("ms", "UTC"),
        "status": pl.Utf8(),
        "rows": pl.Int64(),
        "tasks": pl.Int64(),
        "fragments": pl.Int64(),
        "power_samples": pl.Int64(),
        "topology_version": pl.Int64(),
        "latency_s": pl.Float64(),
        "compute_s": pl.Float64(),
        "attempts": pl.Int64(),
        "error": pl.Utf8(),
        "engine": pl.Utf8(),  # builtin | opendc: what simulated the window's rows
    }
)


def _sum_or_null(column: str) -> pl.Expr:
    """The sum, or null when every value is (a quantity the engine did not export, e.g. OpenDC's cpu_work)."""
    c = pl.col(column)
    return pl.when(c.is_not_null().any()).then(c.sum()).otherwise(None).alias(column)


def aggregate_rows(rows: pl.DataFrame, version: int, window_start_ms: int) -> pl.DataFrame:
    """Engine rows (one per cluster per instant; a duplicate final flush) → one row per export instant.

    The activity columns (``tasks_completed``, ``cpu_work``) are summed over every row of an instant: the
    duplicate flush row carries the completions at the last instant itself (engine/rows.py)."""
    if rows.is_empty():
        return pl.DataFrame()
    key = ["timestamp_absolute", "cluster_name"]
    activity = rows.group_by(key).agg(*(_sum_or_null(c) for c in ACTIVITY_COLUMNS))
    per_cluster = (
        rows.unique(subset=key, keep="first", maintain_order=True)
        .drop(ACTIVITY_COLUMNS)
        .join(activity, on=key, how="left", maintain_order="left")
    )
    return (
        per_cluster.group_by("timestamp_absolute", maintain_order=True)
        .agg(
            pl.col("power_draw").sum(),
            pl.col("energy_usage").sum(),
            pl.col("carbon_intensity").first(),
            pl.col("carbon_emission").sum(),
            _sum_or_null("tasks_completed"),
            _sum_or_null("cpu_work"),
        )
        .sort("timestamp_absolute")
        .select(
            pl.from_epoch("timestamp_absolute", "ms").dt.replace_time_zone("UTC").alias("timestamp"),
            pl.col("power_draw").cast(pl.Float64),
            pl.col("energy_usage").cast(pl.Float64),
            pl.col("carbon_intensity").cast(pl.Float64),
            pl.col("carbon_emission").cast(pl.Float64),
            pl.col("tasks_completed").cast(pl.Int64),
            pl.col("cpu_work").cast(pl.Float64),
            pl.lit(version, pl.Int64).alias("topology_version"),
            pl.lit(window_start_ms).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").alias("window_start"),
        )
    )


def results_message(w: Window, version: int, engine: str, agg: pl.DataFrame) -> dict[str, object]:
    points = [
        {
            "timestamp": iso_ms(int(r["timestamp"].timestamp() * 1000)),
            "power_draw": r["power_draw"],
            "energy_usage": r["energy_usage"],
            "carbon_intensity": r["carbon_intensity"],
            "carbon_emission": r["carbon_emission"],
        }
        for r in agg.iter_rows(named=True)
    ]
    return {
        "window_start": iso_ms(w.start_ms),
        "window_end": iso_ms(w.end_ms),
        "topology_version": version,
        "engine": engine,
        "points": points,
    }


MEASURED_SCHEMA = pl.Schema(
    {
        "timestamp": pl.Datetime("ms", "UTC"),
        "source": pl.Utf8(),
        "power_draw": pl.Float64(),
        "energy_usage": pl.Float64(),
        "window_start": pl.Datetime("ms", "UTC"),
    }
)
"""``measured.parquet``: the measured power the twin received (``dc.power``), per window."""


_POWER_ROW = {"timestamp": pl.Int64, "source": pl.Utf8, "power_draw": pl.Float64, "energy_usage": pl.Float64}


def measured_rows(w: Window) -> pl.DataFrame:
    """A window's received power samples as ``MEASURED_SCHEMA`` rows."""
    return pl.DataFrame(
        [(p.timestamp_ms, p.source, p.power_draw, p.energy_usage) for p in w.power],
        schema={
            "timestamp": pl.Int64,
            "source": pl.Utf8,
            "power_draw": pl.Float64,
            "energy_usage": pl.Float64,
        },
        orient="row",
    ).select(
        pl.from_epoch("timestamp", "ms").dt.replace_time_zone("UTC"),
        "source",
        "power_draw",
        "energy_usage",
        pl.lit(w.start_ms).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").alias("window_start"),
    )


def _conform(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with the columns of AGG_SCHEMA; a column they lack (the activity columns of rows written
    before they existed) is null."""
    missing = [pl.lit(None).alias(c) for c in AGG_SCHEMA if c not in rows.columns]
    return rows.with_columns(missing).select(list(AGG_SCHEMA)).cast(AGG_SCHEMA)


class ResultsMismatch(ValueError):
    """A results file disagrees with the window journal (``windows.parquet``)."""


def _check_counts(windows: pl.DataFrame, rows: pl.DataFrame, column: str, path: Path) -> None:
    """Raise :class:`ResultsMismatch` when ``rows`` do not hold, per journal window, the ``column`` count."""
    if windows.is_empty():
        return
    have = rows.group_by("window_start").agg(pl.len().alias("have"))
    diff = (
        windows.select("window_start", pl.col(column).alias("want"))
        .join(have, on="window_start", how="left")
        .with_columns(pl.col("have").fill_null(0))
        .filter(pl.col("have") != pl.col("want"))
        .sort("window_start")
    )
    if diff.is_empty():
        return
    missing = int((diff["want"] - diff["have"]).clip(lower_bound=0).sum())
    extra = int((diff["have"] - diff["want"]).clip(lower_bound=0).sum())
    first = diff["window_start"][0]
    what = "does not exist" if not path.exists() else "disagrees with windows.parquet"
    raise ResultsMismatch(
        f"{path} {what}: {diff.height} of {windows.height} durable windows (the first at "
        f"{first:%Y-%m-%dT%H:%M}Z) lack {missing} and hold {extra} extra rows: the file was deleted, "
        "replaced by an older copy or written twice; restore it, or start a new run with --fresh (this one "
        "is moved aside)"
    )


def _write_atomic(df: pl.DataFrame, path: Path) -> None:
    write_atomic(path, df.write_parquet)  # a crash (kill -9) leaves the old or the new file, never a torn one


@dataclass
class WindowRecord:
    window_start_ms: int
    window_end_ms: int
    status: str
    rows: int
    tasks: int
    fragments: int
    power_samples: int
    topology_version: int
    latency_s: float
    compute_s: float
    attempts: int
    error: str = ""
    engine: str = "builtin"


class ResultStore:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.agg_path = run_dir / "agg_results.parquet"
        self.windows_path = run_dir / "windows.parquet"
        self.measured_path = run_dir / "measured.parquet"
        self.agg = pl.DataFrame(schema=AGG_SCHEMA)
        self.measured = pl.DataFrame(schema=MEASURED_SCHEMA)
        """The measured power received in durable windows (what the API serves as measured)."""
        self.windows = pl.DataFrame(schema=WINDOW_SCHEMA)
        self._durable: set[int] = set()
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read what a previous run of this run directory made durable, checked against the journal: each
        window's rows and power samples are as many as ``windows.parquet`` records (rows of windows it does
        not list, left by a crash between two writes, are dropped). A results file that is missing, stale
        or holds rows twice raises :class:`ResultsMismatch` naming it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.windows_path.exists():
            journal = pl.read_parquet(self.windows_path)
            if "engine" not in journal.columns:  # journals written before the column: the builtin engine
                journal = journal.with_columns(engine=pl.lit("builtin"))
            self.windows = journal.select(list(WINDOW_SCHEMA)).cast(WINDOW_SCHEMA)
        journal = self.windows.select("window_start")
        agg = _conform(pl.read_parquet(self.agg_path)) if self.agg_path.exists() else self.agg.clear()
        self.agg = agg.join(journal, on="window_start", how="semi")
        measured = (
            pl.read_parquet(self.measured_path).cast(MEASURED_SCHEMA)
            if self.measured_path.exists()
            else self.measured.clear()
        )
        self.measured = measured.join(journal, on="window_start", how="semi")
        _check_counts(self.windows, self.agg, "rows", self.agg_path)
        if self.measured_path.exists() or (self.run_dir / "run.json").exists():  # older runs had none
            _check_counts(self.windows, self.measured, "power_samples", self.measured_path)
        self._durable = {int(v) for v in self.windows["window_start"].dt.epoch("ms").to_list()}

    def is_durable(self, window_start_ms: int) -> bool:
        return window_start_ms in self._durable

    def window_version(self, window_start_ms: int) -> int | None:
        hit = self.windows.filter(pl.col("window_start").dt.epoch("ms") == window_start_ms)
        return None if hit.is_empty() else int(hit["topology_version"][0])

    def window_status(self, window_start_ms: int) -> str | None:
        hit = self.windows.filter(pl.col("window_start").dt.epoch("ms") == window_start_ms)
        return None if hit.is_empty() else str(hit["status"][0])

    def first_start_ms(self) -> int | None:
        """The start of the run's first durable window."""
        if self.windows.is_empty():
            return None
        return int(self.windows["window_start"].dt.epoch("ms").min())  # type: ignore[arg-type]

    @property
    def durable_count(self) -> int:
        return len(self._durable)

    async def commit(
        self, record: WindowRecord, rows: pl.DataFrame, measured: pl.DataFrame | None = None
    ) -> None:
        """Make a window durable: its rows appended to agg_results, its measured power to measured.parquet,
        then the journal entry."""
        rec = pl.DataFrame(
            [
                {
                    **{k: v for k, v in vars(record).items() if not k.endswith("_ms")},
                    "window_start": record.window_start_ms,
                    "window_end": record.window_end_ms,
                }
            ]
        ).with_columns(
            pl.from_epoch("window_start", "ms").dt.replace_time_zone("UTC"),
            pl.from_epoch("window_end", "ms").dt.replace_time_zone("UTC"),
        )
        async with self._lock:
            agg = pl.concat([self.agg, _conform(rows)]) if rows.height else self.agg
            fresh = measured is not None and measured.height > 0
            meas = self.measured
            if measured is not None and fresh:
                meas = pl.concat([meas, measured.cast(MEASURED_SCHEMA)])
            windows = pl.concat([self.windows, rec.select(list(WINDOW_SCHEMA)).cast(WINDOW_SCHEMA)])
            if rows.height:
                await asyncio.to_thread(_write_atomic, agg, self.agg_path)
            if fresh:
                await asyncio.to_thread(_write_atomic, meas, self.measured_path)
            await asyncio.to_thread(_write_atomic, windows, self.windows_path)
            self.agg, self.measured, self.windows = agg, meas, windows
            self._durable.add(record.window_start_ms)

    def save_topology(self, version: int, topology: Topology, meta: dict[str, Any]) -> None:
        d = self.run_dir / "topologies"
        d.mkdir(parents=True, exist_ok=True)
        doc = {**meta, "version": version, "topology": topology.to_json_dict()}
        write_atomic(d / f"v{version}.json", lambda tmp: tmp.write_text(json.dumps(doc, indent=1)))

    def refuse_topology(self, version: int) -> Path | None:
        """Set a saved version aside (``vN.refused.json``): it cannot be applied, a restart must not
        retry it."""
        p = self.run_dir / "topologies" / f"v{version}.json"
        if not p.exists():
            return None
        to = p.with_name(f"v{version}.refused.json")
        p.replace(to)
        return to

    def latest_version(self) -> int:
        """The highest saved topology version (-1 when none is saved)."""
        d = self.run_dir / "topologies"
        versions = [int(p.stem[1:]) for p in d.glob("v*.json") if p.stem[1:].isdigit()] if d.is_dir() else []
        return max(versions, default=-1)

    def latest_topology(self) -> dict[str, Any] | None:
        """The saved topology of the highest version (what an earlier process of the run last applied)."""
        version = self.latest_version()
        return self.load_topology(version) if version >= 0 else None

    def load_topology(self, version: int) -> dict[str, Any] | None:
        p = self.run_dir / "topologies" / f"v{version}.json"
        if not p.exists():
            return None
        doc: dict[str, Any] = json.loads(p.read_text())
        return doc
