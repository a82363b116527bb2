"""Calibration rounds: the record of one round and ``calibration.parquet`` (one row per round).

The file is rewritten whole (temporary file, then rename) whenever a round finishes or its winner is
applied; ``value`` is the first numeric axis's value in effect after the round, so the column over
``time`` is the calibrated parameter's series (``in_effect`` holds every axis, as JSON).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

SCORE_SCHEMA = pl.Struct(
    {
        "params": pl.Utf8(),
        "stage": pl.Int64(),
        "status": pl.Utf8(),
        "score": pl.Float64(),
        "mape": pl.Float64(),
        "rmse": pl.Float64(),
        "energy": pl.Float64(),
        "samples": pl.Int64(),
        "error": pl.Utf8(),
    }
)
SCHEMA = pl.Schema(
    {
        "round": pl.Int64(),
        "time": pl.Datetime("ms", "UTC"),
        "lookback_start": pl.Datetime("ms", "UTC"),
        "apply_at": pl.Datetime("ms", "UTC"),
        "status": pl.Utf8(),
        "reason": pl.Utf8(),
        "metric": pl.Utf8(),
        "candidates": pl.Int64(),
        "rejected": pl.Int64(),
        "failed": pl.Int64(),
        "samples": pl.Int64(),
        "export_interval_ms": pl.Int64(),
        "incumbent_score": pl.Float64(),
        "winner_score": pl.Float64(),
        "winner": pl.Utf8(),
        "in_effect": pl.Utf8(),
        "value": pl.Float64(),
        "version": pl.Int64(),
        "duration_s": pl.Float64(),
        "noise_pct": pl.Float64(),
        "improvement": pl.Float64(),
        "threshold": pl.Float64(),
        "mape_calibrated": pl.Float64(),
        "mape_uncalibrated": pl.Float64(),
        "eval_samples": pl.Int64(),
        "trust_region": pl.Utf8(),
        "intervals": pl.Utf8(),
        "scores": pl.List(SCORE_SCHEMA),
    }
)


@dataclass
class ScoreRow:
    params: str
    stage: int
    status: str
    """``ok``, ``failed`` (the simulation failed), ``rejected`` (invalid, never run) or ``incumbent``."""
    score: float | None = None
    mape: float | None = None
    rmse: float | None = None
    energy: float | None = None
    samples: int = 0
    error: str = ""


@dataclass
class RoundRecord:
    round: int
    time_ms: int
    lookback_start_ms: int
    apply_at_ms: int
    status: str
    """``chosen`` (a winner waits for its apply instant), ``applied``, ``kept`` (no candidate beat the
    current topology by the margin), ``skipped`` (nothing to score) or ``failed``."""
    reason: str
    metric: str
    candidates: int = 0
    rejected: int = 0
    failed: int = 0
    samples: int = 0
    export_interval_ms: int = 0
    incumbent_score: float | None = None
    winner_score: float | None = None
    winner: dict[str, Any] = field(default_factory=dict)
    in_effect: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    duration_s: float = 0.0
    noise_pct: float | None = None
    """The meter noise estimated from the current topology's residuals over the lookback (%, 1 σ)."""
    improvement: float | None = None
    """Weighted score of the current topology minus the winner's (what the winner gains)."""
    threshold: float | None = None
    """The gain a winner needed to be applied (significance × paired standard error, or the margin)."""
    mape_calibrated: float | None = None
    """MAPE (%) over the round's newest ``every_s`` of the twin as it ran (the topologies in effect then)."""
    mape_uncalibrated: float | None = None
    """MAPE (%) over the same samples of the physical topology (the twin without calibration)."""
    eval_samples: int = 0
    trust_region: dict[str, Any] = field(default_factory=dict)
    """Per axis, after the round: ``radius`` (relative), ``lo`` and ``hi`` around the values in effect."""
    intervals: dict[str, Any] = field(default_factory=dict)
    """Per numeric axis, the values the data cannot tell apart: ``lo`` / ``hi`` over the candidates whose
    score is within the noise threshold of the best's, and the ``best``, ``chosen`` (nearest the physical
    topology in that set, :mod:`~opendt.calibration.prior`) and ``physical`` values."""
    scores: list[ScoreRow] = field(default_factory=list)
    winner_topology: Any = None
    """The winning :class:`~opendt.models.topology.Topology` while it waits to be applied (not stored)."""

    @property
    def value(self) -> float | None:
        for v in self.in_effect.values():
            if isinstance(v, int | float):
                return float(v)
        return None

    def summary(self) -> dict[str, Any]:
        """What ``GET /api/status`` shows of a round (the scores of the five best candidates)."""
        ok = sorted((s for s in self.scores if s.score is not None), key=lambda s: s.score or 0.0)
        return {
            "round": self.round,
            "time_ms": self.time_ms,
            "lookback_start_ms": self.lookback_start_ms,
            "apply_at_ms": self.apply_at_ms,
            "status": self.status,
            "reason": self.reason,
            "metric": self.metric,
            "candidates": self.candidates,
            "rejected": self.rejected,
            "failed": self.failed,
            "samples": self.samples,
            "incumbent_score": self.incumbent_score,
            "winner_score": self.winner_score,
            "winner": self.winner,
            "in_effect": self.in_effect,
            "version": self.version,
            "duration_s": round(self.duration_s, 3),
            "noise_pct": self.noise_pct,
            "improvement": self.improvement,
            "threshold": self.threshold,
            "mape_calibrated": self.mape_calibrated,
            "mape_uncalibrated": self.mape_uncalibrated,
            "eval_samples": self.eval_samples,
            "trust_region": self.trust_region,
            "intervals": self.intervals,
            "best": [asdict(s) for s in ok[:5]],
        }

    def series_point(self) -> dict[str, Any]:
        """What ``/api/calibration``'s ``series`` shows of the round: the parameters in effect after it, its
        MAPE (calibrated, uncalibrated), noise estimate, trust region and identifiable intervals."""
        return {
            "time_ms": self.time_ms,
            "value": self.value,
            "in_effect": self.in_effect,
            "status": self.status,
            "mape_calibrated": self.mape_calibrated,
            "mape_uncalibrated": self.mape_uncalibrated,
            "noise_pct": self.noise_pct,
            "trust_region": self.trust_region,
            "intervals": self.intervals,
        }

    def row(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "time": self.time_ms,
            "lookback_start": self.lookback_start_ms,
            "apply_at": self.apply_at_ms,
            "status": self.status,
            "reason": self.reason,
            "metric": self.metric,
            "candidates": self.candidates,
            "rejected": self.rejected,
            "failed": self.failed,
            "samples": self.samples,
            "export_interval_ms": self.export_interval_ms,
            "incumbent_score": self.incumbent_score,
            "winner_score": self.winner_score,
            "winner": json.dumps(self.winner),
            "in_effect": json.dumps(self.in_effect),
            "value": self.value,
            "version": self.version,
            "duration_s": self.duration_s,
            "noise_pct": self.noise_pct,
            "improvement": self.improvement,
            "threshold": self.threshold,
            "mape_calibrated": self.mape_calibrated,
            "mape_uncalibrated": self.mape_uncalibrated,
            "eval_samples": self.eval_samples,
            "trust_region": json.dumps(self.trust_region),
            "intervals": json.dumps(self.intervals),
            "scores": [asdict(s) for s in self.scores],
        }


