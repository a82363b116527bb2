"""The numbers behind the figures and the headline table, from a :class:`~opendt.report.runs.Run`.

Definitions (the same as ``opendt calibrate``, ``/api/power`` and the bench scripts):

* **MAPE** (%): mean of |twin − measured| / measured over the *matched instants*: the twin's export
  instants that have a measured sample at the same instant (measured > 0); the twin's value there is its
  ``power_draw``.
* **Energy error** (%): Σ twin / Σ measured − 1 over the same instants (equally spaced: an energy ratio).
* **Bucket means** (5 min, 1 h): a twin row covers ``(t − width, t]`` and a measured sample ``(t − Δ, t]``
  (Δ = the meter's sampling interval); each goes to the bucket of its interval's midpoint. The twin's mean
  power in a bucket is Σ energy / Σ width (exact); the measured one the mean of its samples.
* **Per hour**: twin energy Σ ``energy_usage``; measured energy Σ power × Δ; jobs Σ ``tasks_completed``; CPU
  work Σ ``cpu_work`` (GHz·s); carbon Σ ``carbon_emission``; the measured emission is the measured energy at
  the hour's twin intensity (its emission / energy).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from opendt.calibration.scoring import sampling_interval_ms
from opendt.metrics import mape

from .runs import Run

J_PER_KWH = 3.6e6
FIVE_MIN_MS = 300_000
HOUR_MS = 3_600_000


def matched(run: Run) -> pl.DataFrame:
    """``timestamp_ms``, ``twin``, ``measured`` (W) at the twin's instants that have a measured sample > 0."""
    schema = {"timestamp_ms": pl.Int64, "twin": pl.Float64, "measured": pl.Float64}
    if run.measured is None or run.agg.is_empty():
        return pl.DataFrame(schema=schema)
    return (
        run.agg.select("timestamp_ms", pl.col("power_draw").alias("twin"))
        .join(run.measured.rename({"power_draw": "measured"}), on="timestamp_ms", how="inner")
        .filter(pl.col("measured") > 0)
        .sort("timestamp_ms")
        .select(list(schema))
    )


def meter_interval_ms(run: Run) -> int | None:
    if run.measured is None:
        return None
    return sampling_interval_ms(run.measured["timestamp_ms"].to_numpy())


def _bucket_sums(
    keys: npt.NDArray[np.int64], columns: dict[str, npt.NDArray[np.float64]]
) -> tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[np.float64]], npt.NDArray[np.int64]]:
    """Sums of ``columns`` per run of equal ``keys`` (non-decreasing), in order: deterministic (a hash
    group-by on several threads may add the same numbers in another order: the report would not be
    byte-stable)."""
    if keys.size == 0:
        return keys, {k: v[:0] for k, v in columns.items()}, keys
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    counts = np.diff(np.r_[starts, keys.size])
    return keys[starts], {k: np.add.reduceat(v, starts) for k, v in columns.items()}, counts


def _col(df: pl.DataFrame, name: str) -> npt.NDArray[np.float64]:
    return df[name].cast(pl.Float64).fill_null(0.0).to_numpy()


def twin_buckets(run: Run, bucket_ms: int) -> pl.DataFrame:
    """Per bucket (start ``timestamp_ms``): twin ``power_w`` (mean), ``energy_kwh``, ``carbon_kg``, ``jobs``,
    ``work_ghz_s``, ``intensity`` (the bucket's mean intensity, energy-weighted, gCO2/kWh)."""
    a = run.agg.filter(pl.col("width_ms") > 0)
    mid = a["timestamp_ms"].to_numpy() - a["width_ms"].to_numpy() // 2
    names = ("energy_usage", "width_ms", "carbon_emission", "tasks_completed", "cpu_work")
    cols = {c: _col(a, c) for c in names}
    known = a["carbon_emission"].is_not_null().to_numpy()  # null: no carbon intensity received for it
    cols["known_energy"] = np.where(known, cols["energy_usage"], 0.0)
    cols["known"] = known.astype(np.float64)
    keys, sums, _ = _bucket_sums(mid // bucket_ms * bucket_ms, cols)
    energy = sums["energy_usage"]
    carbon = np.where(sums["known"] > 0, sums["carbon_emission"], np.nan)  # unknown: NaN, never 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return pl.DataFrame(
            {
                "timestamp_ms": keys,
                "power_w": energy / (sums["width_ms"] / 1000.0),
                "energy_kwh": energy / J_PER_KWH,
                "carbon_kg": carbon / 1000.0,
                "jobs": sums["tasks_completed"].round().astype(np.int64),
                "work_ghz_s": sums["cpu_work"],
                "intensity": carbon / (sums["known_energy"] / J_PER_KWH),
            },
            schema={
                "timestamp_ms": pl.Int64,
                **dict.fromkeys(("power_w", "energy_kwh", "carbon_kg"), pl.Float64),
                "jobs": pl.Int64,
                "work_ghz_s": pl.Float64,
                "intensity": pl.Float64,
            },
        )


