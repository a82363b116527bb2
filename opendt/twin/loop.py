"""The simulator component: one closed window at a time through the twin's long-lived engine worker.

Per window: apply a newer simulated topology (from ``sim.topology``; it takes effect from this window on),
advance the engine to the window end with the window's new tasks and fragments, aggregate the export rows
(sum over clusters), make them durable (:class:`ResultStore`), publish ``sim.results``, commit the input
offsets, record timings. A worker that dies or hangs is restarted with its state rebuilt and the window is
retried (``simulation.retries``); after that, or at once when the engine raised, the window is recorded as
failed and the twin goes on. A failed window leaves no trace in the engine (the worker's state is the replay
of the successful calls): its new tasks and fragments are not simulated, and the next window's rows cover its
time span.

After a restart, windows already durable are replayed into the engine (to rebuild its state, with the
topology version they had; failed ones are skipped, as they were) but not written again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import polars as pl
import structlog

from opendt.engine.rows import ACTIVITY_COLUMNS
from opendt.models.messages import iso_ms
from opendt.models.topology import Topology, parse_topology
from opendt.settings import SimulationSettings
from opendt.stream.consumer import ClosedWindow
from opendt.stream.windowing import Window
from opendt.twin.results import ResultStore, WindowRecord
from opendt.worker.client import TwinEngine, WorkerDied, WorkerError
from opendt.workload import FRAGMENT_SCHEMA, TASK_SCHEMA

log = structlog.get_logger(component="simulator")
T = TypeVar("T")


@dataclass
class SimTopology:
    version: int
    source: str
    reason: str
    topology: Topology
    timestamp_ms: int = 0


class TopologyBox:
    """The current simulated topology; the sim.topology listener and the API offer newer versions."""

    def __init__(self, physical: Topology) -> None:
        self.physical = physical
        self.current = SimTopology(0, "initial", "physical topology", physical)
        self._reserved = 0

    def next_version(self) -> int:
        """A version number no earlier offer or reservation has used (publishers call this first)."""
        self._reserved = max(self._reserved, self.current.version) + 1
        return self._reserved

    def offer(self, candidate: SimTopology) -> bool:
        if candidate.version <= self.current.version:
            return False
        self.current = candidate
        return True

    def of_version(self, version: int, store: ResultStore | None) -> Topology | None:
        """The topology of ``version``: the current one, the physical one (0), else the one the run saved
        (``None`` when unknown)."""
        if version == self.current.version:
            return self.current.topology
        if version == 0:
            return self.physical
        doc = None if store is None else store.load_topology(version)
        return None if doc is None else parse_topology(doc["topology"], source=f"run topology v{version}")

    def resume(self, store: ResultStore) -> bool:
        """Make the highest version an earlier process of the run saved (what it last applied) the current
        one, so it stays in effect and new versions follow its number (the embedded broker keeps no
        sim.topology history; an external one re-offers it, and older offers are ignored)."""
        doc = store.latest_topology()
        if doc is None:
            return False
        version = int(doc["version"])
        return self.offer(
            SimTopology(
                version,
                str(doc.get("source", "resumed")),
                str(doc.get("reason", "")),
                parse_topology(doc["topology"], source=f"run topology v{version}"),
                int(doc.get("timestamp_ms", 0)),
            )
        )


def window_frames(w: Window) -> tuple[pl.DataFrame, pl.DataFrame]:
    tasks = pl.DataFrame(w.tasks, schema=TASK_SCHEMA, orient="row")
    frags = pl.DataFrame(w.fragments, schema=FRAGMENT_SCHEMA, orient="row")
    return tasks, frags


def aggregate_rows(rows: pl.DataFrame, version: int, window_start_ms: int) -> pl.DataFrame:
    """Engine rows (one per cluster per instant; a duplicate final flush) → one row per export instant.

    The activity columns (``tasks_completed``, ``cpu_work``) are summed over every row of an instant: the
    duplicate flush row carries the completions at the last instant itself (engine/rows.py)."""
    if rows.is_empty():
        return pl.DataFrame()
    key = ["timestamp_absolute", "cluster_name"]
    activity = rows.group_by(key).agg(*(pl.col(c).sum() for c in ACTIVITY_COLUMNS))
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
            pl.col("tasks_completed").sum(),
            pl.col("cpu_work").sum(),
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


class WindowFailed(RuntimeError):
    """A window that could not be simulated: its worker died or hung each time, or the engine raised."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass
class SimulatorStats:
    windows_simulated: int = 0
    windows_failed: int = 0
    windows_replayed: int = 0
    latencies_s: list[float] = field(default_factory=list)
    last_window_end_ms: int | None = None


Publish = Callable[[bytes, dict[str, object]], Awaitable[None]]
Commit = Callable[[ClosedWindow], Awaitable[None]]


class WindowHooks(Protocol):
    """Observers of the window loop (calibrator, history): awaited in order, within the window."""

    async def before_window(self, w: Window) -> None: ...

    async def after_window(
        self, w: Window, tasks: pl.DataFrame, fragments: pl.DataFrame, *, replayed: bool = False
    ) -> None: ...


class HookChain:
    """Several :class:`WindowHooks` as one, called in the given order."""

    def __init__(self, *hooks: WindowHooks | None) -> None:
        self.hooks = [h for h in hooks if h is not None]

    async def before_window(self, w: Window) -> None:
        for h in self.hooks:
            await h.before_window(w)

    async def after_window(
        self, w: Window, tasks: pl.DataFrame, fragments: pl.DataFrame, *, replayed: bool = False
    ) -> None:
        for h in self.hooks:
            await h.after_window(w, tasks, fragments, replayed=replayed)


