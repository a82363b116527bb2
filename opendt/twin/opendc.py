"""The twin's windows on the OpenDC binary (``simulation.engine: opendc``, issue 16).

OpenDC keeps no state between runs, so a window is an OpenDC run over every task the twin has received so
far (cumulative, as the original OpenDT did) up to the end of the window's batch
(``simulation.opendc_every_windows`` windows per run); each window keeps the rows of its own span
``(start, end]``. Runs go through the asyncio :class:`~opendt.opendc.pool.SimulationPool` (high priority,
its timeout and retries), one in flight per twin; the event loop only awaits them, and the inputs are read,
prepared and written in a worker thread.

The inputs come from the stream only: the windows' stored inputs (:mod:`opendt.twin.inputs`), appended per
run to ``<run_dir>/opendc/history/`` (:class:`History`: one part per run, merged every ``COMPACT_PARTS``),
so they outlive the input store's retention. Memory holds a run's frames only while it is written. The rules
that make a prefix run equal the streaming twin are in :mod:`opendt.opendc.prefix`.

A topology version is the topology of every cumulative run from the window it takes effect on: for a change
of power model or speed (calibration) OpenDC places every task as before, so the rows equal the twin's but
for the export interval that straddles the window start. A change of hosts is simulated as if the
datacenter always had the new hosts, where the builtin engine migrates the running tasks: the two differ
for the tasks in flight at the change.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import structlog

from opendt.models.topology import Topology
from opendt.opendc.backends import Backend, run_simulation
from opendt.opendc.pool import Priority, SimulationPool
from opendt.opendc.prefix import (
    ROW_SCHEMA,
    causal_fragments,
    idle_tail,
    strip_carbon_paths,
    twin_rows,
    write_carbon_trace,
)
from opendt.twin.files import write_atomic
from opendt.twin.inputs import InputStore
from opendt.workload import CARBON_SCHEMA, FRAGMENT_SCHEMA, TASK_SCHEMA

log = structlog.get_logger(component="opendc")

COMPACT_PARTS = 32
"""History parts merged into one when there are more."""
EXPORTED = ("powerSource", "service")
KINDS = {"tasks": TASK_SCHEMA, "fragments": FRAGMENT_SCHEMA, "carbon": CARBON_SCHEMA}


def unknown_carbon_like(rows: pl.DataFrame, builtin: pl.DataFrame) -> pl.DataFrame:
    """OpenDC's rows of a window with the carbon the builtin engine's rows of it leave unknown (NaN: no
    intensity received yet) unknown too: OpenDC reads 0 without a trace and extends its first step backwards.
    Unknown is a prefix in time (once a step is received, intensity is known from it on)."""
    if rows.is_empty() or builtin.is_empty():
        return rows
    out = []
    for c in ("carbon_intensity", "carbon_emission"):
        nan = builtin[c].is_nan()
        if not nan.any():
            continue
        last = None if nan.all() else builtin.filter(nan)["timestamp_absolute"].max()
        hit = pl.lit(value=True) if last is None else pl.col("timestamp_absolute") <= last
        out.append(pl.when(hit).then(float("nan")).otherwise(pl.col(c)).alias(c))
    return rows.with_columns(out) if out else rows


class OpenDCWindowError(RuntimeError):
    """A window's rows could not be had from OpenDC (inputs no longer stored, a failed run)."""


