"""The window loop's counters and its one failure: what ``/api/status`` shows of the simulator."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import polars as pl

LATENCY_SAMPLES = 2016
"""Window latencies kept for the status's p50/p95 (a week of 5-minute windows)."""


@dataclass(frozen=True)
class ClusterTotals:
    """One cluster's share of a simulated window: its power at the window's last instant, its energy and
    carbon over the window (carbon ``None``: unknown for some of it, no intensity received)."""

    window_start_ms: int
    cluster: str
    power_watts: float
    energy_joules: float
    carbon_grams: float | None


def cluster_totals(rows: pl.DataFrame, window_start_ms: int) -> tuple[ClusterTotals, ...]:
    """Per cluster, the window's :class:`ClusterTotals` from the engine's rows (one per cluster per instant;
    a duplicate final flush row is counted once); empty for a window without rows."""
    need = {"timestamp_absolute", "cluster_name", "power_draw", "energy_usage", "carbon_emission"}
    if rows.is_empty() or not need <= set(rows.columns):
        return ()
    carbon = pl.col("carbon_emission").cast(pl.Float64).fill_nan(None)  # unknown anywhere: unknown
    per = (
        rows.unique(subset=["timestamp_absolute", "cluster_name"], keep="first", maintain_order=True)
        .sort("timestamp_absolute")
        .group_by("cluster_name", maintain_order=True)
        .agg(
            pl.col("power_draw").last(),
            pl.col("energy_usage").sum(),
            pl.when(carbon.is_null().any()).then(None).otherwise(carbon.sum()).alias("carbon_emission"),
        )
        .sort("cluster_name")
    )
    return tuple(
        ClusterTotals(
            window_start_ms=window_start_ms,
            cluster=str(r["cluster_name"]),
            power_watts=float(r["power_draw"]),
            energy_joules=float(r["energy_usage"]),
            carbon_grams=None if r["carbon_emission"] is None else float(r["carbon_emission"]),
        )
        for r in per.iter_rows(named=True)
    )


class WindowFailed(RuntimeError):
    """A window that could not be simulated: its worker died or hung each time, or the engine raised."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass
class LoopStats:
    windows_simulated: int = 0
    windows_failed: int = 0
    windows_replayed: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    """The latest windows' latencies (bounded: the status shows their p50/p95)."""
    last_window_end_ms: int | None = None
    checkpoints: int = 0
    batches: int = 0
    """Engine round trips that simulated several windows (:mod:`opendt.twin.batch`)."""
    topologies_refused: int = 0
    """Simulated versions the engine could not apply (the one before stays in effect)."""
    clusters: tuple[ClusterTotals, ...] = ()
    """The newest window this process simulated, per cluster (``/metrics``; empty after a restart until the
    next window)."""
