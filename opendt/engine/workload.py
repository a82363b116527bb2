"""Reading a workload directory in OpenDC's schema (OPENDC_SEMANTICS §3) into the engine's inputs.

Only the needed columns are read, with pyarrow alone (no polars), straight into numpy arrays.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .frames import FragmentInput, InputError, TaskInput

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

TASK_READ = ("id", "submission_time", "duration", "cpu_count", "cpu_capacity", "mem_capacity")
TASK_USED = ("id", "submission_time", "duration", "cpu_count", "mem_capacity")  # cpu_capacity: only required
FRAGMENT_READ = ("id", "duration", "cpu_usage")


def _read(path: Path, required: tuple[str, ...], used: tuple[str, ...]) -> pa.Table:
    """The ``used`` columns of a parquet file that must have all of ``required``."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InputError(f"workload file not found: {path}")
    try:
        f = pq.ParquetFile(path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    names = f.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(f"{path.name} lacks required column(s) {missing}")
    return f.read(columns=list(used))


def _column(table: pa.Table, name: str, kind: str, where: str) -> npt.NDArray[Any]:
    """A column as int64 / float64 (``kind`` "i" / "f"), ms since the epoch for timestamps ("t")."""
    import pyarrow as pa

    col = table.column(name)
    if col.null_count:
        raise InputError(f"{where} has null values")
    t = col.type
    out: npt.NDArray[Any]
    if kind == "id":
        if pa.types.is_integer(t):
            out = col.to_numpy().astype(np.int64, copy=False)
        else:
            out = np.array([str(v) for v in col.to_pylist()], dtype=object)
    elif kind == "t" and pa.types.is_timestamp(t):
        out = col.to_numpy().astype("datetime64[ms]").astype(np.int64)
    else:
        out = col.to_numpy().astype(np.float64 if kind == "f" else np.int64, copy=False)
    return out


def read_workload(directory: Path, *, submission_time: str | None = None) -> tuple[TaskInput, FragmentInput]:
    """Read and check ``tasks.parquet`` and ``fragments.parquet`` (pyarrow only)."""
    if not directory.is_dir():
        raise InputError(f"workload directory not found: {directory}")
    t = _read(directory / "tasks.parquet", TASK_READ, TASK_USED)
    f = _read(directory / "fragments.parquet", FRAGMENT_READ, FRAGMENT_READ)
    duration = _column(t, "duration", "i", "tasks frame")
    if duration.size and duration.min() < 0:
        raise InputError("tasks.parquet: negative duration")
    tasks = TaskInput(
        _column(t, "id", "id", "tasks frame"),
        _column(t, "submission_time", "t", "tasks frame"),
        _column(t, "cpu_count", "i", "tasks frame"),
        _column(t, "mem_capacity", "i", "tasks frame"),
    ).validate()
    del t
    fragments = FragmentInput(
        _column(f, "id", "id", "fragments frame"),
        _column(f, "duration", "i", "fragments frame"),
        _column(f, "cpu_usage", "f", "fragments frame"),
    ).validate()
    del f
    if submission_time is not None and tasks.n:
        try:
            target = _utc_ms(submission_time)
        except ValueError:
            raise InputError(f"submissionTime is not an ISO date-time: {submission_time!r}") from None
        loaded = np.isin(tasks.ids, fragments.ids)
        if loaded.any():
            shift = target - int(tasks.submission_ms[loaded].min())
            tasks = TaskInput(tasks.ids, tasks.submission_ms + shift, tasks.cpu_count, tasks.mem_capacity)
    return tasks, fragments


def load_workload(
    directory: Path, *, submission_time: str | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Load ``tasks.parquet`` and ``fragments.parquet``; returns normalized (tasks, fragments) frames."""
    import polars as pl

    from .frames import _id_series

    tasks, fragments = read_workload(directory, submission_time=submission_time)
    t = pl.DataFrame(
        [
            _id_series(tasks.ids),
            pl.Series("submission_ms", tasks.submission_ms, dtype=pl.Int64),
            pl.Series("cpu_count", tasks.cpu_count, dtype=pl.Int64),
            pl.Series("mem_capacity", tasks.mem_capacity, dtype=pl.Int64),
        ]
    )
    f = pl.DataFrame(
        [
            _id_series(fragments.ids),
            pl.Series("duration", fragments.duration, dtype=pl.Int64),
            pl.Series("cpu_usage", fragments.cpu_usage, dtype=pl.Float64),
        ]
    )
    return t, f


def _utc_ms(text: str) -> int:
    """An ISO ``LocalDateTime`` read as UTC, in epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)