class History:
    """The cumulative inputs of a run for OpenDC, on disk: ``<kind>.<until_ms>.parquet`` parts, each the
    windows stored in ``[previous until, until)``. A part counts once its three files exist (tasks last)."""

    def __init__(self, directory: Path, inputs: InputStore) -> None:
        self.dir = directory
        self.inputs = inputs
        self.parts: list[int] = []

    def load(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        found: dict[int, set[str]] = {}
        for p in self.dir.glob("*.parquet"):
            kind, _, until = p.stem.partition(".")
            if kind in KINDS and until.lstrip("-").isdigit():
                found.setdefault(int(until), set()).add(kind)
        self.parts = sorted(u for u, kinds in found.items() if kinds == set(KINDS))
        for u, kinds in found.items():
            if kinds != set(KINDS):  # a torn append (killed between two files)
                for kind in kinds:
                    self._path(kind, u).unlink(missing_ok=True)

    @property
    def until_ms(self) -> int | None:
        return self.parts[-1] if self.parts else None

    def _path(self, kind: str, until: int) -> Path:
        return self.dir / f"{kind}.{until}.parquet"

    def _write_part(self, frames: dict[str, pl.DataFrame], until: int) -> None:
        for kind in ("carbon", "fragments", "tasks"):  # tasks last: it marks the part complete
            write_atomic(self._path(kind, until), frames[kind].write_parquet)

    def append(self, until_ms: int) -> int:
        """Add the stored windows in ``[until_ms of the history, until_ms)``; returns how many (blocking)."""
        lo = self.until_ms
        if lo is not None and lo >= until_ms:
            return 0
        since = -(2**62) if lo is None else lo
        starts = self.inputs.between(since, until_ms)
        if lo is not None and starts and starts[0] != lo:
            raise OpenDCWindowError(
                f"the inputs of the windows from {lo} are no longer stored: the OpenDC history cannot grow"
            )
        self._write_part(self.inputs.frames(since, until_ms), until_ms)
        self.parts.append(until_ms)
        if len(self.parts) > COMPACT_PARTS:
            self._compact()
        return len(starts)

    def _compact(self) -> None:
        until = self.parts[-1]
        merged = {kind: self._read(kind) for kind in KINDS}
        old = self.parts[:-1]
        self._write_part(merged, until)  # replaces the newest part: it holds everything now
        self.parts = [until]
        for u in old:
            for kind in KINDS:
                self._path(kind, u).unlink(missing_ok=True)

    def _read(self, kind: str) -> pl.DataFrame:
        files = [self._path(kind, u) for u in self.parts]
        if not files:
            return pl.DataFrame(schema=KINDS[kind])
        return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed").cast(KINDS[kind])

    def frames(self, until_ms: int) -> dict[str, pl.DataFrame]:
        """Every task, fragment and carbon step received before ``until_ms`` (blocking). A history ahead of
        ``until_ms`` (a batch simulated again after a restart) is cut by trace time."""
        self.append(until_ms)
        tasks = self._read("tasks")
        fragments = self._read("fragments")
        carbon = self._read("carbon")
        if self.parts and self.parts[-1] > until_ms:
            tasks = tasks.filter(pl.col("submission_ms") < until_ms)
            fragments = fragments.filter(pl.col("submission_ms") < until_ms)
            carbon = carbon.filter(pl.col("timestamp_ms") < until_ms)
        return {"tasks": tasks, "fragments": fragments, "carbon": carbon}


@dataclass
class OpenDCStats:
    runs: int = 0
    failed: int = 0
    windows: int = 0
    run_s: float = 0.0
    last_run_s: float | None = None
    last_tasks: int = 0
    last_fragments: int = 0
    recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=64))
    """(trace ms a run covered, its wall seconds) of the latest runs: the cost per simulated hour."""


@dataclass(frozen=True)
class _Batch:
    version: int
    until_ms: int
    final: bool
    rows: pl.DataFrame