def measured_buckets(run: Run, bucket_ms: int) -> pl.DataFrame:
    """Per bucket: measured ``power_w`` (mean of the samples) and ``energy_kwh`` (Σ power × Δ)."""
    dt = meter_interval_ms(run)
    schema = {"timestamp_ms": pl.Int64, "power_w": pl.Float64, "energy_kwh": pl.Float64}
    if run.measured is None or dt is None:
        return pl.DataFrame(schema=schema)
    mid = run.measured["timestamp_ms"].to_numpy() - dt // 2
    keys, sums, counts = _bucket_sums(mid // bucket_ms * bucket_ms, {"p": _col(run.measured, "power_draw")})
    return pl.DataFrame(
        {
            "timestamp_ms": keys,
            "power_w": sums["p"] / counts,
            "energy_kwh": sums["p"] * (dt / 1000.0) / J_PER_KWH,
        },
        schema=schema,
    )


def rolling_mape(run: Run, hours: float) -> pl.DataFrame:
    """``timestamp_ms``, ``mape`` (%): the MAPE of the matched instants in (t − ``hours``, t]."""
    m = matched(run)
    if m.is_empty():
        return pl.DataFrame(schema={"timestamp_ms": pl.Int64, "mape": pl.Float64})
    ape = ((pl.col("twin") - pl.col("measured")).abs() / pl.col("measured") * 100.0).alias("ape")
    window = f"{round(hours * 3600 * 1000)}ms"
    return (
        m.select("timestamp_ms", ape)
        .with_columns(pl.from_epoch("timestamp_ms", "ms").alias("_t"))
        .select("timestamp_ms", pl.col("ape").rolling_mean_by("_t", window_size=window).alias("mape"))
    )


def five_min_error(run: Run) -> pl.DataFrame:
    """``timestamp_ms``, ``twin_w``, ``measured_w``, ``error_pct`` (signed) of the 5-min means both have."""
    t = twin_buckets(run, FIVE_MIN_MS).select("timestamp_ms", pl.col("power_w").alias("twin_w"))
    m = measured_buckets(run, FIVE_MIN_MS).select("timestamp_ms", pl.col("power_w").alias("measured_w"))
    return (
        t.join(m, on="timestamp_ms", how="inner")
        .filter(pl.col("measured_w") > 0)
        .with_columns(((pl.col("twin_w") / pl.col("measured_w") - 1.0) * 100.0).alias("error_pct"))
        .sort("timestamp_ms")
    )


@dataclass(frozen=True)
class Headline:
    """The headline numbers of one run (None: not available, e.g. no measured power)."""

    mape_pct: float | None
    energy_error_pct: float | None
    matched: int
    energy_kwh: float
    measured_energy_kwh: float | None
    carbon_kg: float | None
    """Σ carbon_emission over the instants a carbon intensity was received for (None: none was)."""
    jobs: int
    cpu_work_thz_s: float
    efficiency_thz_s_per_kwh: float | None
    windows: int
    windows_failed: int
    span_ms: tuple[int, int] | None
    latency_sum_s: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_max_s: float | None
    calibration_rounds: int
    calibration_applied: int
    topology_versions: int
    export_interval_s: float | None
    window_s: float | None

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["span_ms"] = list(self.span_ms) if self.span_ms is not None else None
        return out


def _pct(xs: np.ndarray[Any, np.dtype[np.float64]], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs.size else None


def headline(run: Run) -> Headline:
    m = matched(run)
    twin, meas = m["twin"].to_numpy(), m["measured"].to_numpy()
    energy_kwh = float(run.agg["energy_usage"].sum()) / J_PER_KWH
    measured_kwh = None
    dt = meter_interval_ms(run)
    if run.measured is not None and dt is not None:
        measured_kwh = float(run.measured["power_draw"].sum()) * dt / 1000.0 / J_PER_KWH
    work = float(run.agg["cpu_work"].sum()) / 1000.0
    lat = run.windows["latency_s"].drop_nulls().to_numpy()
    cal = run.calibration
    window_s = None
    if not run.windows.is_empty():
        window_s = (
            statistics.median((run.windows["window_end_ms"] - run.windows["window_start_ms"]).to_list()) / 1e3
        )
    interval = run.export_interval_ms
    return Headline(
        mape_pct=mape(twin, meas) if m.height else None,
        energy_error_pct=(float(twin.sum()) / float(meas.sum()) - 1.0) * 100.0 if m.height else None,
        matched=m.height,
        energy_kwh=energy_kwh,
        measured_energy_kwh=measured_kwh,
        carbon_kg=(
            float(run.agg["carbon_emission"].sum()) / 1000.0
            if run.agg["carbon_emission"].is_not_null().any()
            else None
        ),
        jobs=int(run.agg["tasks_completed"].sum()),
        cpu_work_thz_s=work,
        efficiency_thz_s_per_kwh=work / energy_kwh if energy_kwh > 0 else None,
        windows=run.windows.height,
        windows_failed=int((run.windows["status"] != "ok").sum()),
        span_ms=run.span_ms,
        latency_sum_s=float(lat.sum()),
        latency_p50_s=_pct(lat, 50),
        latency_p95_s=_pct(lat, 95),
        latency_max_s=float(lat.max()) if lat.size else None,
        calibration_rounds=0 if cal is None else cal.height,
        calibration_applied=0 if cal is None else int((cal["status"] == "applied").sum()),
        topology_versions=run.windows["topology_version"].n_unique()
        if "topology_version" in run.windows.columns
        else 0,
        export_interval_s=None if interval is None else interval / 1000.0,
        window_s=window_s,
    )
