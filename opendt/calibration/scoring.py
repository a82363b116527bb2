"""Scoring candidates against the measured power, like with like.

The common grid is the measured samples' instants. A meter sample at ``t`` (SURF: every 30 s) is compared
with the candidate's export row at the same instant; candidates run with an export interval Δ equal to the
measured sampling interval, so their rows land on those instants (both grids start at the first task's
submission; a sample with no row at its instant is left out and counted). What is compared at ``t``:

* ``compare="mean"`` (default): the candidate's mean power over ``(t − Δ, t]``, i.e. its exact
  ``energy_usage / Δ``. A meter reports the average over its interval (the demo's meter does, by
  construction); on SURF every fragment is 30 s long and aligned, so it also equals the power at ``t``.
* ``compare="instant"``: the candidate's instantaneous ``power_draw`` at ``t`` (its left limit).

Metrics over the matched samples: MAPE (%, :func:`opendt.metrics.mape`: samples with measured power 0 are
left out), RMSE (W) and the
absolute energy error over the lookback (%, |Σ predicted − Σ measured| / Σ measured, equal Δ per sample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from opendt.metrics import mape

F64 = npt.NDArray[np.float64]
Metric = Literal["mape", "rmse", "energy"]


@dataclass(frozen=True)
class Scores:
    mape: float
    rmse: float
    energy: float
    samples: int

    def get(self, metric: Metric) -> float:
        return {"mape": self.mape, "rmse": self.rmse, "energy": self.energy}[metric]


def rmse(pred: F64, meas: F64) -> float:
    """Root mean square error (W)."""
    if pred.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((pred - meas) ** 2)))


def energy_error(pred: F64, meas: F64) -> float:
    """|Σ predicted − Σ measured| / Σ measured (%): the energy error over equally spaced samples."""
    total = float(np.sum(meas))
    if total == 0:
        return float("nan")
    return abs(float(np.sum(pred)) - total) / abs(total) * 100.0


def score(pred: F64, meas: F64) -> Scores:
    return Scores(mape(pred, meas), rmse(pred, meas), energy_error(pred, meas), int(pred.size))


def sampling_interval_ms(timestamps: npt.NDArray[np.int64]) -> int | None:
    """The meter's sampling interval: the median gap between consecutive distinct instants."""
    ts = np.unique(timestamps)
    if ts.size < 2:
        return None
    gap = int(np.median(np.diff(ts)))
    return gap if gap > 0 else None


def measured_total(samples: pl.DataFrame) -> pl.DataFrame:
    """Sum the power sources per instant: ``timestamp_ms``, ``power_draw`` (sorted)."""
    return (
        samples.group_by("timestamp_ms")
        .agg(pl.col("power_draw").sum())
        .sort("timestamp_ms")
        .select(pl.col("timestamp_ms").cast(pl.Int64), pl.col("power_draw").cast(pl.Float64))
    )


def predicted_at(rows: pl.DataFrame, interval_ms: int, compare: Literal["mean", "instant"]) -> pl.DataFrame:
    """Candidate rows (summed over clusters) → ``timestamp_ms``, ``predicted`` W."""
    value = (
        pl.col("energy_usage") / (interval_ms / 1000.0) if compare == "mean" else pl.col("power_draw")
    ).alias("predicted")
    return rows.select(pl.col("timestamp_absolute").cast(pl.Int64).alias("timestamp_ms"), value)


def align(measured: pl.DataFrame, predicted: pl.DataFrame) -> tuple[F64, F64]:
    """(predicted, measured) at the measured instants that have a prediction."""
    j = measured.join(predicted, on="timestamp_ms", how="inner").sort("timestamp_ms")
    return j["predicted"].to_numpy().astype(np.float64), j["power_draw"].to_numpy().astype(np.float64)


def recency_weights(ts: npt.NDArray[np.int64], at_ms: int, half_life_s: float | None) -> F64:
    """A sample at ``t`` weighs ``2^(−(at − t) / half_life)`` (1 for every sample without a half-life)."""
    if half_life_s is None:
        return np.ones(ts.size)
    out: F64 = np.exp2(-(at_ms - ts.astype(np.float64)) / (half_life_s * 1000.0))
    return out


def abs_pct_errors(pred: F64, meas: F64) -> F64:
    """|predicted − measured| / |measured| in %, NaN where the measured value is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: F64 = np.where(meas != 0, np.abs(pred - meas) / np.abs(meas) * 100.0, np.nan)
    return out


def weighted_mean(x: F64, w: F64) -> float:
    """Σ w·x / Σ w over the finite ``x`` (NaN when none)."""
    ok = np.isfinite(x)
    if not ok.any() or float(w[ok].sum()) <= 0:
        return float("nan")
    return float(np.sum(w[ok] * x[ok]) / np.sum(w[ok]))


def noise_pct(pred: F64, meas: F64) -> float:
    """The meter noise (% of the reading, one standard deviation) estimated from the residuals: the white
    part of the relative residual ``(measured − predicted) / predicted`` is what differs from one sample to
    the next, so σ ≈ 1.4826 · MAD(Δ residual) / √2 (robust to model error that varies slowly)."""
    ok = pred > 0
    if ok.sum() < 8:
        return float("nan")
    r = (meas[ok] - pred[ok]) / pred[ok]
    d = np.diff(r)
    mad = float(np.median(np.abs(d - np.median(d))))
    return 1.4826 * mad / math.sqrt(2.0) * 100.0


def paired_se(d: F64, w: F64) -> float:
    """Standard error, under the measurement noise, of the weighted mean of paired differences ``d``
    (time-ordered): the meter noise is white, so its share of ``d`` is what changes from one sample to the
    next; its variance is estimated robustly from consecutive differences (1.4826 · MAD(Δd) / √2, squared).
    A slowly varying difference between two models is systematic (it does not average out), so it is not
    counted as noise."""
    ok = np.isfinite(d)
    d, w = d[ok], w[ok]
    if d.size < 8 or float(w.sum()) <= 0:
        return float("inf")
    dd = np.diff(d)
    sigma = 1.4826 * float(np.median(np.abs(dd - np.median(dd)))) / math.sqrt(2.0)
    return sigma * math.sqrt(float(np.sum(w**2))) / float(np.sum(w))


class _Errors(Protocol):
    ts: npt.NDArray[np.int64] | None
    err: F64 | None


def compose(parts: Sequence[tuple[int, _Errors | None]], lo: int, hi: int) -> tuple[float, int] | None:
    """MAPE (%) and sample count over ``(lo, hi]``-ending intervals of piecewise predictions: part k covers
    the instants after its start up to the next part's start."""
    errs: list[F64] = []
    for k, (start, sc) in enumerate(parts):
        if sc is None or sc.ts is None or sc.err is None:
            return None
        end = parts[k + 1][0] if k + 1 < len(parts) else hi
        sel = (sc.ts > max(start, lo)) & (sc.ts <= end)
        errs.append(sc.err[sel])
    e = np.concatenate(errs) if errs else np.zeros(0)
    e = e[np.isfinite(e)]
    return (float(e.mean()), int(e.size)) if e.size else None