class Simulator:
    def __init__(
        self,
        queue: asyncio.Queue[ClosedWindow | None],
        twin: TwinEngine,
        store: ResultStore,
        box: TopologyBox,
        settings: SimulationSettings,
        carbon: pl.DataFrame | None,
        *,
        publish: Publish | None = None,
        commit: Commit | None = None,
        on_done: Callable[[], None] | None = None,
        hooks: WindowHooks | None = None,
    ) -> None:
        self.queue = queue
        self.twin = twin
        self.store = store
        self.box = box
        self.settings = settings
        self.carbon = None if carbon is None else carbon.rename({"timestamp_ms": "timestamp"}, strict=False)
        self.publish = publish
        self.commit = commit
        self.on_done = on_done
        self.hooks = hooks
        self.stats = SimulatorStats()
        self.applied_version = -1
        self.done = asyncio.Event()

    async def run(self) -> None:
        # a resumed run replays its durable windows from the physical topology (version 0), each window under
        # the version it was simulated with; a new run starts from the current one
        if self.store.durable_count:
            topology, version = self.box.physical, 0
        else:
            topology, version = self.box.current.topology, self.box.current.version
        await self.twin.init(topology.to_json_dict(), self.settings.export_interval_s * 1000, self.carbon)
        self.applied_version = version
        try:
            while (cw := await self.queue.get()) is not None:
                await self.process(cw)
        finally:
            await self.twin.close()
        self.done.set()
        if self.on_done is not None:
            self.on_done()
        log.info(
            "simulator_finished",
            windows=self.stats.windows_simulated,
            failed=self.stats.windows_failed,
            replayed=self.stats.windows_replayed,
        )

    async def _apply_version(self, version: int) -> None:
        if version == self.applied_version:
            return
        topo = self.box.of_version(version, self.store)
        if topo is None:
            log.warning("topology_version_unknown", version=version)
            return
        await self._retrying("set_topology", lambda: self.twin.set_topology(topo.to_json_dict()))
        self.applied_version = version

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]], **ctx: object) -> tuple[T, int]:
        """``call()`` with up to ``simulation.retries`` retries when the worker dies or hangs (it is rebuilt);
        returns the result and the attempts. An engine error is deterministic and not retried. Either failure
        ends as :class:`WindowFailed` with the attempts made."""
        attempts = 0
        while True:
            attempts += 1
            try:
                return await call(), attempts
            except WorkerDied as e:
                if attempts > self.settings.retries:
                    raise WindowFailed(str(e), attempts) from e
                log.warning("simulation_retry", what=what, attempt=attempts, error=str(e), **ctx)
            except WorkerError as e:
                raise WindowFailed(str(e), attempts) from e

    async def process(self, cw: ClosedWindow) -> None:
        w = cw.window
        t0 = time.perf_counter()
        tasks, frags = window_frames(w)
        if self.store.is_durable(w.start_ms):
            version = self.store.window_version(w.start_ms)
            if version is not None:
                await self._apply_version(version)
            if self.store.window_status(w.start_ms) == "ok":  # a failed window left no trace in the engine
                await self._advance(w, tasks, frags)
            self.stats.windows_replayed += 1
            if self.hooks is not None:
                await self.hooks.after_window(w, tasks, frags, replayed=True)
            if self.commit is not None:
                await self.commit(cw)
            return
        if self.hooks is not None:
            await self.hooks.before_window(w)
        cur = self.box.current
        if cur.version != self.applied_version:
            meta = {"source": cur.source, "reason": cur.reason, "timestamp_ms": cur.timestamp_ms}
            self.store.save_topology(cur.version, cur.topology, meta)
            await self._apply_version(cur.version)
            log.info("topology_applied", version=cur.version, source=cur.source, window_start=w.start_ms)
        status, error, attempts = "ok", "", 1
        compute0 = self.twin.stats.compute_s
        try:
            rows, attempts = await self._advance(w, tasks, frags)
        except WindowFailed as e:
            status, error, rows, attempts = "failed", str(e), pl.DataFrame(), e.attempts
            self.stats.windows_failed += 1
            log.error("window_failed", window_start=w.start_ms, error=error)  # noqa: TRY400 - expected, no trace
        agg = aggregate_rows(rows, self.applied_version, w.start_ms)
        latency = time.perf_counter() - t0
        record = WindowRecord(
            window_start_ms=w.start_ms,
            window_end_ms=w.end_ms,
            status=status,
            rows=agg.height,
            tasks=tasks.height,
            fragments=frags.height,
            power_samples=len(w.power),
            topology_version=self.applied_version,
            latency_s=latency,
            compute_s=self.twin.stats.compute_s - compute0,
            attempts=attempts,
            error=error,
        )
        await self.store.commit(record, agg if agg.height else pl.DataFrame())
        if self.publish is not None and agg.height:
            await self.publish(
                iso_ms(w.start_ms).encode(), results_message(w, self.applied_version, "builtin", agg)
            )
        if self.commit is not None:
            await self.commit(cw)
        if self.hooks is not None:
            await self.hooks.after_window(w, tasks, frags)
        if status == "ok":
            self.stats.windows_simulated += 1
        self.stats.latencies_s.append(time.perf_counter() - t0)
        self.stats.last_window_end_ms = w.end_ms

    async def _advance(self, w: Window, tasks: pl.DataFrame, frags: pl.DataFrame) -> tuple[pl.DataFrame, int]:
        async def call() -> pl.DataFrame:
            rows = await self.twin.advance(w.end_ms, tasks, frags)
            if w.final:
                rows = pl.concat([rows, await self.twin.finish()], how="vertical_relaxed")
            return rows

        return await self._retrying("advance", call, window_start=w.start_ms)
