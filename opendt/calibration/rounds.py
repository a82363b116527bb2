"""One calibration round: candidates through the pool, scored against the meter, a winner only when it is
better than the current topology by more than the measurement noise explains.

What a round evaluates over its lookback (all warm-started from the same snapshot; power-only candidates
are replays of one schedule, :mod:`opendt.worker.warm`):

* the current topology (the incumbent) and the physical one (the twin without calibration, also a
  competitor), and the other topologies in effect over the newest ``every_s`` (for the twin-as-it-ran MAPE);
* the search: a trust region around the values in effect (:mod:`~opendt.calibration.trust`, ``iterations``
  steps) or the fixed grid and its refinements (:mod:`~opendt.calibration.space`).

Score: MAPE with every sample weighted by recency (``half_life_s``). The best competitor replaces the
incumbent only when its gain exceeds ``significance`` paired standard errors (and the relative ``margin``);
the noise estimate (:func:`~opendt.calibration.scoring.noise_pct`), the gain, the threshold, the region and
the calibrated vs uncalibrated MAPE of the newest ``every_s`` go into the round's record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import structlog

from opendt.calibration.journal import RoundRecord, ScoreRow
from opendt.calibration.models import fit_type
from opendt.calibration.prior import Member, distance, intervals, objective, preferred, type_distance
from opendt.calibration.scoring import (
    F64,
    abs_pct_errors,
    compose,
    noise_pct,
    paired_se,
    predicted_at,
    recency_weights,
    sampling_interval_ms,
    score,
    weighted_mean,
)
from opendt.calibration.settings import CalibrationSettings
from opendt.calibration.space import (
    Axis,
    Candidate,
    Refiner,
    Value,
    current_values,
    grid_points,
    make_candidate,
)
from opendt.calibration.trust import Region, describe_region, resize, scaled, step_points
from opendt.models.messages import iso_ms
from opendt.models.topology import Topology
from opendt.worker.pool import CandidatePool, Outcome, RoundInput

log = structlog.get_logger(component="calibrator")
Key = tuple[Value, ...]
PHYSICAL: Key = ("physical",)


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
    effect: list[tuple[int, Topology]] = field(default_factory=list)
    """The topologies in effect over ``[eval_from_ms, at_ms)``: (from instant, topology), oldest first."""
    eval_from_ms: int = 0
    radius: tuple[float, ...] | None = None
    """The trust region's radii before this round (None: the configured ones)."""


@dataclass
class _Scored:
    row: ScoreRow
    ts: npt.NDArray[np.int64] | None = None
    pred: F64 | None = None
    err: F64 | None = None
    """Absolute % error per matched instant (aligned with ``ts``)."""


def _params(axes: Sequence[Axis], values: Sequence[Value]) -> dict[str, Value]:
    return {a.path: v for a, v in zip(axes, values, strict=True)}


def _describe(axes: Sequence[Axis], values: Sequence[Value]) -> str:
    return ", ".join(f"{a.path}={v}" for a, v in zip(axes, values, strict=True))


def _same(a: Topology, b: Topology) -> bool:
    return a is b or a.to_json_dict() == b.to_json_dict()


class RoundRunner:
    def __init__(
        self,
        settings: CalibrationSettings,
        axes: Sequence[Axis],
        pool: CandidatePool,
        region: Region | None = None,
    ) -> None:
        self.settings = settings
        self.axes = list(axes)
        self.pool = pool
        self.region = region

    def _record(self, job: RoundJob, status: str, reason: str, t0: float) -> RoundRecord:
        return RoundRecord(
            job.index, job.at_ms, job.lookback_start_ms, job.apply_at_ms, status, reason,
            self.settings.metric, in_effect=self._in_effect(job.current, job.physical),
            duration_s=time.perf_counter() - t0,
        )  # fmt: skip

    def _skip(self, job: RoundJob, reason: str, t0: float) -> RoundRecord:
        log.info("calibration_skipped", round=job.index, at_ms=job.at_ms, reason=reason)
        return self._record(job, "skipped", reason, t0)

    def _in_effect(self, topo: Topology, physical: Topology) -> dict[str, Any]:
        vals = current_values(topo, physical, self.axes)
        return {} if vals is None else _params(self.axes, vals)

    async def run(self, job: RoundJob) -> RoundRecord:
        t0 = time.perf_counter()
        if job.measured.is_empty():
            return self._skip(job, "no measured power in the lookback", t0)
        interval = sampling_interval_ms(job.measured["timestamp_ms"].to_numpy())
        if interval is None:
            return self._skip(job, "fewer than 2 measured instants in the lookback", t0)
        header: dict[str, Any] = {"until_ms": job.at_ms, "export_interval_ms": interval}
        tables = {"tasks": job.tasks, "fragments": job.fragments}
        if job.snapshot is not None:
            tables["snapshot"] = pl.DataFrame({"blob": [job.snapshot]}, schema={"blob": pl.Binary})
        if job.carbon is not None:  # the lookback's steps (a snapshot knows those before it)
            tables["carbon"] = job.carbon
        return await _Round(self, job, RoundInput(job.index, header, tables), interval, t0).run()


