"""The calibrator component: learns the twin's power-model parameters online from the measured power.

It rides on the simulator's windows (trace time, never the wall clock) through two hooks:

* ``after_window`` (the twin has advanced through the window): keep the window's tasks, fragments and
  measured power, bounded to the lookback; at a lookback start (``end + lookback_s`` a multiple of
  ``every_s``) take a snapshot of the twin's engine state (``TwinEngine.snapshot``); at a round instant
  (``end`` a multiple of ``every_s``) queue a round with what it needs and return at once.
* ``before_window``: at a round's apply instant (round instant + ``apply_delay_s``, rounded up to a window
  start) take its result — waiting only if the round is still running — and, when a candidate beat the
  current topology by ``margin``, make it the simulated topology from this window on, written through the
  :class:`~opendt.twin.topology.TopologyWriter` (the box, then ``sim.topology``; version = current + 1,
  source ``calibrator``, reason with the score). A fixed apply instant keeps runs reproducible (DESIGN §10).

Rounds run in :meth:`Calibrator.run`, one at a time, with the candidates in a bounded pool of low-priority
worker processes (:mod:`opendt.worker.pool`) warm-started from the snapshot, so the twin's worker
never runs a candidate. Every round is recorded (``calibration.parquet``) and summarised by :meth:`view`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import polars as pl
import structlog

from opendt.calibration.journal import Journal, RoundRecord
from opendt.calibration.rounds import RoundJob, RoundRunner
from opendt.calibration.settings import CalibrationSettings
from opendt.calibration.space import Axis, SearchSpaceError, make_candidate, parse_space
from opendt.calibration.trust import Region, parse_region
from opendt.calibration.view import calibration_view
from opendt.models.topology import Topology
from opendt.settings import Settings
from opendt.stream.windowing import Window
from opendt.twin.checkpoint import Checkpoints
from opendt.twin.inputs import InputStore, InputUnreadable
from opendt.twin.results import ResultStore
from opendt.twin.topology import TopologyBox, TopologyWriter
from opendt.worker.client import TwinEngine
from opendt.worker.pool import CandidatePool

log = structlog.get_logger(component="calibrator")

Snapshot = Callable[[], Awaitable[bytes]]


class Calibrator:
    def __init__(
        self,
        settings: CalibrationSettings,
        box: TopologyBox,
        snapshot: Snapshot,
        pool: CandidatePool,
        journal: Journal,
        *,
        window_ms: int,
        inputs: InputStore,
        checkpoints: Checkpoints,
        store: ResultStore | None = None,
        writer: TopologyWriter | None = None,
        is_durable: Callable[[int], bool] | None = None,
    ) -> None:
        self.every_ms = settings.every_s * 1000
        self.lookback_ms = settings.lookback_s * 1000
        for name, v in (("every_s", self.every_ms), ("lookback_s", self.lookback_ms)):
            if v % window_ms:
                raise ValueError(f"calibration.{name} must be a multiple of windowing.window_s")
        delay = settings.apply_delay_s * 1000
        self.apply_delay_ms = -(-delay // window_ms) * window_ms
        self.settings = settings
        self.box = box
        self.region: Region | None = None
        self.axes: list[Axis] = []
        self._bound: Topology | None = None
        self.unusable = ""
        """Why the search space does not fit the physical topology (calibration then pauses), or ''."""
        self.snapshot = snapshot
        self.inputs = inputs
        """The window inputs a round's lookback is read from."""
        self.checkpoints = checkpoints
        """Where a lookback's warm start comes from when this process took no snapshot there."""
        self.store = store
        self.pool = pool
        self.journal = journal
        if box.known:
            self._bind(box.physical)
        self.window_ms = window_ms
        self.writer = writer if writer is not None else TopologyWriter(box, None, lambda: 0)
        """The one write path of the simulated topology (offline: the box alone)."""
        self.is_durable = is_durable
        """Whether the window starting at a given instant is already durable (resumed runs)."""
        self._to_requeue: list[int] = []
        self._snapshots: dict[int, bytes] = {}
        self._first_start: int | None = None
        self._jobs: asyncio.Queue[tuple[RoundJob, asyncio.Future[RoundRecord]]] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[RoundRecord]] = {}
        self._physical_at: dict[int, Topology] = {}
        """The physical topology each pending round was made on (by apply instant)."""
        self._rounds = 0
        self.gate_wait_s = 0.0
        self.busy = False
        """A round is running (for latency-during-rounds statistics)."""

    def _bind(self, physical: Topology) -> None:
        """Fit the search space to a physical topology (named clusters and hosts must exist in it); raises
        :class:`~opendt.calibration.space.SearchSpaceError` when it does not fit."""
        s = self.settings
        self.region = parse_region(s.trust_region, physical) if s.search == "trust_region" else None
        self.axes = list(self.region.axes) if self.region is not None else parse_space(s.grid, physical)
        self.runner = RoundRunner(s, self.axes, self.pool, self.region)
        self._bound = physical

    def _fit(self) -> bool:
        """The search space fits the current physical topology (re-fitted when the datacenter changed)."""
        if not self.box.known:
            return False
        physical = self.box.physical
        if self._bound is not physical:
            try:
                self._bind(physical)
                self.unusable = ""
            except SearchSpaceError as e:
                if self.unusable != str(e):
                    log.error("calibration_space_unusable", error=str(e))  # noqa: TRY400 - a config problem
                self.unusable, self._bound = str(e), physical
        return not self.unusable

    def rebase(self, physical: Topology) -> Topology:
        """``physical`` with the calibrated values in effect applied on top (a new physical topology becomes
        the twin's base: what the calibrator learned carries over, by path, where it fits)."""
        last = next((r for r in reversed(self.records) if r.status == "applied" and r.in_effect), None)
        if last is None:
            return physical
        try:
            self._bind(physical)
        except SearchSpaceError as e:
            log.warning("calibration_not_reapplied", error=str(e))
            return physical
        values = [last.in_effect.get(a.path) for a in self.axes]
        if any(v is None for v in values):
            return physical
        candidate = make_candidate(physical, physical, self.axes, values)  # type: ignore[arg-type]
        if candidate.topology is None:
            log.warning("calibration_not_reapplied", error=candidate.reason)
            return physical
        return candidate.topology

    # -- simulator hooks ---------------------------------------------------------------------------------

    async def before_window(self, w: Window) -> None:
        await self._requeue()
        for at in sorted(t for t in self._pending if t <= w.start_ms):
            fut = self._pending.pop(at)
            if not fut.done():
                t0 = time.perf_counter()
                await fut
                waited = time.perf_counter() - t0
                self.gate_wait_s += waited
                log.info("calibration_gate_waited", apply_at_ms=at, waited_s=round(waited, 4))
            made_on = self._physical_at.pop(at, None)
            if made_on is not None and made_on is not self.box.physical:
                log.info("calibration_not_applied", round=fut.result().round, reason="the datacenter changed")
                continue
            await self._apply(fut.result(), w.start_ms)

    async def after_window(
        self, w: Window, tasks: pl.DataFrame, fragments: pl.DataFrame, *, replayed: bool = False
    ) -> None:
        await self._requeue()
        if self._first_start is None:
            self._first_start = w.start_ms
        horizon = w.end_ms - self.lookback_ms
        for t in [t for t in self._snapshots if t < horizon]:
            del self._snapshots[t]
        if w.final:
            return
        if (w.end_ms + self.lookback_ms) % self.every_ms == 0 and self.checkpoints.get(w.end_ms) is None:
            try:
                self._snapshots[w.end_ms] = await self.snapshot()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the round that needs it is skipped, the twin goes on
                log.warning("calibration_snapshot_failed", at_ms=w.end_ms, error=str(e))
        if w.end_ms % self.every_ms == 0 and (not replayed or self._rerun(w.end_ms)) and self._fit():
            await self._queue_round(w.end_ms)

    def _rerun(self, at_ms: int) -> bool:
        """On a resume (the window is replayed): run the round queued at ``at_ms`` again only when the earlier
        process left it unfinished (not journaled, or ``chosen`` but never applied) and its apply window is
        still to be simulated; a finished one only carries its number on, so rounds keep the numbers an
        uninterrupted run gives them."""
        done = self.journal.done_at(at_ms)
        if done is not None:
            self._rounds = max(self._rounds, done.round)
            return False
        return self.is_durable is not None and not self.is_durable(at_ms + self.apply_delay_ms)

    # -- checkpoints -------------------------------------------------------------------------------------

    checkpoint_key = "calibrator"

    def checkpoint_state(self) -> dict[str, Any]:
        """What a restarted twin needs to go on: the round count, the first window, the pending rounds."""
        pending = sorted(at - self.apply_delay_ms for at in self._pending)
        return {"rounds": self._rounds, "first_start": self._first_start, "pending": pending}

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        self._rounds = max(self._rounds, int(state.get("rounds", 0)))
        first = state.get("first_start")
        self._first_start = None if first is None else int(first)
        self._to_requeue = [int(at) for at in state.get("pending", [])]

    async def _requeue(self) -> None:
        """Rounds that were pending at the checkpoint a restarted twin resumed from: run again those the
        earlier process did not finish (their number is kept: the journal's are reused)."""
        todo, self._to_requeue = self._to_requeue, []
        for at_ms in todo:
            if self._rerun(at_ms) and self._fit():
                self._rounds -= 1  # _queue_round numbers it again: the number it had
                await self._queue_round(at_ms)

    # -- rounds --------------------------------------------------------------------------------------------

    def _effect_between(self, lo_ms: int, hi_ms: int) -> list[tuple[int, Topology]]:
        """Where the simulated topology changed in ``[lo_ms, hi_ms)``, from the window journal: (first window
        start, topology), the first entry the topology in effect at ``lo_ms``."""
        if self.store is None:
            return [(lo_ms, self.box.current.topology)]
        w = self.store.windows.filter(pl.col("window_end").dt.epoch("ms") > lo_ms)
        out: list[tuple[int, Topology]] = []
        last = None
        for start, version in zip(
            w["window_start"].dt.epoch("ms").to_list(), w["topology_version"].to_list(), strict=True
        ):
            if start >= hi_ms:
                break
            if version != last:
                topo = self.box.of_version(int(version), self.store)
                if topo is not None:
                    out.append((max(int(start), lo_ms), topo))
                last = version
        return out or [(lo_ms, self.box.current.topology)]

    async def _queue_round(self, at_ms: int) -> None:
        lo = at_ms - self.lookback_ms
        assert self._first_start is not None
        snap = self._snapshots.get(lo)
        if snap is None and lo > self._first_start:
            ckpt = await asyncio.to_thread(self.checkpoints.whole, lo)
            snap = None if ckpt is None else await asyncio.to_thread(ckpt.engine_blob)
        if snap is None and lo > self._first_start:
            log.warning("calibration_skipped", at_ms=at_ms, reason="no twin snapshot at the lookback start")
            return
        try:
            frames = await asyncio.to_thread(self.inputs.frames, max(lo, self._first_start), at_ms)
        except InputUnreadable as e:  # a damaged stored window: this round is skipped, the twin goes on
            log.warning("calibration_skipped", at_ms=at_ms, reason=str(e)[:300])
            return
        eval_from = max(at_ms - self.every_ms, self._first_start)
        self._rounds += 1
        carbon = frames["carbon"]
        job = RoundJob(
            index=self._rounds,
            at_ms=at_ms,
            lookback_start_ms=max(lo, self._first_start),
            apply_at_ms=at_ms + self.apply_delay_ms,
            snapshot=snap,
            tasks=frames["tasks"],
            fragments=frames["fragments"],
            measured=_measured(frames["power"], lo, at_ms),
            current=self.box.current.topology,
            physical=self.box.physical,
            carbon=carbon if carbon.height else None,
            effect=self._effect_between(eval_from, at_ms),
            eval_from_ms=eval_from,
        )
        fut: asyncio.Future[RoundRecord] = asyncio.get_running_loop().create_future()
        self._pending[job.apply_at_ms] = fut
        self._physical_at[job.apply_at_ms] = job.physical
        self._jobs.put_nowait((job, fut))

    async def _apply(self, rec: RoundRecord, at_ms: int) -> None:
        if rec.status == "chosen" and rec.winner_topology is not None:
            sim = await self.writer.write(rec.winner_topology, "calibrator", rec.reason, at_ms=at_ms)
            rec.status, rec.version, rec.in_effect = "applied", sim.version, dict(rec.winner)
            rec.winner_topology = None
            log.info(
                "calibration_applied", round=rec.round, version=sim.version, winner=rec.winner, at_ms=at_ms
            )
            await self.journal.save(rec)

    # -- the round loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run queued rounds until cancelled; the candidate workers are stopped on the way out."""
        try:
            while True:
                job, fut = await self._jobs.get()
                self.busy = True
                job.radius = self._radius_before(job.at_ms)
                try:
                    rec = await self.runner.run(job)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.exception("calibration_round_failed", round=job.index, at_ms=job.at_ms)
                    rec = RoundRecord(
                        job.index, job.at_ms, job.lookback_start_ms, job.apply_at_ms, "failed",
                        f"{type(e).__name__}: {e}", self.settings.metric,
                    )  # fmt: skip
                finally:
                    self.busy = False
                log.info(
                    "calibration_round",
                    round=rec.round,
                    at_ms=rec.time_ms,
                    status=rec.status,
                    candidates=rec.candidates,
                    rejected=rec.rejected,
                    failed=rec.failed,
                    incumbent=rec.incumbent_score,
                    best=rec.winner_score,
                    winner=rec.winner,
                    duration_s=round(rec.duration_s, 3),
                )
                await self.journal.save(rec)
                if not fut.done():
                    fut.set_result(rec)
        finally:
            await self.pool.stop()

    def _radius_before(self, at_ms: int) -> tuple[float, ...] | None:
        """The trust region's radii left by the latest journaled round before ``at_ms`` (the same after a
        resume as in an uninterrupted run); None before the first."""
        for r in reversed(self.records):
            if r.time_ms < at_ms and r.trust_region:
                try:
                    return tuple(float(r.trust_region[a.path]["radius"]) for a in self.axes)
                except (KeyError, TypeError, ValueError):
                    return None
        return None

    # -- visibility ------------------------------------------------------------------------------------

    @property
    def records(self) -> list[RoundRecord]:
        return self.journal.records

    def series(self) -> list[dict[str, Any]]:
        """After each round: ``time_ms``, ``value`` and ``in_effect`` (the calibrated parameters), the
        round's calibrated and uncalibrated MAPE, noise estimate, trust region and identifiable intervals."""
        return [r.series_point() for r in self.records]

    def rounds(self) -> list[dict[str, Any]]:
        """Every round's summary, oldest first."""
        return [r.summary() for r in self.records]

    def view(self) -> dict[str, Any]:
        return calibration_view(
            self.settings,
            self.records,
            self.axes,
            pending=len(self._pending),
            gate_wait_s=self.gate_wait_s,
            initial=self.box.initial,
        )


