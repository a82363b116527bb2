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
FRAGMENT_READ = ("id", "duration", "cpu_usage")
# the columns used and how they are read: "id" (an integer or str), "t" (epoch ms), "i" (int64), "f" (float64)
TASK_USED = {"id": "id", "submission_time": "t", "duration": "i", "cpu_count": "i", "mem_capacity": "i"}
FRAGMENT_USED = {"id": "id", "duration": "i", "cpu_usage": "f"}


def _read(
    path: Path, required: tuple[str, ...], used: dict[str, str], where: str
) -> dict[str, npt.NDArray[Any]]:
    """The ``used`` columns of a parquet file that must have all of ``required``, as numpy arrays.

    Row groups are decoded one at a time into the final arrays, so the file is never held twice.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InputError(f"workload file not found: {path}")
    try:
        f = pq.ParquetFile(path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    schema = f.schema_arrow
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise InputError(f"{path.name} lacks required column(s) {missing}")
    n = f.metadata.num_rows
    out: dict[str, npt.NDArray[Any]] = {}
    for name, kind in used.items():
        t = schema.field(name).type
        if kind == "id":  # integer ids keep their width (OpenDC's are int32)
            dtype: Any = np.dtype(t.to_pandas_dtype()) if pa.types.is_integer(t) else object
        else:
            dtype = np.float64 if kind == "f" else np.int64
        out[name] = np.empty(n, dtype=dtype)
    pos = 0
    for i in range(f.num_row_groups):
        group = f.read_row_group(i, columns=list(used), use_threads=False)
        k = group.num_rows
        for name, kind in used.items():
            out[name][pos : pos + k] = _values(group.column(name), kind, where)
        pos += k
    return out


def _values(col: pa.ChunkedArray, kind: str, where: str) -> npt.NDArray[Any]:
    """A column's values as read by ``kind`` (see ``TASK_USED``); nulls are errors."""
    import pyarrow as pa

    if col.null_count:
        raise InputError(f"{where} has null values")
    t = col.type
    if kind == "id" and not pa.types.is_integer(t):
        return np.array([str(v) for v in col.to_pylist()], dtype=object)
    values: npt.NDArray[Any] = col.to_numpy()
    if kind == "t" and pa.types.is_timestamp(t):
        values = values.astype("datetime64[ms]").view(np.int64)
    return values


def read_workload(directory: Path, *, submission_time: str | None = None) -> tuple[TaskInput, FragmentInput]:
    """Read and check ``tasks.parquet`` and ``fragments.parquet`` (pyarrow only)."""
    if not directory.is_dir():
        raise InputError(f"workload directory not found: {directory}")
    t = _read(directory / "tasks.parquet", TASK_READ, TASK_USED, "tasks frame")
    if t["duration"].size and t["duration"].min() < 0:
        raise InputError("tasks.parquet: negative duration")
    tasks = TaskInput(t["id"], t["submission_time"], t["cpu_count"], t["mem_capacity"]).validate()
    del t
    f = _read(directory / "fragments.parquet", FRAGMENT_READ, FRAGMENT_USED, "fragments frame")
    fragments = FragmentInput(f["id"], f["duration"], f["cpu_usage"]).validate()
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
