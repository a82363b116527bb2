"""Windows simulated together when the twin is behind (a replay at ``--speed max``, a twin catching up).

When closed windows wait in the queue, the loop takes the plain ones queued right behind the one it takes —
no physical topology, not durable yet, not the stream's last, no topology version to apply — and simulates
them in one round trip to the engine worker, advanced one after the other exactly as window by window
(:meth:`~opendt.worker.client.TwinEngine.advance_many`: the same engine calls, so the same rows). Their inputs
are stored in one step while the worker simulates them (before any of them is durable: a resume reads them;
a rebuilt worker reads durable windows only), their results made durable in one step after (in order, each
window's journal entry after its rows: a crash in the middle leaves the windows before it durable, and a
restart goes on from there), the input offsets are committed once (the batch's last window's, which cover
the others). Each window keeps its own record, ``sim.results`` message, hook calls and counters. Its latency
is the batch's: it was taken when the batch was and is durable when the batch is.

A batch ends at a checkpoint instant (the checkpoint is taken after its last window, as window by window; the
worker's snapshot for it comes back with the batch's rows) and holds at most ``MAX_FRAGMENTS`` fragments (a
large window goes alone: its own simulation dwarfs a round trip). No batch is made while a hook needs the
engine between windows (calibration and the optimizer are not ``batch_safe``), with OpenDC's results or
with the cross-check against OpenDC (its checks fall due window by window). When the worker fails the batch
(the engine raised, the worker died or hung), the batch leaves no trace in the engine (its worker is rebuilt
from the durable state) and its windows are simulated again one by one, each with its retries, so a failure
stays the one window's as
before (a window that kills its worker costs the batch's attempt besides its own).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import polars as pl
import structlog
from aiokafka import TopicPartition

from opendt.models.messages import iso_ms
from opendt.stream.resume import ClosedWindow
from opendt.stream.windowing import Window
from opendt.twin.loopstats import cluster_totals
from opendt.twin.results import WindowRecord, aggregate_rows, measured_rows, results_message
from opendt.worker.client import WorkerDied, WorkerError
from opendt.workload import carbon_frame

if TYPE_CHECKING:
    from opendt.twin.loop import WindowLoop

log = structlog.get_logger(component="simulator")

MAX_WINDOWS = 64
"""Windows in one batch at most (the queue holds ``windowing.queue_size``)."""
MAX_FRAGMENTS = 50_000
"""A batch takes no further window once it holds this many fragments."""


def _size(cw: ClosedWindow) -> int:
    return cw.window.n_fragments + len(cw.window.tasks)


class Taker:
    """Takes the loop's windows from the queue: one, or a batch of the plain windows queued behind a plain
    one. A window that cannot join is held for the next take (the queue's order is kept)."""

    def __init__(self, queue: asyncio.Queue[ClosedWindow | None]) -> None:
        self.queue = queue
        self._held: ClosedWindow | None = None
        self._ended = False

    async def _get(self) -> ClosedWindow | None:
        if self._held is not None:
            cw, self._held = self._held, None
            return cw
        if self._ended:
            return None
        return await self.queue.get()

    async def take(self, loop: WindowLoop) -> tuple[list[ClosedWindow], bool]:
        """The next window, with the plain windows already queued behind it when it is plain itself, up to a
        checkpoint instant; False once the queue has ended."""
        first = await self._get()
        if first is None:
            return [], False
        batch, size = [first], _size(first)
        if not plain(loop, first) or checkpoint_due(loop, first.window):
            return batch, True
        while len(batch) < MAX_WINDOWS and size < MAX_FRAGMENTS:
            try:
                cw = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if cw is None:
                self._ended = True
                break
            if not plain(loop, cw) or size + _size(cw) > MAX_FRAGMENTS:
                self._held = cw
                break
            batch.append(cw)
            size += _size(cw)
            if checkpoint_due(loop, cw.window):
                break
        return batch, True


def plain(loop: WindowLoop, cw: ClosedWindow) -> bool:
    """Whether a window may be simulated in a batch."""
    w = cw.window
    return (
        loop._engine_ready
        and (loop.hooks is None or loop.hooks.batch_safe)
        and loop.opendc is None
        and loop.crosscheck is None
        and w.topology is None
        and not w.final
        and not loop.store.is_durable(w.start_ms)
        and (loop._engine_until is None or w.end_ms > loop._engine_until)
        and loop.box.current.version == loop.applied_version
    )


def checkpoint_due(loop: WindowLoop, w: Window) -> bool:
    return loop.recovery is not None and w.end_ms % loop.recovery.d.every_ms == 0


def window_record(
    w: Window,
    tasks: pl.DataFrame,
    frags: pl.DataFrame,
    agg: pl.DataFrame,
    *,
    status: str,
    version: int,
    latency_s: float,
    compute_s: float,
    attempts: int,
    error: str,
    engine: str,
) -> WindowRecord:
    return WindowRecord(
        window_start_ms=w.start_ms,
        window_end_ms=w.end_ms,
        status=status,
        rows=agg.height,
        tasks=tasks.height,
        fragments=frags.height,
        power_samples=len(w.power),
        topology_version=version,
        latency_s=latency_s,
        compute_s=compute_s,
        attempts=attempts,
        error=error,
        engine=engine,
    )


def merged(batch: list[ClosedWindow]) -> ClosedWindow:
    """The batch's last window with the highest offset of each partition over the batch."""
    offsets: dict[TopicPartition, int] = {}
    for cw in batch:
        for tp, o in cw.commit_offsets.items():
            offsets[tp] = max(o, offsets.get(tp, o))
    return ClosedWindow(batch[-1].window, offsets)


async def run_batch(loop: WindowLoop, batch: list[ClosedWindow]) -> None:
    """Simulate ``batch`` (plain windows, in order) as described above."""
    t0 = time.perf_counter()
    ws = [cw.window for cw in batch]
    frames = [w.frames() for w in ws]
    if loop.hooks is not None:
        for w in ws:
            await loop.hooks.before_window(w)
    steps = [[*loop._carbon, *ws[0].carbon], *(w.carbon for w in ws[1:])]
    carbons = [carbon_frame(s) if s else None for s in steps]
    version = loop.applied_version
    calls = [(w.end_ms, t, f, c) for w, (t, f), c in zip(ws, frames, carbons, strict=True)]

    async def store() -> None:  # stored before any of them is durable: a resume reads them
        if loop.recovery is not None:
            await loop.recovery.d.inputs.write_many([(cw.window, positions(cw)) for cw in batch])

    async def simulate() -> tuple[list[tuple[pl.DataFrame, float]], bytes | None]:
        if loop.applied_version != version:  # a rebuilt worker: the batch's topology again
            await loop._set_version(version)
        ckpt = "running" if checkpoint_due(loop, ws[-1]) else None  # the checkpoint's snapshot, same trip
        return await loop.twin.advance_many(calls, snapshot=ckpt)

    t1 = time.perf_counter()
    # the inputs are written while the worker simulates (a rebuild of the worker reads durable windows only)
    stored, simulated = await asyncio.gather(store(), simulate(), return_exceptions=True)
    if isinstance(stored, BaseException):
        raise stored
    if isinstance(
        simulated, (WorkerDied, WorkerError)
    ):  # one by one, each with its retries: the one window's
        log.warning("batch_failed", window_start=ws[0].start_ms, windows=len(ws), error=str(simulated)[:500])
        for cw in batch:
            await loop.process(cw, stored=True)
        return
    if isinstance(simulated, BaseException):
        raise simulated
    out, blob = simulated
    loop.stats.batches += 1
    t2 = time.perf_counter()
    loop._carbon.clear()  # in the engine now
    aggs = [aggregate_rows(rows, version, w.start_ms) for w, (rows, _) in zip(ws, out, strict=True)]
    loop.stats.clusters = cluster_totals(out[-1][0], ws[-1].start_ms)
    latency = time.perf_counter() - t0
    done: list[tuple[WindowRecord, pl.DataFrame, pl.DataFrame | None]] = []
    for w, (t, f), agg, (_, compute) in zip(ws, frames, aggs, out, strict=True):
        r = window_record(w, t, f, agg, status="ok", version=version, latency_s=latency, compute_s=compute,
                          attempts=1, error="", engine=loop.engine)  # fmt: skip
        done.append((r, agg if agg.height else pl.DataFrame(), measured_rows(w)))
    await loop.store.commit_many(done)
    t3 = time.perf_counter()
    loop.stats.last_window_end_ms = ws[-1].end_ms  # durable now: what the API serves may reach its end
    if loop.publish is not None:
        for w, agg in zip(ws, aggs, strict=True):
            if agg.height:
                await loop.publish(iso_ms(w.start_ms).encode(), results_message(w, version, loop.engine, agg))
    if loop.commit is not None:
        await loop.commit(merged(batch))
    loop._engine_until = ws[-1].end_ms
    t4 = time.perf_counter()
    for w, (t, f) in zip(ws, frames, strict=True):
        if loop.hooks is not None:
            await loop.hooks.after_window(w, t, f)
        if loop.crosscheck is not None:
            loop.crosscheck.after_window(w.end_ms)
        loop.stats.windows_simulated += 1
        loop.stats.latencies_s.append(latency)
        loop.latency.observe(latency)
    await loop._checkpoint_after(batch[-1], blob)
    t5 = time.perf_counter()
    log.debug("batch_simulated", window_start=ws[0].start_ms, windows=len(ws), prepare_s=round(t1 - t0, 4),
              inputs_engine_s=round(t2 - t1, 4), durable_s=round(t3 - t2, 4),
              publish_commit_s=round(t4 - t3, 4), checkpoint_s=round(t5 - t4, 4))  # fmt: skip


def positions(cw: ClosedWindow) -> dict[tuple[str, int], int]:
    return {(tp.topic, tp.partition): o for tp, o in cw.commit_offsets.items()}
