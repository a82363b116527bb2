"""One calibration round: grid (+ refinements) of candidates through the pool, scored against the meter."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import structlog

from opendt.calibration.journal import RoundRecord, ScoreRow
from opendt.calibration.scoring import align, predicted_at, sampling_interval_ms, score
from opendt.calibration.space import (
    Axis,
    Candidate,
    Refiner,
    Value,
    current_values,
    grid_points,
    make_candidate,
)
from opendt.models.topology import Topology
from opendt.settings import CalibrationSettings
from opendt.worker.pool import CandidatePool, Outcome, RoundInput

log = structlog.get_logger(component="calibrator")


@dataclass
class RoundJob:
    """Everything a round needs, captured when its instant is reached (the buffers then move on)."""

    index: int
    at_ms: int
    lookback_start_ms: int
    apply_at_ms: int
    snapshot: bytes | None
    """Twin state at the lookback start; None = the lookback starts before the twin's first window."""
    tasks: pl.DataFrame
    fragments: pl.DataFrame
    measured: pl.DataFrame
    """``timestamp_ms``, ``power_draw`` (summed over power sources) within the lookback."""
    current: Topology
    physical: Topology
    carbon: pl.DataFrame | None


def _params(axes: Sequence[Axis], values: Sequence[Value]) -> dict[str, Value]:
    return {a.path: v for a, v in zip(axes, values, strict=True)}