def calibrator_for(
    settings: Settings,
    box: TopologyBox,
    twin: TwinEngine,
    run_dir: Path | None,
    *,
    inputs: InputStore,
    checkpoints: Checkpoints,
    store: ResultStore | None = None,
    writer: TopologyWriter | None = None,
    pool_command: list[str] | None = None,
    is_durable: Callable[[int], bool] | None = None,
) -> Calibrator:
    """The calibrator of a twin: candidate pool and journal (``<run_dir>/calibration.parquet``, with the
    rounds of an earlier process of the run) included."""
    cal = settings.calibration
    pool = CandidatePool(cal.max_parallel, timeout_s=cal.timeout_s, nice=cal.nice, command=pool_command)
    journal = Journal(None if run_dir is None else run_dir / "calibration.parquet")
    journal.load()
    return Calibrator(
        cal,
        box,
        twin.snapshot,
        pool,
        journal,
        window_ms=settings.windowing.window_s * 1000,
        inputs=inputs,
        checkpoints=checkpoints,
        store=store,
        writer=writer,
        is_durable=is_durable,
    )


def _measured(power: pl.DataFrame, lo: int, hi: int) -> pl.DataFrame:
    """The measured power per instant in ``[lo, hi)`` (summed over sources) from stored power samples."""
    df = power.filter((pl.col("timestamp_ms") >= lo) & (pl.col("timestamp_ms") < hi))
    return (
        df.group_by("timestamp_ms")
        .agg(pl.col("power_draw").sum())
        .sort("timestamp_ms")
        .select(pl.col("timestamp_ms").cast(pl.Int64), pl.col("power_draw").cast(pl.Float64))
    )