def to_frame(records: list[RoundRecord]) -> pl.DataFrame:
    if not records:
        return pl.DataFrame(schema=SCHEMA)
    df = pl.DataFrame(
        [r.row() for r in records],
        schema_overrides={
            "time": pl.Int64,
            "lookback_start": pl.Int64,
            "apply_at": pl.Int64,
            "scores": pl.List(SCORE_SCHEMA),
        },
    )
    return (
        df.with_columns(
            pl.from_epoch(c, "ms").dt.replace_time_zone("UTC") for c in ("time", "lookback_start", "apply_at")
        )
        .select(list(SCHEMA))
        .cast(SCHEMA)
    )


def _write(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.write_parquet(tmp)
    tmp.replace(path)


def _record(row: dict[str, Any]) -> RoundRecord:
    return RoundRecord(
        round=row["round"],
        time_ms=row["time"],
        lookback_start_ms=row["lookback_start"],
        apply_at_ms=row["apply_at"],
        status=row["status"],
        reason=row["reason"],
        metric=row["metric"],
        candidates=row["candidates"],
        rejected=row["rejected"],
        failed=row["failed"],
        samples=row["samples"],
        export_interval_ms=row["export_interval_ms"],
        incumbent_score=row["incumbent_score"],
        winner_score=row["winner_score"],
        winner=json.loads(row["winner"]),
        in_effect=json.loads(row["in_effect"]),
        version=row["version"],
        duration_s=row["duration_s"],
        noise_pct=row["noise_pct"],
        improvement=row["improvement"],
        threshold=row["threshold"],
        mape_calibrated=row["mape_calibrated"],
        mape_uncalibrated=row["mape_uncalibrated"],
        eval_samples=row["eval_samples"] or 0,
        trust_region=json.loads(row["trust_region"] or "{}"),
        intervals=json.loads(row["intervals"] or "{}"),
        scores=[ScoreRow(**sc) for sc in row["scores"] or []],
    )


def from_frame(df: pl.DataFrame) -> list[RoundRecord]:
    """The records of a ``calibration.parquet`` frame (the inverse of :func:`to_frame`)."""
    epochs = (pl.col(c).dt.epoch("ms") for c in ("time", "lookback_start", "apply_at"))
    missing = [pl.lit(None, dtype).alias(c) for c, dtype in SCHEMA.items() if c not in df.columns]
    df = df.with_columns(missing).select(list(SCHEMA)) if missing else df  # a file of an earlier version
    return [_record(row) for row in df.cast(SCHEMA).with_columns(epochs).iter_rows(named=True)]


DONE = frozenset({"applied", "kept", "skipped", "failed"})
"""Round statuses with nothing left to do; a ``chosen`` round still waits for its apply instant."""


class Journal:
    """``<run_dir>/calibration.parquet``: every round of the run, in order (a resumed run's included)."""

    def __init__(self, path: Path | None, *, on_new: Callable[[RoundRecord], None] | None = None) -> None:
        self.path = path
        self.on_new = on_new
        self.records: list[RoundRecord] = []
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the rounds an earlier process of this run journaled (none without a file)."""
        if self.path is not None and self.path.exists():
            self.records = from_frame(pl.read_parquet(self.path))

    def done_at(self, time_ms: int) -> RoundRecord | None:
        """The journaled round queued at ``time_ms`` when it has nothing left to do (see :data:`DONE`)."""
        for r in reversed(self.records):
            if r.time_ms == time_ms:
                return r if r.status in DONE else None
        return None

    async def save(self, record: RoundRecord) -> None:
        """Add ``record`` (or replace the row of the same round: a later status of it, or its re-run after a
        resume) and rewrite the file."""
        async with self._lock:
            at = next((i for i, r in enumerate(self.records) if r.round == record.round), None)
            if at is None:
                self.records.append(record)
                if self.on_new is not None:
                    self.on_new(record)
            else:
                self.records[at] = record
            if self.path is not None:
                await asyncio.to_thread(_write, to_frame(self.records), self.path)