class RoundRunner:
    def __init__(self, settings: CalibrationSettings, axes: Sequence[Axis], pool: CandidatePool) -> None:
        self.settings = settings
        self.axes = list(axes)
        self.pool = pool

    def _skip(self, job: RoundJob, reason: str, t0: float) -> RoundRecord:
        log.info("calibration_skipped", round=job.index, at_ms=job.at_ms, reason=reason)
        return RoundRecord(
            job.index,
            job.at_ms,
            job.lookback_start_ms,
            job.apply_at_ms,
            "skipped",
            reason,
            self.settings.metric,
            in_effect=self._in_effect(job.current, job.physical),
            duration_s=time.perf_counter() - t0,
        )

    def _in_effect(self, topo: Topology, physical: Topology) -> dict[str, Any]:
        vals = current_values(topo, physical, self.axes)
        return {} if vals is None else _params(self.axes, vals)

    async def run(self, job: RoundJob) -> RoundRecord:
        t0 = time.perf_counter()
        metric = self.settings.metric
        if job.measured.is_empty():
            return self._skip(job, "no measured power in the lookback", t0)
        interval = sampling_interval_ms(job.measured["timestamp_ms"].to_numpy())
        if interval is None:
            return self._skip(job, "fewer than 2 measured instants in the lookback", t0)
        header: dict[str, Any] = {"until_ms": job.at_ms, "export_interval_ms": interval}
        tables = {"tasks": job.tasks, "fragments": job.fragments}
        if job.snapshot is not None:
            tables["snapshot"] = pl.DataFrame({"blob": [job.snapshot]}, schema={"blob": pl.Binary})
        elif job.carbon is not None:
            tables["carbon"] = job.carbon
        rin = RoundInput(job.index, header, tables)

        scores: list[ScoreRow] = []
        evaluated: dict[tuple[Value, ...], ScoreRow] = {}
        incumbent_vals = current_values(job.current, job.physical, self.axes)
        rejected = failed = 0

        async def evaluate(stage: int, cands: list[Candidate], incumbent: bool = False) -> None:
            nonlocal rejected, failed
            runnable = [c for c in cands if c.topology is not None]
            for c in cands:
                if c.topology is None:
                    rejected += 1
                    row = ScoreRow(_describe(self.axes, c.values), stage, "rejected", error=c.reason)
                    scores.append(row)
                    evaluated[c.values] = row
            outs = await self.pool.run(rin, [c.topology.to_json_dict() for c in runnable if c.topology])
            for c, out in zip(runnable, outs, strict=True):
                row = self._score(stage, c.values, out, job.measured, interval)
                if incumbent:
                    row.status = "incumbent" if row.status == "ok" else row.status
                failed += row.status == "failed"
                scores.append(row)
                if not incumbent or c.values not in evaluated:
                    evaluated[c.values] = row

        inc_values = incumbent_vals if incumbent_vals is not None else tuple("?" for _ in self.axes)
        await evaluate(0, [Candidate(inc_values, job.current)], incumbent=True)
        incumbent_row = scores[-1]
        grid = [v for v in grid_points(self.axes) if v != incumbent_vals]
        await evaluate(0, [make_candidate(job.current, job.physical, self.axes, v) for v in grid])
        refiner = Refiner(self.axes, self.settings.refine_points)
        for stage in range(1, self.settings.refine_steps + 1):
            best = _best(evaluated)
            if best is None:
                break
            new = [v for v in refiner.next_points(best) if v not in evaluated]
            if not new:
                continue
            await evaluate(stage, [make_candidate(job.current, job.physical, self.axes, v) for v in new])

        best = _best(evaluated)
        samples = max((s.samples for s in scores), default=0)
        rec = RoundRecord(
            job.index,
            job.at_ms,
            job.lookback_start_ms,
            job.apply_at_ms,
            "kept",
            "",
            metric,
            candidates=sum(s.status != "rejected" for s in scores),
            rejected=rejected,
            failed=failed,
            samples=samples,
            export_interval_ms=interval,
            incumbent_score=incumbent_row.score,
            scores=scores,
            in_effect=self._in_effect(job.current, job.physical),
        )
        if best is None:
            rec.status, rec.reason = "skipped", "no candidate could be scored (no measured instant matched)"
            log.info("calibration_skipped", round=job.index, at_ms=job.at_ms, reason=rec.reason)
        else:
            row = evaluated[best]
            rec.winner, rec.winner_score = _params(self.axes, best), row.score
            inc = incumbent_row.score if incumbent_row.score is not None else math.inf
            assert row.score is not None
            if best == incumbent_vals or row.score >= inc * (1.0 - self.settings.margin):
                rec.reason = f"current topology kept: {metric} {inc:.4g} vs best {row.score:.4g}"
            else:
                win = make_candidate(job.current, job.physical, self.axes, best)
                rec.status = "chosen"
                rec.winner_topology = win.topology
                rec.reason = (
                    f"{metric} {row.score:.4g} vs current {inc:.4g} over {samples} samples "
                    f"[{job.lookback_start_ms}, {job.at_ms})"
                )
        rec.duration_s = time.perf_counter() - t0
        return rec

    def _score(
        self, stage: int, values: tuple[Value, ...], out: Outcome, measured: pl.DataFrame, interval: int
    ) -> ScoreRow:
        desc = _describe(self.axes, values)
        if out.rows is None:
            return ScoreRow(desc, stage, "failed", error=out.error)
        pred, meas = align(measured, predicted_at(out.rows, interval, self.settings.compare))
        if pred.size == 0:
            return ScoreRow(desc, stage, "failed", error="no measured instant matches a prediction")
        s = score(pred, meas)
        value = s.get(self.settings.metric)
        if not math.isfinite(value):
            undefined = f"{self.settings.metric} undefined"
            return ScoreRow(desc, stage, "failed", samples=s.samples, error=undefined)
        return ScoreRow(desc, stage, "ok", value, s.mape, s.rmse, s.energy, s.samples)


def _describe(axes: Sequence[Axis], values: Sequence[Value]) -> str:
    return ", ".join(f"{a.path}={v}" for a, v in zip(axes, values, strict=True))


def _best(evaluated: dict[tuple[Value, ...], ScoreRow]) -> tuple[Value, ...] | None:
    """The best scored point; ties go to the one evaluated first (dict order), so rounds are reproducible."""
    best: tuple[Value, ...] | None = None
    best_score = math.inf
    for values, row in evaluated.items():
        if row.score is not None and row.status in ("ok", "incumbent") and row.score < best_score:
            best, best_score = values, row.score
    return best
