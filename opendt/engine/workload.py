"""Reading a workload directory in OpenDC's schema (OPENDC_SEMANTICS §3) into the engine's frames."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from .frames import InputError, normalize_fragments, normalize_tasks

TASK_READ = ("id", "submission_time", "duration", "cpu_count", "cpu_capacity", "mem_capacity")
FRAGMENT_READ = ("id", "duration", "cpu_usage")


def _read(path: Path, columns: tuple[str, ...]) -> pl.DataFrame:
    if not path.is_file():
        raise InputError(f"workload file not found: {path}")
    try:
        schema = pq.read_schema(path)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise InputError(f"{path.name} lacks required column(s) {missing}")
    table = pq.read_table(path, columns=list(columns))
    return pl.from_arrow(table)  # type: ignore[return-value]


def load_workload(
    directory: Path, *, submission_time: str | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Load ``tasks.parquet`` and ``fragments.parquet``; returns normalized (tasks, fragments)."""
    if not directory.is_dir():
        raise InputError(f"workload directory not found: {directory}")
    t = _read(directory / "tasks.parquet", TASK_READ)
    f = _read(directory / "fragments.parquet", FRAGMENT_READ)
    sub = t.get_column("submission_time")
    if sub.dtype == pl.Datetime:
        sub = sub.cast(pl.Datetime("ms")).dt.epoch("ms")
    t = t.with_columns(sub.cast(pl.Int64).alias("submission_ms")).drop("submission_time")
    if t.height and t["duration"].min() < 0:  # type: ignore[operator]
        raise InputError("tasks.parquet: negative duration")
    tasks = normalize_tasks(t)
    fragments = normalize_fragments(f)
    if submission_time is not None and tasks.height:
        try:
            target = _utc_ms(submission_time)
        except ValueError:
            raise InputError(f"submissionTime is not an ISO date-time: {submission_time!r}") from None
        loaded = tasks.filter(pl.col("id").is_in(fragments["id"].unique().to_list()))
        if loaded.height:
            shift = target - int(loaded["submission_ms"].min())  # type: ignore[arg-type]
            tasks = tasks.with_columns(pl.col("submission_ms") + shift)
    return tasks, fragments


def _utc_ms(text: str) -> int:
    """An ISO ``LocalDateTime`` read as UTC, in epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)
