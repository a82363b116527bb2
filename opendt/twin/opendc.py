"""The twin's windows on the OpenDC binary (``simulation.engine: opendc``, issue 16).

OpenDC keeps no state between runs, so a window is an OpenDC run over every task the twin has received so
far (cumulative, as the original OpenDT did) up to the end of the window's batch
(``simulation.opendc_every_windows`` windows per run); each window keeps the rows of its own span
``(start, end]``. Runs go through the asyncio :class:`~opendt.opendc.pool.SimulationPool` (high priority,
its timeout and retries), one in flight per twin; the event loop only awaits them.

Three rules make a prefix run equal the streaming twin (checked against it in the tests, 1e-9):

* **Inputs from the stream only.** The cumulative tasks, fragments and carbon steps are the windows' stored
  inputs (:mod:`opendt.twin.inputs`), appended per run to ``<run_dir>/opendc/history/`` (one part per run,
  merged every ``COMPACT_PARTS``), so they outlive the input store's retention. Memory holds a run's frames
  only while it is written.
* **Causal zero tasks.** OpenDC completes a task whose fragments are all zero at once (OPENDC_SEMANTICS
  §3.4, §10.4); in a prefix run that is a task whose *known* fragments are all zero, which the streaming twin
  keeps on its host. The first fragment of such a task is given ``EPSILON_MHZ`` of demand, so OpenDC runs it
  too: power moves by under 1e-10 relative.
* **An empty datacenter after the run's end.** A prefix run ends at its last completion; from there to the
  batch end every host is idle, which OpenDC does not simulate. Those instants are filled with the
  topology's idle power (Σ P(0)) and the received carbon intensity (:func:`idle_tail`), and OpenDC's
  partial final row joins the first of them.

A topology version is the topology of every cumulative run from the window it takes effect on: for a change
of power model or speed (calibration) OpenDC places every task as before, so the rows equal the twin's. A
change of hosts is simulated as if the datacenter always had the new hosts, where the builtin engine
migrates the running tasks: the two differ for the tasks in flight at the change.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import structlog

from opendt.engine.hosts import build_hosts
from opendt.models.topology import Topology, parse_topology
from opendt.opendc.backends import Backend, run_simulation
from opendt.opendc.pool import Priority, SimulationPool
from opendt.opendc.results import SimulationOutput
from opendt.twin.files import write_atomic
from opendt.twin.inputs import InputStore
from opendt.workload import CARBON_SCHEMA, FRAGMENT_SCHEMA, TASK_SCHEMA

log = structlog.get_logger(component="opendc")

EPSILON_MHZ = 1e-6
"""Demand given to the first fragment of a task whose known fragments are all zero."""
COMPACT_PARTS = 32
"""History parts merged into one when there are more."""
EXPORTED = ("powerSource", "service")
KINDS = {"tasks": TASK_SCHEMA, "fragments": FRAGMENT_SCHEMA, "carbon": CARBON_SCHEMA}
ROW_COLUMNS = (
    "timestamp",
    "timestamp_absolute",
    "cluster_name",
    "power_draw",
    "energy_usage",
    "carbon_intensity",
    "carbon_emission",
    "tasks_completed",
    "cpu_work",
)


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
        starts = self.inputs.between(-(2**62) if lo is None else lo, until_ms)
        if lo is not None and starts and starts[0] != lo:
            raise OpenDCWindowError(
                f"the inputs of the windows from {lo} are no longer stored: the OpenDC history cannot grow"
            )
        parts = [self.inputs.tables(s) for s in starts]
        frames = {
            kind: pl.concat([p[kind] for p in parts], how="vertical_relaxed").cast(schema)
            if parts
            else pl.DataFrame(schema=schema)
            for kind, schema in KINDS.items()
        }
        self._write_part(frames, until_ms)
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


def _carbon_integral(times: np.ndarray[Any, Any], values: np.ndarray[Any, Any], a: int, b: int) -> float:
    """∫ intensity dt over ``[a, b]`` (ms × gCO2/kWh) of the step function (the first value holds before)."""
    if b <= a:
        return 0.0
    if times.size == 0:
        return 0.0
    cuts = np.concatenate(([a], times[(times > a) & (times < b)], [b]))
    idx = np.maximum(np.searchsorted(times, cuts[:-1], side="right") - 1, 0)
    return float(np.sum(values[idx] * np.diff(cuts)))


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
    times = carbon["timestamp_ms"].to_numpy() if carbon.height else np.zeros(0, np.int64)
    vals = carbon["carbon_intensity"].to_numpy() if carbon.height else np.zeros(0, np.float64)
    order = np.argsort(times, kind="stable")
    times, vals = times[order], vals[order]

    def intensity(t: int) -> float:
        if times.size == 0:
            return 0.0
        i = max(int(np.searchsorted(times, t, side="right")) - 1, 0)
        return float(vals[i])

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
                    "carbon_emission": c0 + _carbon_integral(times, vals, prev, g) * p * 0.001 / 3.6e6,
                    "tasks_completed": n0,
                    "cpu_work": None,
                }
            )
        prev = g
    if not out:
        return rows
    tail = pl.DataFrame(out, schema=rows.select(ROW_COLUMNS).schema)
    return pl.concat([rows.select(ROW_COLUMNS), tail], how="vertical_relaxed")


def twin_rows(out: SimulationOutput) -> pl.DataFrame:
    """OpenDC's powerSource rows in the twin's engine-row columns; ``tasks_completed`` from service.parquet
    (the increase of its cumulative count, on the first cluster's row); ``cpu_work`` is not exported by
    OpenDC (null)."""
    power = out.power.sort("timestamp_absolute", maintain_order=True)
    done = pl.DataFrame(schema={"timestamp_absolute": pl.Int64, "tasks_completed": pl.Int64})
    raw = out.directory / "service.parquet"
    if raw.is_file():
        svc = pl.read_parquet(raw, columns=["timestamp_absolute", "tasks_completed"])
        done = (
            svc.group_by("timestamp_absolute")
            .agg(pl.col("tasks_completed").max().cast(pl.Int64))
            .sort("timestamp_absolute")
            .with_columns(pl.col("tasks_completed").diff().fill_null(pl.col("tasks_completed")))
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
        .select(
            pl.col("timestamp").cast(pl.Int64),
            pl.col("timestamp_absolute").cast(pl.Int64),
            pl.col("cluster_name").cast(pl.Utf8),
            *(pl.col(c).cast(pl.Float64) for c in ROW_COLUMNS[3:7]),
            pl.col("tasks_completed").cast(pl.Int64),
            pl.col("cpu_work"),
        )
    )


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
        mine = b.rows.filter(ts > start_ms) if final and end_ms >= b.until_ms else None
        if mine is None:
            mine = b.rows.filter((ts > start_ms) & (ts <= end_ms))
        self._batch = _Batch(b.version, b.until_ms, b.final, b.rows.filter(ts > end_ms))
        return mine

    async def _run(self, version: int, topology: Topology, until_ms: int, final: bool) -> _Batch:
        t0 = time.perf_counter()
        frames = await asyncio.to_thread(self.history.frames, until_ms)
        tasks, fragments, carbon = frames["tasks"], frames["fragments"], frames["carbon"]
        if fragments.is_empty():  # no task yet: the twin has no rows either (OpenDC cannot run empty)
            return _Batch(version, until_ms, final, pl.DataFrame(schema=_row_schema()))
        fragments = causal_fragments(fragments)
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


def _row_schema() -> dict[str, Any]:
    return {
        "timestamp": pl.Int64,
        "timestamp_absolute": pl.Int64,
        "cluster_name": pl.Utf8,
        "power_draw": pl.Float64,
        "energy_usage": pl.Float64,
        "carbon_intensity": pl.Float64,
        "carbon_emission": pl.Float64,
        "tasks_completed": pl.Int64,
        "cpu_work": pl.Float64,
    }
