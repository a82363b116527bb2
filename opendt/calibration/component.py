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
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import structlog

from opendt.calibration.journal import Journal, RoundRecord
from opendt.calibration.rounds import RoundJob, RoundRunner
from opendt.calibration.space import Axis, SearchSpaceError, make_candidate, parse_space
from opendt.calibration.trust import Region, parse_region
from opendt.calibration.view import calibration_view
from opendt.models.topology import Topology
from opendt.settings import CalibrationSettings, Settings
from opendt.stream.windowing import Window
from opendt.twin.topology import TopologyBox, TopologyWriter
from opendt.worker.client import TwinEngine
from opendt.worker.pool import CandidatePool
from opendt.workload import carbon_frame

log = structlog.get_logger(component="calibrator")

Snapshot = Callable[[], Awaitable[bytes]]


@dataclass
class _Kept:
    start_ms: int
    end_ms: int
    tasks: pl.DataFrame
    fragments: pl.DataFrame
    power: pl.DataFrame
    carbon: pl.DataFrame


def power_frame(w: Window) -> pl.DataFrame:
    return pl.DataFrame(
        [(p.timestamp_ms, p.power_draw) for p in w.power],
        schema={"timestamp_ms": pl.Int64, "power_draw": pl.Float64},
        orient="row",
    )


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
        self.pool = pool
        self.journal = journal
        if box.known:
            self._bind(box.physical)
        self.window_ms = window_ms
        self.writer = writer if writer is not None else TopologyWriter(box, None, lambda: 0)
        """The one write path of the simulated topology (offline: the box alone)."""
        self.is_durable = is_durable
        """Whether the window starting at a given instant is already durable (resumed runs)."""
        self._kept: deque[_Kept] = deque()
        self._effect: deque[tuple[int, Topology]] = deque()
        """Where the simulated topology changed: (first window start, topology), bounded to the lookback."""
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
        if self._first_start is None:
            self._first_start = w.start_ms
        self._kept.append(
            _Kept(w.start_ms, w.end_ms, tasks, fragments, power_frame(w), carbon_frame(w.carbon))
        )
        topo = self.box.current.topology  # what this window was simulated with
        if not self._effect or self._effect[-1][1] is not topo:
            self._effect.append((w.start_ms, topo))
        horizon = w.end_ms - self.lookback_ms
        while self._kept and self._kept[0].start_ms < horizon:
            self._kept.popleft()
        while len(self._effect) > 1 and self._effect[1][0] <= horizon:
            self._effect.popleft()
        for t in [t for t in self._snapshots if t < horizon]:
            del self._snapshots[t]
        if w.final:
            return
        if (w.end_ms + self.lookback_ms) % self.every_ms == 0:
            try:
                self._snapshots[w.end_ms] = await self.snapshot()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the round that needs it is skipped, the twin goes on
                log.warning("calibration_snapshot_failed", at_ms=w.end_ms, error=str(e))
        if w.end_ms % self.every_ms == 0 and (not replayed or self._rerun(w.end_ms)) and self._fit():
            self._queue_round(w.end_ms)

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

    def _queue_round(self, at_ms: int) -> None:
        lo = at_ms - self.lookback_ms
        assert self._first_start is not None
        snap = self._snapshots.get(lo)
        if snap is None and lo > self._first_start:
            log.warning("calibration_skipped", at_ms=at_ms, reason="no twin snapshot at the lookback start")
            return
        kept = [k for k in self._kept if k.start_ms >= lo and k.end_ms <= at_ms]
        eval_from = max(at_ms - self.every_ms, self._first_start)
        effect = [(t, topo) for t, topo in self._effect if eval_from < t < at_ms]
        before = [(eval_from, topo) for t, topo in self._effect if t <= eval_from]
        self._rounds += 1
        carbon = pl.concat([k.carbon for k in kept], how="vertical_relaxed")
        job = RoundJob(
            index=self._rounds,
            at_ms=at_ms,
            lookback_start_ms=max(lo, self._first_start),
            apply_at_ms=at_ms + self.apply_delay_ms,
            snapshot=snap,
            tasks=pl.concat([k.tasks for k in kept], how="vertical_relaxed"),
            fragments=pl.concat([k.fragments for k in kept], how="vertical_relaxed"),
            measured=_measured(kept, lo, at_ms),
            current=self.box.current.topology,
            physical=self.box.physical,
            carbon=carbon if carbon.height else None,
            effect=before[-1:] + effect,
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
        round's calibrated and uncalibrated MAPE, noise estimate and trust region."""
        return [
            {
                "time_ms": r.time_ms,
                "value": r.value,
                "in_effect": r.in_effect,
                "status": r.status,
                "mape_calibrated": r.mape_calibrated,
                "mape_uncalibrated": r.mape_uncalibrated,
                "noise_pct": r.noise_pct,
                "trust_region": r.trust_region,
            }
            for r in self.records
        ]

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
        writer=writer,
        is_durable=is_durable,
    )


def _measured(kept: list[_Kept], lo: int, hi: int) -> pl.DataFrame:
    frames = [k.power for k in kept if k.power.height]
    if not frames:
        return pl.DataFrame(schema={"timestamp_ms": pl.Int64, "power_draw": pl.Float64})
    df = pl.concat(frames).filter((pl.col("timestamp_ms") >= lo) & (pl.col("timestamp_ms") < hi))
    return df.group_by("timestamp_ms").agg(pl.col("power_draw").sum()).sort("timestamp_ms")
