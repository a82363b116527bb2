"""Durable results of a run: the window journal, the results and the measured power, appended per window.

The files and their checks are :mod:`opendt.twin.tables`: ``agg_results.arrowlog`` (one row per export
instant), ``measured.arrowlog`` (the received power) and ``windows.arrowlog`` (the journal). A window is made
durable by appending its frames, the journal's last (in a thread): a window's cost does not depend on the
run's age, nothing written is rewritten. A window is durable once it is listed in the journal (status ``ok``
or ``failed``); frames of a window the journal lacks (a crash between two appends) are cut off on load, so a
restart never duplicates and never loses rows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import structlog

from opendt.engine.rows import ACTIVITY_COLUMNS
from opendt.models.messages import iso_ms
from opendt.models.topology import Topology
from opendt.stream.windowing import Window
from opendt.twin.appendlog import AppendLog, LogCorrupt
from opendt.twin.files import write_atomic
from opendt.twin.tables import (
    AGG,
    AGG_SCHEMA,
    JOURNAL,
    MEASURED,
    MEASURED_SCHEMA,
    WINDOW_SCHEMA,
    ResultsMismatch,
    Table,
    conform,
    cut_from,
    load_journal,
    load_rows,
    migrate,
    read_journal,
    read_rows,
    sound_prefix,
)

Rewind = Callable[[list[int], int], bool]
"""Whether the twin can go on from the end (ms) of the durable windows listed (their starts) alone."""

log = structlog.get_logger(component="results")

__all__ = [
    "AGG_SCHEMA",
    "MEASURED_SCHEMA",
    "WINDOW_SCHEMA",
    "ResultStore",
    "ResultsMismatch",
    "WindowRecord",
    "aggregate_rows",
    "measured_rows",
    "read_journal",
    "read_rows",
    "results_message",
]


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
            # NaN: unknown (no carbon intensity received for it), stored as null
            pl.col("carbon_intensity").cast(pl.Float64).fill_nan(None),
            pl.col("carbon_emission").cast(pl.Float64).fill_nan(None),
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


class _Growing:
    """A table that grows by a frame per window: appended in O(1), concatenated when read."""

    def __init__(self, schema: pl.Schema) -> None:
        self._frame = pl.DataFrame(schema=schema)
        self._parts: list[pl.DataFrame] = []

    def get(self) -> pl.DataFrame:
        if self._parts:
            self._frame = pl.concat([self._frame, *self._parts], rechunk=True)
            self._parts = []
        return self._frame

    def set(self, frame: pl.DataFrame) -> None:
        self._frame, self._parts = frame, []

    def add(self, part: pl.DataFrame) -> None:
        self._parts.append(part)


class ResultStore:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.agg_path = run_dir / AGG.file
        self.windows_path = run_dir / JOURNAL.file
        self.measured_path = run_dir / MEASURED.file
        self._agg = _Growing(AGG_SCHEMA)
        self._measured = _Growing(MEASURED_SCHEMA)
        self._windows = _Growing(WINDOW_SCHEMA)
        self._by_start: dict[int, tuple[int, str]] = {}
        """Per durable window: its topology version and status."""
        self._writers: dict[str, AppendLog] = {}
        self._lock = asyncio.Lock()

    @property
    def agg(self) -> pl.DataFrame:
        """The results of the durable windows."""
        return self._agg.get()

    @property
    def measured(self) -> pl.DataFrame:
        """The measured power received in durable windows (what the API serves as measured)."""
        return self._measured.get()

    @property
    def windows(self) -> pl.DataFrame:
        """The journal."""
        return self._windows.get()

    def load(self, *, writable: bool = True, rewind: Rewind | None = None) -> None:
        """Read what a previous run of this run directory made durable, checked against the journal: each
        window's rows and power samples are as many as the journal records, checked before they are decoded.
        Frames of windows the journal does not list (a crash between two appends) and a torn last frame are
        cut off (``writable``: the daemon; ``opendt serve`` only skips them). A results file that is missing,
        stale or holds rows twice raises :class:`ResultsMismatch`, a damaged one
        :class:`~opendt.twin.appendlog.LogCorrupt`, one line naming it — unless the damage only takes the
        windows from some point on, and ``rewind(kept_starts, end_ms)`` says the twin can go on from the last
        intact window and re-read the rest from the stream: then every file is cut back to it
        (``results_rewound``, naming the file)."""
        try:
            self._load(writable=writable)
        except (ResultsMismatch, LogCorrupt) as e:
            sound = None if rewind is None or not writable else sound_prefix(self.run_dir, self._checked())
            if rewind is None or sound is None or not rewind(*sound):
                raise
            kept, end = sound
            log.warning("results_rewound", error=str(e), until_ms=end, windows_kept=len(kept))
            cut_from(self.run_dir, end)
            self._load(writable=writable)

    def _checked(self) -> list[Table]:
        # older runs had no measured power file
        measured = self.measured_path.exists() or (self.run_dir / "run.json").exists()
        return [AGG, MEASURED] if measured else [AGG]

    def _load(self, *, writable: bool) -> None:
        if writable:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            migrate(self.run_dir)
        elif not self.windows_path.exists() and (self.run_dir / JOURNAL.legacy).exists():
            self._load_legacy()
            return
        journal = load_journal(self.run_dir, writable=writable)
        windows = journal.rows
        agg = load_rows(self.run_dir, AGG, windows, writable=writable, check=True)
        check = MEASURED in self._checked()
        measured = load_rows(self.run_dir, MEASURED, windows, writable=writable, check=check)
        self._writers = {"agg": agg.writer, "measured": measured.writer, "windows": journal.writer}
        self._set(windows, agg.rows, measured.rows)

    def _load_legacy(self) -> None:
        """A run of the old layout, read-only (``opendt serve`` of a run a daemon has not converted)."""
        windows = read_journal(self.run_dir)
        assert windows is not None
        agg = read_rows(self.run_dir, AGG, windows)
        measured = read_rows(self.run_dir, MEASURED, windows)
        self._set(
            windows,
            pl.DataFrame(schema=AGG_SCHEMA) if agg is None else agg,
            pl.DataFrame(schema=MEASURED_SCHEMA) if measured is None else measured,
        )

    def _set(self, windows: pl.DataFrame, agg: pl.DataFrame, measured: pl.DataFrame) -> None:
        self._windows.set(windows)
        self._agg.set(agg)
        self._measured.set(measured)
        starts = windows["window_start"].dt.epoch("ms").to_list()
        self._by_start = dict(
            zip(
                starts,
                zip(windows["topology_version"].to_list(), windows["status"].to_list(), strict=True),
                strict=True,
            )
        )

    def is_durable(self, window_start_ms: int) -> bool:
        return window_start_ms in self._by_start

    def window_version(self, window_start_ms: int) -> int | None:
        hit = self._by_start.get(window_start_ms)
        return None if hit is None else int(hit[0])

    def window_status(self, window_start_ms: int) -> str | None:
        hit = self._by_start.get(window_start_ms)
        return None if hit is None else str(hit[1])

    def first_start_ms(self) -> int | None:
        """The start of the run's first durable window."""
        return min(self._by_start, default=None)

    @property
    def durable_count(self) -> int:
        return len(self._by_start)

    async def commit(
        self, record: WindowRecord, rows: pl.DataFrame, measured: pl.DataFrame | None = None
    ) -> None:
        """Make a window durable: its rows appended to agg_results, its measured power to measured, then its
        journal entry (the commit point)."""
        await self.commit_many([(record, rows, measured)])

    async def commit_many(
        self, windows: list[tuple[WindowRecord, pl.DataFrame, pl.DataFrame | None]]
    ) -> None:
        """Several windows in order, each as :meth:`commit` does (its journal entry after its rows: a crash
        in between leaves the windows before it durable), in one step off the event loop."""
        parts = []
        for record, rows, measured in windows:
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
            rec = rec.select(list(WINDOW_SCHEMA)).cast(WINDOW_SCHEMA)
            agg = conform(rows, AGG_SCHEMA) if rows.height else None
            meas = measured.cast(MEASURED_SCHEMA) if measured is not None and measured.height else None
            parts.append((record, agg, meas, rec))
        async with self._lock:
            if not self._writers:
                raise RuntimeError("ResultStore.commit before load")
            await asyncio.to_thread(self._append_many, parts)
            for record, agg, meas, rec in parts:
                if agg is not None:
                    self._agg.add(agg)
                if meas is not None:
                    self._measured.add(meas)
                self._windows.add(rec)
                self._by_start[record.window_start_ms] = (record.topology_version, record.status)

    def _append_many(
        self, parts: list[tuple[WindowRecord, pl.DataFrame | None, pl.DataFrame | None, pl.DataFrame]]
    ) -> None:
        for record, agg, measured, rec in parts:
            self._append(record.window_start_ms, agg, measured, rec)

    def _append(
        self, start: int, agg: pl.DataFrame | None, measured: pl.DataFrame | None, rec: pl.DataFrame
    ) -> None:
        if agg is not None:
            self._writers["agg"].append(start, agg)
        if measured is not None:
            self._writers["measured"].append(start, measured)
        self._writers["windows"].append(start, rec)

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
