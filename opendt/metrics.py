"""The one bucketing and the one MAPE: every series the API, the Grafana datasource, the calibrator and the
offline commands show or score goes through these.

* :func:`bucket`: points ``(t, value)`` in ``[start, end)`` aggregated per step, buckets aligned on an
  origin (the epoch for the JSON API, the range start for Grafana); only finite values count.
* :func:`interval_widths` and :func:`mean_power`: the time each export row covers, and the twin's mean power
  per bucket from the energy of those intervals (what the report plots and the dashboard draws).
* :func:`ape` and :func:`mape`: the absolute percentage error of a prediction against a measurement, where
  the measurement is finite and > 0 (a meter reading of 0 W has no relative error), and its mean.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
How = Literal["mean", "sum", "max", "min", "last", "count"]


def bucket(
    ts: I64, values: F64, start: int, end: int, step_ms: int, how: How = "mean", *, origin: int = 0
) -> tuple[I64, F64]:
    """Per ``step_ms`` bucket of the points in ``[start, end)``: the bucket start (``origin + k·step_ms``)
    and the ``how`` of its finite values (``last``: the latest point's). Buckets without a finite value are
    left out. ``ts`` need not be sorted (a stable sort keeps equal times in their order)."""
    if step_ms <= 0:
        raise ValueError("step_ms must be > 0")
    ts = np.asarray(ts, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if ts.size > 1 and bool((np.diff(ts) < 0).any()):
        order = np.argsort(ts, kind="stable")
        ts, values = ts[order], values[order]
    lo, hi = np.searchsorted(ts, (start, end), side="left")
    t, v = ts[lo:hi], values[lo:hi]
    finite = np.isfinite(v)
    if not finite.all():
        t, v = t[finite], v[finite]
    if t.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    b = (t - origin) // step_ms * step_ms + origin
    first = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
    counts = np.diff(np.append(first, t.size))
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is inf: callers drop non-finite
        agg = _aggregate(v, first, counts, how)
    return b[first], agg


def _aggregate(v: F64, first: I64, counts: I64, how: How) -> F64:
    if how == "mean":
        out: F64 = np.add.reduceat(v, first) / counts
    elif how == "sum":
        out = np.add.reduceat(v, first)
    elif how == "max":
        out = np.maximum.reduceat(v, first)
    elif how == "min":
        out = np.minimum.reduceat(v, first)
    elif how == "last":
        out = v[first + counts - 1]
    elif how == "count":
        out = counts.astype(np.float64)
    else:
        raise ValueError(f"unknown aggregation {how!r}")
    return out


def interval_widths(ts: I64) -> I64:
    """The time (ms) each export row covers, for sorted row times ``ts``: a row at t covers (t − Δ, t], Δ the
    export interval (the most common gap between rows; the smallest of equals); a row less than Δ after the
    one before (the final flush) covers that gap; the first row Δ. All 0 when no gap is positive."""
    ts = np.asarray(ts, dtype=np.int64)
    if ts.size == 0:
        return np.empty(0, np.int64)
    gaps = np.diff(ts)
    positive = gaps[gaps > 0]
    if positive.size == 0:
        return np.zeros(ts.size, np.int64)
    values, counts = np.unique(positive, return_counts=True)
    interval = int(values[np.argmax(counts)])  # np.unique sorts: argmax takes the smallest of the modes
    return np.concatenate(([interval], np.minimum(gaps, interval))).astype(np.int64)


def mean_power(ts: I64, energy_j: F64, start: int, end: int, step_ms: int) -> tuple[I64, F64]:
    """Per ``step_ms`` bucket (aligned on the epoch), the mean power (W) over the export intervals whose
    midpoint falls in ``[start, end)``: their energy over their total width (:func:`interval_widths`), so a
    short final flush row weighs by the time it covers. ``ts`` sorted; rows with a non-finite energy or no
    width are left out."""
    ts = np.asarray(ts, dtype=np.int64)
    energy = np.asarray(energy_j, dtype=np.float64)
    width = interval_widths(ts)
    keep = np.isfinite(energy) & (width > 0)
    mid = ts - width // 2
    keep &= (mid >= start) & (mid < end)
    mid, energy, width = mid[keep], energy[keep], width[keep]
    if mid.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    b = mid // step_ms * step_ms
    first = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
    watts: F64 = np.add.reduceat(energy, first) / (np.add.reduceat(width, first) / 1000.0)
    return b[first], watts


def ape(predicted: F64, measured: F64) -> F64:
    """|predicted − measured| / measured × 100 per point; NaN where the measurement is not finite and > 0 or
    the prediction is not finite."""
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    ok = np.isfinite(p) & np.isfinite(m) & (m > 0)
    out = np.full(p.shape, np.nan)
    out[ok] = np.abs(p[ok] - m[ok]) / m[ok] * 100.0
    return out


def mape(predicted: F64, measured: F64) -> float:
    """Mean absolute percentage error (%) over the points :func:`ape` defines; NaN when there is none."""
    errors = ape(predicted, measured)
    errors = errors[np.isfinite(errors)]
    return float(errors.mean()) if errors.size else float("nan")
