"""The window loop: one closed window at a time through the twin's long-lived engine worker.

Per window: apply a newer simulated topology (:mod:`opendt.twin.topology`; it takes effect from this window
on), advance the engine to the window end with the window's new tasks and fragments, aggregate the export rows
(sum over clusters), make them durable (:class:`ResultStore`), publish ``sim.results``, commit the input
offsets, record timings. A worker that dies or hangs is restarted with its state rebuilt and the window is
retried (``simulation.retries``); after that, or at once when the engine raised, the window is recorded as
failed and the twin goes on. A failed window leaves no trace in the engine (the worker's state is the replay
of the successful calls): its new tasks and fragments are not simulated, and the next window's rows cover its
time span. Windows queued behind one another (the twin is behind) go through the engine in batches, with the
same results (:mod:`opendt.twin.batch`).

Each window's inputs are stored (:mod:`opendt.twin.inputs`) before it is simulated, and every
``checkpoint.every_s`` a checkpoint is taken; a restart restores the newest checkpoint and replays the durable
windows after it from the store, and a crashed worker is rebuilt the same way (:mod:`opendt.twin.recovery`).
Durable windows whose stored inputs are gone at a restart come again from the stream and are replayed into the
engine (with their topology version; failed ones skipped), their inputs stored again, results not rewritten.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import polars as pl
import structlog

from opendt.models.messages import CarbonRow, iso_ms
from opendt.models.topology import Topology
from opendt.settings import SimulationSettings
from opendt.stream.resume import ClosedWindow
from opendt.stream.windowing import Window
from opendt.twin.batch import Taker, positions, run_batch, window_record
from opendt.twin.crosscheck import CrossCheck
from opendt.twin.hooks import HookChain, WindowHooks
from opendt.twin.loopstats import LoopStats, WindowFailed, cluster_totals
from opendt.twin.opendc import OpenDCWindowError, OpenDCWindows, unknown_carbon_like
from opendt.twin.recovery import Recovery
from opendt.twin.results import ResultStore, aggregate_rows, measured_rows, results_message
from opendt.twin.status import LatencyHistogram, SimulationStatus
from opendt.twin.topology import SimTopology, TopologyBox
from opendt.worker.client import TwinEngine, WorkerDied, WorkerError
from opendt.workload import carbon_frame

log = structlog.get_logger(component="simulator")
T = TypeVar("T")
Publish = Callable[[bytes, dict[str, object]], Awaitable[None]]
Commit = Callable[[ClosedWindow], Awaitable[None]]
OnPhysical = Callable[[Topology, int, bool], Awaitable[None]]
"""Called when a window brings a physical topology that differs from the one before (topology, window
start, whether it is the first): the daemon makes a later one the base of a new simulated version."""


class WindowLoop:
    def __init__(
        self,
        queue: asyncio.Queue[ClosedWindow | None],
        twin: TwinEngine,
        store: ResultStore,
        box: TopologyBox,
        settings: SimulationSettings,
        *,
        publish: Publish | None = None,
        commit: Commit | None = None,
        on_done: Callable[[], None] | None = None,
        hooks: WindowHooks | None = None,
        on_physical: OnPhysical | None = None,
        recovery: Recovery | None = None,
        opendc: OpenDCWindows | None = None,
        crosscheck: CrossCheck | None = None,
    ) -> None:
        self.queue = queue
        self.twin = twin
        self.store = store
        self.box = box
        self.settings = settings
        self.on_physical = on_physical
        self.recovery = recovery
        self.opendc = opendc
        """When set (``simulation.engine: opendc``), a window's results are OpenDC's, batched
        ``opendc_every_windows`` at a time; the builtin engine still advances (calibration, what-ifs and
        the optimizer start from its state)."""
        self.engine = "builtin" if opendc is None else "opendc"
        self.crosscheck = crosscheck
        twin.rebuild = self._rebuild
        self._engine_ready = False
        self._engine_until: int | None = None
        """The end of the last window the engine has (from a resume or simulated)."""
        self._carbon: list[CarbonRow] = []
        """Carbon steps received but not yet in the engine (a failed window's are carried to the next)."""
        self.publish = publish
        self.commit = commit
        self.on_done = on_done
        self.hooks = hooks if isinstance(hooks, HookChain) or hooks is None else HookChain(hooks)
        self.stats = LoopStats()
        self.latency = LatencyHistogram()
        self.applied_version = -1
        self.busy_since: float | None = None
        """``time.monotonic()`` when the window being processed was taken (None when idle): /health's stall
        check (:mod:`opendt.twin.liveness`)."""
        self.done = asyncio.Event()
        self.taker = Taker(queue)

    def status(self) -> SimulationStatus:
        lat = self.stats.latencies_s
        return SimulationStatus(
            windows_simulated=self.stats.windows_simulated,
            windows_failed=self.stats.windows_failed,
            windows_replayed=self.stats.windows_replayed,
            windows_durable=self.store.durable_count,
            last_window_end_ms=self.stats.last_window_end_ms,
            latency_p50_s=round(statistics.median(lat), 4) if lat else None,
            latency_p95_s=round(sorted(lat)[int(0.95 * (len(lat) - 1))], 4) if lat else None,
            worker_restarts=self.twin.stats.restarts,
            topologies_refused=self.stats.topologies_refused,
            done=self.done.is_set(),
            engine=self.engine,
            opendc=None if self.opendc is None else self.opendc.status(),
            crosscheck=None if self.crosscheck is None else self.crosscheck.status(),
        )

    async def _ensure_engine(self) -> None:
        """Start the twin's engine on the first window (the physical topology has arrived with it). A run
        resumed from the stream (no input store) replays its durable windows from version 0, each under the
        version it was simulated with; a new run starts from the current one."""
        if self._engine_ready:
            return
        if self.store.durable_count:
            version = 0
            topology = self.box.of_version(0, self.store)
            assert topology is not None  # set by the first window's physical topology
        else:
            topology, version = self.box.current.topology, self.box.current.version
        await self.twin.init(topology.to_json_dict(), self.settings.export_interval_s * 1000, None)
        self.applied_version = version
        self._engine_ready = True
        if version == 0 and self.store.load_topology(0) is None:
            self._save_version()  # a restart in stream mode needs the hardware the run started on

    def _save_version(self) -> None:
        """Save the current simulated version with the run (with the physical topology it was made for)."""
        cur = self.box.current
        meta = {
            "source": cur.source,
            "reason": cur.reason,
            "timestamp_ms": cur.timestamp_ms,
            "physical": self.box.physical.to_json_dict(),
        }
        self.store.save_topology(cur.version, cur.topology, meta)

    async def _rebuild(self) -> None:
        """A new engine worker's state (its predecessor died or hung): the newest checkpoint, then the durable
        windows since, from the input store; without durability, the engine as it started."""
        if self._engine_until is None:  # nothing simulated yet: the engine as it starts
            self._engine_ready = False
            await self._ensure_engine()
            return
        if self.recovery is None:
            raise WorkerDied("the engine's state is lost and the twin keeps no durable state to rebuild it")
        self.applied_version = await self.recovery.rebuild(self._engine_until)

    async def _resume(self) -> None:
        """After a restart: the plan's checkpoint, then the durable windows after it replayed from the input
        store (the hooks see them as replayed); those whose stored inputs are gone come from the stream
        (:meth:`Recovery.stream_resume`), replayed by :meth:`process`."""
        r = self.recovery
        if r is None or (plan := r.resume_plan or r.plan_resume()) is None:
            return
        ckpt, until = plan.checkpoint, plan.stored_until_ms
        lo = None if ckpt is None else ckpt.at_ms
        stored = r.durable_after(lo, until)
        if ckpt is None and not stored:
            return  # every durable window comes from the stream: the engine starts with the first
        if ckpt is not None:
            self.box.restore_state(ckpt.state["box"])
            if self.hooks is not None:
                self.hooks.restore_checkpoint(ckpt.state.get("hooks", {}))
        t0 = time.perf_counter()
        self.applied_version = await r.restore(ckpt)
        self._engine_ready = True
        carbon: list[CarbonRow] = []
        for s in stored:
            sw = r.d.inputs.read(s)
            if sw.window.topology is not None:
                self.box.set_physical(sw.window.topology, s)
            self.applied_version, _ = await r.replay(sw, self.applied_version, carbon)
            self._carbon = list(carbon)
            self.stats.windows_replayed += 1
            if self.hooks is not None:
                await self.hooks.after_window(sw.window, sw.tasks, sw.fragments, replayed=True)
        self._engine_until = until
        self.stats.last_window_end_ms = until
        log.info("resumed", checkpoint_ms=lo, windows_replayed=self.stats.windows_replayed, until_ms=until,
                 from_stream_until_ms=None if until == plan.end_ms else plan.end_ms,
                 seconds=round(time.perf_counter() - t0, 3))  # fmt: skip

    async def _physical(self, w: Window, *, replayed: bool) -> None:
        """A window that brings a physical topology: the first one is version 0; a later one that differs is
        handed to ``on_physical`` (not for a durable window replayed after a restart: its versions exist)."""
        assert w.topology is not None
        first = not self.box.known or self.box.initial is None
        changed = self.box.set_physical(w.topology, w.start_ms)
        log.info("physical_topology", window_start=w.start_ms, first=first, changed=changed)
        if (first or changed) and not replayed and self.on_physical is not None:
            await self.on_physical(w.topology, w.start_ms, first)

    async def run(self) -> None:
        try:
            await self._resume()
            more = True
            while more:
                batch, more = await self._take_batch()
                self.busy_since = time.monotonic()
                try:
                    await self._process_batch(batch)
                finally:
                    self.busy_since = None
            if self.crosscheck is not None:  # the check in flight is part of the run
                await self.crosscheck.wait()
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

    async def _take_batch(self) -> tuple[list[ClosedWindow], bool]:
        """The next windows to simulate together: with OpenDC ``opendc_every_windows`` (fewer at the stream's
        end), else a window and the plain ones queued behind it (:mod:`opendt.twin.batch`); False once the
        queue has ended."""
        if self.opendc is None:
            return await self.taker.take(self)
        batch: list[ClosedWindow] = []
        while len(batch) < self.opendc.every_windows and not (batch and batch[-1].window.final):
            cw = await self.queue.get()
            if cw is None:
                return batch, False
            batch.append(cw)
        return batch, True

    async def _process_batch(self, batch: list[ClosedWindow]) -> None:
        if self.opendc is None and len(batch) > 1:
            await run_batch(self, batch)
            return
        if self.opendc is None or not batch:
            for cw in batch:
                await self.process(cw)
            return
        todo = [
            cw
            for cw in batch
            if not self.store.is_durable(cw.window.start_ms)
            and (self._engine_until is None or cw.window.end_ms > self._engine_until)
        ]
        for cw in todo:  # OpenDC's run reads the batch's inputs from the store
            await self._store_inputs(cw)
        end = max(cw.window.end_ms for cw in batch)
        final = batch[-1].window.final
        stored = {id(cw) for cw in todo}
        for cw in batch:
            await self.process(cw, batch_end_ms=end, batch_final=final, stored=id(cw) in stored)

    async def _store_inputs(self, cw: ClosedWindow) -> None:
        """Store a window's inputs with the stream positions it closed at (with durability)."""
        if self.recovery is not None:
            await self.recovery.d.inputs.write(cw.window, positions(cw))

    async def _opendc_rows(self, w: Window, batch_end_ms: int | None, final: bool) -> pl.DataFrame:
        assert self.opendc is not None
        topology = self.box.of_version(self.applied_version, self.store)
        if topology is None:
            raise OpenDCWindowError(f"topology version {self.applied_version} is not known")
        return await self.opendc.rows(
            w.start_ms, w.end_ms, self.applied_version, topology, batch_end_ms or w.end_ms, final or w.final
        )

    async def _apply_current(self, cur: SimTopology, window_start_ms: int) -> None:
        """Apply the current simulated version from this window on, then save it with the run. One the
        engine refuses is refused: logged and counted, never saved (a restart does not retry it), and the
        version before stays in effect (current again in the box); the window goes on with it."""
        before = self.applied_version
        try:
            await self._apply_version(cur.version)
        except WindowFailed as e:
            self.stats.topologies_refused += 1
            log.error(  # noqa: TRY400 - the engine's message says it all
                "topology_refused", version=cur.version, source=cur.source, error=str(e)[:500], keeps=before
            )
            self.store.refuse_topology(cur.version)
            kept = self.box.of_version(before, self.store)
            if kept is None:
                raise
            reason = f"v{cur.version} ({cur.source}) could not be applied: {str(e)[:200]}"
            self.box.revert(SimTopology(before, "kept", reason, kept, cur.timestamp_ms))
            self.applied_version = -1  # the worker may hold either: set the kept one again
            await self._apply_version(before)
            return
        self._save_version()
        log.info("topology_applied", version=cur.version, source=cur.source, window_start=window_start_ms)

    async def _apply_version(self, version: int) -> None:
        if version != self.applied_version:
            await self._retrying("set_topology", lambda: self._set_version(version))

    async def _set_version(self, version: int) -> None:
        topo = self.box.of_version(version, self.store)
        if topo is None:
            log.warning("topology_version_unknown", version=version)
            return
        await self.twin.set_topology(topo.to_json_dict())
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

    async def process(
        self,
        cw: ClosedWindow,
        *,
        batch_end_ms: int | None = None,
        batch_final: bool = False,
        stored: bool = False,
    ) -> None:
        w = cw.window
        t0 = time.perf_counter()
        if self._engine_until is not None and w.end_ms <= self._engine_until:
            if self.commit is not None:  # the engine has it already (a resumed run): nothing to do
                await self.commit(cw)
            return
        tasks, frags = w.frames()
        durable = self.store.is_durable(w.start_ms)
        if w.topology is not None:
            await self._physical(w, replayed=durable)
        self._carbon.extend(w.carbon)
        await self._ensure_engine()
        if durable:  # its stored inputs were gone at the restart: the stream gave it again, store it again
            await self._store_inputs(cw)
            version = self.store.window_version(w.start_ms)
            if version is not None:
                await self._apply_version(version)
            if self.store.window_status(w.start_ms) == "ok":  # a failed window left no trace in the engine
                await self._advance(w, tasks, frags)
            self._engine_until = w.end_ms
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
            await self._apply_current(cur, w.start_ms)
        if not stored:  # before simulating: a crash rebuild and a resume read it
            await self._store_inputs(cw)
        status, error, attempts = "ok", "", 1
        compute0 = self.twin.stats.compute_s
        try:
            rows, attempts = await self._advance(w, tasks, frags)
        except WindowFailed as e:
            status, error, rows, attempts = "failed", str(e), pl.DataFrame(), e.attempts
            self.stats.windows_failed += 1
            log.error("window_failed", window_start=w.start_ms, error=error)  # noqa: TRY400 - expected, no trace
        if self.opendc is not None and status == "ok":
            try:
                rows = unknown_carbon_like(await self._opendc_rows(w, batch_end_ms, batch_final), rows)
            except OpenDCWindowError as e:
                status, error, rows = "failed", str(e)[:2000], pl.DataFrame()
                self.stats.windows_failed += 1
                log.error("window_failed", window_start=w.start_ms, engine="opendc", error=error[:500])  # noqa: TRY400
        agg = aggregate_rows(rows, self.applied_version, w.start_ms)
        self.stats.clusters = cluster_totals(rows, w.start_ms)
        record = window_record(
            w, tasks, frags, agg, status=status, version=self.applied_version,
            latency_s=time.perf_counter() - t0, compute_s=self.twin.stats.compute_s - compute0,
            attempts=attempts, error=error, engine=self.engine,
        )  # fmt: skip
        await self.store.commit(record, agg if agg.height else pl.DataFrame(), measured_rows(w))
        self.stats.last_window_end_ms = w.end_ms  # durable now: what the API serves may reach its end
        if self.publish is not None and agg.height:
            await self.publish(
                iso_ms(w.start_ms).encode(), results_message(w, self.applied_version, self.engine, agg)
            )
        if self.commit is not None:
            await self.commit(cw)
        self._engine_until = w.end_ms
        if self.hooks is not None:
            await self.hooks.after_window(w, tasks, frags)
        if self.crosscheck is not None:
            self.crosscheck.after_window(w.end_ms)
        if status == "ok":
            self.stats.windows_simulated += 1
        self.stats.latencies_s.append(time.perf_counter() - t0)
        self.latency.observe(self.stats.latencies_s[-1])
        await self._checkpoint_after(cw)

    async def _checkpoint_after(self, cw: ClosedWindow, blob: bytes | None = None) -> None:
        """A checkpoint after the window ``cw`` when its end is a checkpoint instant (``blob``: the engine's
        snapshot then, when taken already)."""
        r, w = self.recovery, cw.window
        if r is not None and w.end_ms % r.d.every_ms == 0 and not w.final:
            extra = {
                "hooks": {} if self.hooks is None else self.hooks.checkpoint_state(),
                "positions": [[tp.topic, tp.partition, o] for tp, o in sorted(cw.commit_offsets.items())],
            }
            if await r.checkpoint(w.end_ms, self.applied_version, extra, blob):
                self.stats.checkpoints += 1

    async def _advance(self, w: Window, tasks: pl.DataFrame, frags: pl.DataFrame) -> tuple[pl.DataFrame, int]:
        carbon = carbon_frame(self._carbon) if self._carbon else None
        version = self.applied_version

        async def call() -> pl.DataFrame:
            if self.applied_version != version:  # a rebuilt worker: this window's topology again
                await self._set_version(version)
            rows = await self.twin.advance(w.end_ms, tasks, frags, carbon)
            if w.final:
                rows = pl.concat([rows, await self.twin.finish()], how="vertical_relaxed")
            return rows

        out = await self._retrying("advance", call, window_start=w.start_ms)
        self._carbon.clear()  # in the engine now
        return out
