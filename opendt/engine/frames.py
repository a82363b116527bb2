"""Input normalization: the engine's task and fragment frames (the workload loader's schema)."""

from __future__ import annotations

import polars as pl

TASK_COLUMNS = ("id", "submission_ms", "cpu_count", "mem_capacity")
FRAGMENT_COLUMNS = ("id", "duration", "cpu_usage")


class InputError(ValueError):
    """Malformed task or fragment input (names the column and the problem)."""


def _ids(col: pl.Series) -> pl.Series:
    """Integer ids stay integers (Int64: fast joins, OpenDC files); anything else becomes a string."""
    return col.cast(pl.Int64) if col.dtype.is_integer() else col.cast(pl.Utf8)


def normalize_tasks(tasks: pl.DataFrame) -> pl.DataFrame:
    """Check the columns and types of a task frame; ids become strings."""
    missing = [c for c in TASK_COLUMNS if c not in tasks.columns]
    if missing:
        raise InputError(f"tasks frame lacks column(s) {missing}")
    sub = tasks.get_column("submission_ms")
    if sub.dtype == pl.Datetime:
        sub = sub.cast(pl.Datetime("ms")).dt.epoch("ms")
    out = pl.DataFrame(
        {
            "id": _ids(tasks.get_column("id")),
            "submission_ms": sub.cast(pl.Int64),
            "cpu_count": tasks.get_column("cpu_count").cast(pl.Int64),
            "mem_capacity": tasks.get_column("mem_capacity").cast(pl.Int64),
        }
    )
    if out.null_count().sum_horizontal().item() > 0:
        raise InputError("tasks frame has null values")
    if out.height and out["cpu_count"].min() < 0:  # type: ignore[operator]
        raise InputError("tasks: negative cpu_count")
    if out.height and out["mem_capacity"].min() < 0:  # type: ignore[operator]
        raise InputError("tasks: negative mem_capacity")
    if out["id"].n_unique() != out.height:
        raise InputError("tasks: duplicate task ids")
    return out


def normalize_fragments(fragments: pl.DataFrame) -> pl.DataFrame:
    """Check the columns of a fragment frame; negative durations or usages are errors."""
    missing = [c for c in FRAGMENT_COLUMNS if c not in fragments.columns]
    if missing:
        raise InputError(f"fragments frame lacks column(s) {missing}")
    out = pl.DataFrame(
        {
            "id": _ids(fragments.get_column("id")),
            "duration": fragments.get_column("duration").cast(pl.Int64),
            "cpu_usage": fragments.get_column("cpu_usage").cast(pl.Float64),
        }
    )
    if out.null_count().sum_horizontal().item() > 0:
        raise InputError("fragments frame has null values")
    if out.height and out["duration"].min() < 0:  # type: ignore[operator]
        raise InputError("fragments: negative duration")
    if out.height and out["cpu_usage"].min() < 0:  # type: ignore[operator]
        raise InputError("fragments: negative cpu_usage")
    return out