class _Round:
    """The state of one round while it runs."""

    def __init__(self, runner: RoundRunner, job: RoundJob, rin: RoundInput, interval: int, t0: float) -> None:
        self.r, self.job, self.rin, self.interval, self.t0 = runner, job, rin, interval, t0
        self.settings = runner.settings
        self.axes = runner.axes
        self.scores: list[ScoreRow] = []
        self.evaluated: dict[Key, _Scored] = {}
        self.topologies: dict[Key, Topology] = {}
        self.rejected = self.failed = 0
        ts = job.measured["timestamp_ms"].to_numpy()
        self.weights_all = recency_weights(ts, job.at_ms, self.settings.half_life_s)

    # -- evaluation ------------------------------------------------------------------------------------
    async def evaluate(
        self, stage: int, cands: list[tuple[Key, Candidate]], status: str = "ok"
    ) -> list[_Scored]:
        runnable = [(k, c) for k, c in cands if c.topology is not None]
        for k, c in cands:
            if c.topology is None:
                self.rejected += 1
                row = ScoreRow(_describe(self.axes, c.values), stage, "rejected", error=c.reason)
                self.scores.append(row)
                self.evaluated.setdefault(k, _Scored(row))
        outs = await self.r.pool.run(self.rin, [c.topology.to_json_dict() for _, c in runnable if c.topology])
        done = []
        for (k, c), out in zip(runnable, outs, strict=True):
            sc = self._score(stage, c.values, out)
            if status != "ok" and sc.row.status == "ok":
                sc.row.status = status
            self.failed += sc.row.status == "failed"
            self.scores.append(sc.row)
            if status in ("ok", "incumbent", "physical") and k not in self.evaluated:
                self.evaluated[k] = sc
                assert c.topology is not None
                self.topologies[k] = c.topology
            done.append(sc)
        return done

    def _score(self, stage: int, values: Sequence[Value], out: Outcome) -> _Scored:
        desc = _describe(self.axes, values)
        if out.rows is None:
            return _Scored(ScoreRow(desc, stage, "failed", error=out.error))
        pred_df = predicted_at(out.rows, self.interval, self.settings.compare)
        j = self.job.measured.join(pred_df, on="timestamp_ms", how="inner").sort("timestamp_ms")
        if j.is_empty():
            return _Scored(ScoreRow(desc, stage, "failed", error="no measured instant matches a prediction"))
        ts = j["timestamp_ms"].to_numpy()
        pred = j["predicted"].to_numpy().astype(np.float64)
        meas = j["power_draw"].to_numpy().astype(np.float64)
        s = score(pred, meas)
        err = abs_pct_errors(pred, meas)
        metric = self.settings.metric
        if metric == "mape":
            value = weighted_mean(err, recency_weights(ts, self.job.at_ms, self.settings.half_life_s))
        else:
            value = s.get(metric)
        if not math.isfinite(value):
            row = ScoreRow(desc, stage, "failed", samples=s.samples, error=f"{metric} undefined")
            return _Scored(row)
        return _Scored(ScoreRow(desc, stage, "ok", value, s.mape, s.rmse, s.energy, s.samples), ts, pred, err)

    def best(self) -> Key | None:
        """The best scored competitor; ties go to the one evaluated first (dict order), so rounds are
        reproducible."""
        best: Key | None = None
        best_score = math.inf
        for k, sc in self.evaluated.items():
            s = sc.row.score
            if s is not None and sc.row.status in ("ok", "incumbent", "physical") and s < best_score:
                best, best_score = k, s
        return best

    # -- the round -------------------------------------------------------------------------------------
    async def run(self) -> RoundRecord:
        job = self.job
        inc_vals = current_values(job.current, job.physical, self.axes)
        unknown: Key = ("?",) * len(self.axes)
        # trust region: points are factors of the values in effect, the incumbent is (1, …, 1)
        inc_key: Key = tuple(1.0 for _ in self.axes) if self.r.region is not None else (inc_vals or unknown)
        incumbent = Candidate(inc_vals or unknown, job.current)
        (inc,) = await self.evaluate(0, [(inc_key, incumbent)], "incumbent")
        if not _same(job.physical, job.current):
            phys_vals = current_values(job.physical, job.physical, self.axes) or ("?",) * len(self.axes)
            await self.evaluate(0, [(PHYSICAL, Candidate(phys_vals, job.physical))], "physical")
        if (
            self.r.region is not None
        ):  # the other power model types OpenDC offers, each fitted, as competitors
            for m in self.settings.model_types:
                await fit_type(self, job.current, m)
        radius = await (self.trust(inc_key) if self.r.region is not None else self.grid(inc_vals))
        rec = await self.decide(inc_key, inc)
        if self.r.region is not None:
            values = list(rec.in_effect.values()) if rec.status != "chosen" else list(rec.winner.values())
            if len(values) == len(self.axes):
                rec.trust_region = describe_region(self.axes, values, radius)
        await self.report(rec, inc)
        rec.duration_s = time.perf_counter() - self.t0
        return rec

    async def grid(self, inc_vals: Key | None) -> tuple[float, ...]:
        cur, phys = self.job.current, self.job.physical
        grid = [v for v in grid_points(self.axes) if v != inc_vals]
        await self.evaluate(0, [(v, make_candidate(cur, phys, self.axes, v)) for v in grid])
        refiner = Refiner(self.axes, self.settings.refine_points)
        for stage in range(1, self.settings.refine_steps + 1):
            best = self.best()
            if best is None or best == PHYSICAL:
                break
            new = [v for v in refiner.next_points(best) if v not in self.evaluated]
            if new:
                await self.evaluate(stage, [(v, make_candidate(cur, phys, self.axes, v)) for v in new])
        return ()

    async def trust(self, centre: Key) -> tuple[float, ...]:
        region = self.r.region
        assert region is not None
        radius = self.job.radius or region.radius0
        c: tuple[float, ...] = tuple(float(x) for x in centre)
        for stage in range(self.settings.iterations):
            pts = [p for p in step_points(c, radius) if p not in self.evaluated]
            await self.evaluate(stage, [(p, scaled(self.job.current, self.axes, p)) for p in pts])
            best = self.best()
            step_best = best if best is not None and best != PHYSICAL else c
            if step_best not in [*step_points(c, radius)]:
                step_best = c
            b = tuple(float(x) for x in step_best)
            radius = resize(region, c, b, radius)
            c = b
        return tuple(radius)

    def _noise(self, sc: _Scored) -> float:
        """The meter noise (%) estimated from ``sc``'s residuals (NaN when it cannot be)."""
        if sc.pred is None or sc.ts is None:
            return math.nan
        meas = self.job.measured.join(pl.DataFrame({"timestamp_ms": sc.ts}), on="timestamp_ms", how="semi")
        return noise_pct(sc.pred, meas.sort("timestamp_ms")["power_draw"].to_numpy())

    def _threshold(self, inc: _Scored, win: _Scored, noise: float) -> float:
        """The gain ``win`` needs over ``inc`` to be more than the measurement noise explains."""
        inc_score = inc.row.score if inc.row.score is not None else math.inf
        threshold = self.settings.margin * inc_score if math.isfinite(inc_score) else 0.0
        if math.isfinite(inc_score) and inc.err is not None and win.err is not None:
            assert inc.ts is not None
            assert win.ts is not None
            common, i_a, i_b = np.intersect1d(inc.ts, win.ts, assume_unique=True, return_indices=True)
            d = inc.err[i_a] - win.err[i_b]
            se = paired_se(d, recency_weights(common, self.job.at_ms, self.settings.half_life_s))
            threshold = max(threshold, self.settings.significance * se)
            if math.isfinite(noise) and self.settings.metric == "mape":
                threshold = max(threshold, self.settings.hysteresis * noise)
        return threshold

    def _members(self, best: Key, noise: float) -> list[Member]:
        """The indistinguishable set: the scored competitors whose score is within the noise threshold of
        the best's (:mod:`~opendt.calibration.prior`), in evaluation order."""
        win = self.evaluated[best]
        assert win.row.score is not None
        phys = current_values(self.job.physical, self.job.physical, self.axes)
        out = []
        for k, sc in self.evaluated.items():
            s = sc.row.score
            if s is None or sc.row.status not in ("ok", "incumbent", "physical") or k not in self.topologies:
                continue
            if k != best and s - win.row.score > self._threshold(sc, win, noise):
                continue
            vals = current_values(self.topologies[k], self.job.physical, self.axes)
            if vals is not None:
                d = distance(vals, phys) + type_distance(self.topologies[k], self.job.physical)
                out.append(Member(k, vals, s, d))
        return out

    async def decide(self, inc_key: Key, inc: _Scored) -> RoundRecord:
        job, metric = self.job, self.settings.metric
        rec = self.r._record(job, "kept", "", self.t0)
        best = self.best()
        rec.candidates = sum(s.status not in ("rejected", "in_effect") for s in self.scores)
        rec.rejected, rec.failed, rec.scores = self.rejected, self.failed, self.scores
        rec.samples = max((s.samples for s in self.scores), default=0)
        rec.export_interval_ms = self.interval
        rec.incumbent_score = inc.row.score
        if best is None:
            rec.status, rec.reason = "skipped", "no candidate could be scored (no measured instant matched)"
            log.info("calibration_skipped", round=job.index, at_ms=job.at_ms, reason=rec.reason)
            return rec
        win = self.evaluated[best]
        assert win.row.score is not None
        inc_score = inc.row.score if inc.row.score is not None else math.inf
        noise = self._noise(inc)
        threshold = self._threshold(inc, win, noise) if best != inc_key else 0.0
        members = self._members(best, noise)
        weight = self.settings.prior_weight
        by_key = {m.key: m for m in members}
        tau = (
            threshold
            if threshold > 0
            else (self.settings.hysteresis * noise if math.isfinite(noise) else 0.0)
        )
        chosen = preferred(members, weight, tau) if weight > 0 and members else by_key.get(best)
        if members and chosen is not None and best in by_key:
            phys = current_values(job.physical, job.physical, self.axes)
            rec.intervals = intervals(self.axes, members, by_key[best], chosen, phys)
        pick = best if chosen is None else chosen.key
        pick_sc = self.evaluated[pick]
        assert pick_sc.row.score is not None
        topo = self.topologies[pick]
        rec.winner = self.r._in_effect(topo, job.physical)
        rec.winner_score = pick_sc.row.score
        gain = inc_score - win.row.score
        rec.improvement, rec.threshold = gain, threshold
        prior = ""
        if pick != best:
            prior = (
                f"; nearest the physical topology among the {len(members)} within the noise of the best "
                f"({metric} {win.row.score:.4g})"
            )
        if not gain > threshold or best == inc_key:
            inc_m = by_key.get(inc_key)
            band = self.settings.hysteresis * noise if math.isfinite(noise) else 0.0
            nearer = (
                weight > 0
                and chosen is not None
                and inc_m is not None
                and chosen.key != inc_key
                and objective(inc_m, weight, tau) - objective(chosen, weight, tau) > band
            )
            if not nearer:
                if best == inc_key:
                    rec.reason = f"current topology kept: {metric} {inc_score:.4g} is the best"
                    rec.improvement = 0.0
                else:
                    rec.reason = (
                        f"current topology kept: {metric} {inc_score:.4g} vs best {win.row.score:.4g}, gain "
                        f"{gain:.3g} within the noise threshold {threshold:.3g}"
                    )
                return rec
            assert chosen is not None
            assert inc_m is not None
            rec.status, rec.winner_topology = "chosen", topo
            rec.reason = (
                f"{metric} {chosen.score:.4g} vs current {inc_score:.4g}, both within the noise of the best "
                f"({win.row.score:.4g}): nearer the physical topology (distance {inc_m.distance:.3g} -> "
                f"{chosen.distance:.3g}, prior_weight {weight:g})"
            )
            return rec
        rec.status = "chosen"
        rec.winner_topology = topo
        rec.reason = (
            f"{metric} {win.row.score:.4g} vs current {inc_score:.4g} (gain {gain:.3g} > threshold "
            f"{threshold:.3g}) over {rec.samples} samples "
            f"[{iso_ms(job.lookback_start_ms)}, {iso_ms(job.at_ms)})"
            + (" (physical topology)" if pick == PHYSICAL else "")
            + prior
        )
        return rec

    async def report(self, rec: RoundRecord, inc: _Scored) -> None:
        """Noise estimate and the calibrated (as the twin ran) vs uncalibrated MAPE of the newest interval."""
        job = self.job
        if inc.pred is not None and inc.ts is not None:
            meas = job.measured.join(pl.DataFrame({"timestamp_ms": inc.ts}), on="timestamp_ms", how="semi")
            rec.noise_pct = noise_pct(inc.pred, meas.sort("timestamp_ms")["power_draw"].to_numpy())
            if not math.isfinite(rec.noise_pct):
                rec.noise_pct = None
        phys = inc if _same(job.physical, job.current) else self.evaluated.get(PHYSICAL)
        parts: list[tuple[int, _Scored | None]] = []
        for start, topo in job.effect or [(job.eval_from_ms, job.current)]:
            if _same(topo, job.current):
                parts.append((start, inc))
            elif _same(topo, job.physical):
                parts.append((start, phys))
            else:
                vals = current_values(topo, job.physical, self.axes) or ("?",) * len(self.axes)
                (sc,) = await self.evaluate(0, [(("effect", start), Candidate(vals, topo))], "in_effect")
                parts.append((start, sc))
        cal = compose(parts, job.eval_from_ms, job.at_ms)
        unc = compose([(job.eval_from_ms, phys)], job.eval_from_ms, job.at_ms)
        if cal is not None and unc is not None and cal[1] == unc[1]:
            rec.mape_calibrated, rec.mape_uncalibrated, rec.eval_samples = cal[0], unc[0], cal[1]