class OpenDCWindows:
    """Rows of the twin's windows from OpenDC runs (see the module)."""

    def __init__(
        self,
        pool: SimulationPool,
        backend: Backend,
        inputs: InputStore,
        run_dir: Path,
        *,
        export_interval_s: int,
        every_windows: int,
    ) -> None:
        self.pool = pool
        self.backend = backend
        self.every_windows = every_windows
        self.export_interval_s = export_interval_s
        self.dir = run_dir / "opendc"
        self.history = History(self.dir / "history", inputs)
        self.stats = OpenDCStats()
        self._batch: _Batch | None = None
        self._failed: tuple[int, int, str] | None = None
        """(version, until, error) of a batch whose run failed: its other windows fail with it, unrun."""
        self._covered_ms: int | None = None

    def load(self) -> None:
        self.history.load()

    def status(self) -> dict[str, Any]:
        s = self.stats
        covered = sum(ms for ms, _ in s.recent)
        wall = sum(w for _, w in s.recent)
        return {
            "binary": self.backend.name,
            "every_windows": self.every_windows,
            "runs": s.runs,
            "runs_failed": s.failed,
            "windows": s.windows,
            "run_s_total": round(s.run_s, 3),
            "last_run_s": None if s.last_run_s is None else round(s.last_run_s, 3),
            "last_run_tasks": s.last_tasks,
            "last_run_fragments": s.last_fragments,
            "wall_s_per_simulated_hour": round(wall / (covered / 3.6e6), 3) if covered else None,
            "builtin_engine_for": ["calibration", "whatif", "optimizer"],
            "pool": self.pool.load.as_dict(),
        }

    async def rows(
        self, start_ms: int, end_ms: int, version: int, topology: Topology, batch_end_ms: int, final: bool
    ) -> pl.DataFrame:
        """The engine rows of window ``[start_ms, end_ms)`` under ``version`` (its batch ends at
        ``batch_end_ms``; ``final``: the batch ends the stream). Raises :class:`OpenDCWindowError`."""
        b = self._batch
        if b is None or b.version != version or b.until_ms < end_ms or (final and not b.final):
            until = max(batch_end_ms, end_ms)
            f = self._failed
            if f is not None and f[0] == version and f[1] == until:
                raise OpenDCWindowError(f"{f[2]} (the run of this window's batch)")
            try:
                b = await self._run(version, topology, until, final)
            except OpenDCWindowError as e:
                self._failed = (version, until, str(e))
                raise
        self.stats.windows += 1
        ts = pl.col("timestamp_absolute")
        if final and end_ms >= b.until_ms:  # the stream's last window: everything to the end
            mine = b.rows.filter(ts > start_ms)
        else:
            mine = b.rows.filter((ts > start_ms) & (ts <= end_ms))
        self._batch = _Batch(b.version, b.until_ms, b.final, b.rows.filter(ts > end_ms))
        return mine

    def _inputs(self, until_ms: int) -> dict[str, pl.DataFrame]:
        """The cumulative inputs up to ``until_ms``, zero tasks made causal (blocking: a worker thread)."""
        frames = self.history.frames(until_ms)
        frames["fragments"] = causal_fragments(frames["fragments"])
        return frames

    async def _run(self, version: int, topology: Topology, until_ms: int, final: bool) -> _Batch:
        t0 = time.perf_counter()
        try:
            frames = await asyncio.to_thread(self._inputs, until_ms)
        except OpenDCWindowError:
            self.stats.failed += 1
            raise
        except Exception as e:  # an unreadable part or input file fails the batch, never the loop
            self.stats.failed += 1
            raise OpenDCWindowError(f"cannot read the inputs up to {until_ms}: {e}") from e
        tasks, fragments, carbon = frames["tasks"], frames["fragments"], frames["carbon"]
        if fragments.is_empty():  # no task yet: the twin has no rows either (OpenDC cannot run empty)
            return _Batch(version, until_ms, final, pl.DataFrame(schema=ROW_SCHEMA))
        topo = strip_carbon_paths(topology)
        work = self.dir / "run"
        carbon_path = None
        if carbon.height:
            work.mkdir(parents=True, exist_ok=True)
            carbon_path = work / "carbon.parquet"
            await asyncio.to_thread(write_carbon_trace, carbon, carbon_path)
        label = f"opendc:v{version}:until {until_ms}"
        try:
            out = await run_simulation(
                self.pool,
                self.backend,
                topo,
                tasks,
                fragments,
                work,
                self.export_interval_s,
                carbon_path,
                name="twin",
                priority=Priority.HIGH,
                label=label,
                files_to_export=EXPORTED,
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.stats.failed += 1
            raise OpenDCWindowError(str(e) if label in str(e) else f"{label}: {e}") from e
        rows = twin_rows(out)
        origin = out.origin_ms
        if rows.height and origin is not None:
            rows = idle_tail(rows, topo, carbon, origin, self.export_interval_s * 1000, until_ms, final=final)
        wall = time.perf_counter() - t0
        s = self.stats
        s.runs += 1
        s.run_s += wall
        s.last_run_s = wall
        s.last_tasks, s.last_fragments = tasks.height, fragments.height
        covered = until_ms - (self._covered_ms if self._covered_ms is not None else until_ms)
        if covered > 0:
            s.recent.append((covered, wall))
        self._covered_ms = until_ms
        log.info(
            "opendc_run",
            version=version,
            until_ms=until_ms,
            tasks=tasks.height,
            fragments=fragments.height,
            seconds=round(wall, 3),
            engine_s=None if out.engine_s is None else round(out.engine_s, 3),
        )
        return _Batch(version, until_ms, final, rows)
