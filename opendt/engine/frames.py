"""Input normalization: the engine's task and fragment inputs, from polars frames or from plain arrays.

The engine works on numpy arrays (:class:`TaskInput`, :class:`FragmentInput`); the polars frames of the
library API and the parquet files read by the CLI are checked the same way. Integer ids stay integers
(fast lookups, OpenDC files); any other id type becomes a string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .power import F64, I64, distinct

if TYPE_CHECKING:
    import polars as pl

TASK_COLUMNS = ("id", "submission_ms", "cpu_count", "mem_capacity")
FRAGMENT_COLUMNS = ("id", "duration", "cpu_usage")

Ids = npt.NDArray[Any]  # an integer dtype, or object (str)


class InputError(ValueError):
    """Malformed task or fragment input (names the column and the problem)."""


def _min_below_zero(a: npt.NDArray[Any]) -> bool:
    return bool(a.size) and bool(a.min() < 0)


@dataclass(frozen=True)
class TaskInput:
    """Tasks: id, submission (epoch ms), cores and memory (as in the trace), one entry per task."""

    ids: Ids
    submission_ms: I64
    cpu_count: I64
    mem_capacity: I64
    duration_ms: I64 | None = None
    """The declared duration, when the frame has one (only :func:`~opendt.worker.warm.task_stats`'s
    drain uses it: in streaming mode a running task's fragments are known only up to now)."""

    @property
    def n(self) -> int:
        return int(self.submission_ms.size)

    def validate(self) -> TaskInput:
        """Raise :class:`InputError` on negative counts or duplicate ids; returns ``self``."""
        if _min_below_zero(self.cpu_count):
            raise InputError("tasks: negative cpu_count")
        if _min_below_zero(self.mem_capacity):
            raise InputError("tasks: negative mem_capacity")
        if distinct(self.ids).size != self.ids.size:
            raise InputError("tasks: duplicate task ids")
        return self


@dataclass(frozen=True)
class FragmentInput:
    """Fragments in trace order: task id, duration (ms) and CPU demand (MHz)."""

    ids: Ids
    duration: I64
    cpu_usage: F64

    @property
    def n(self) -> int:
        return int(self.duration.size)

    def validate(self) -> FragmentInput:
        """Raise :class:`InputError` on negative durations or usages; returns ``self``."""
        check_fragment_values(self.duration, self.cpu_usage)
        return self


def check_fragment_values(duration: I64, cpu_usage: F64) -> None:
    """Negative durations or usages are errors."""
    if _min_below_zero(duration):
        raise InputError("fragments: negative duration")
    if _min_below_zero(cpu_usage):
        raise InputError("fragments: negative cpu_usage")


def _ids(col: pl.Series) -> pl.Series:
    import polars as pl

    return col.cast(pl.Int64) if col.dtype.is_integer() else col.cast(pl.Utf8)


def _epoch_ms(col: pl.Series) -> pl.Series:
    import polars as pl

    if col.dtype == pl.Datetime:
        col = col.cast(pl.Datetime("ms")).dt.epoch("ms")
    return col.cast(pl.Int64)


def task_input(tasks: pl.DataFrame) -> TaskInput:
    """Check the columns and types of a task frame and take its arrays."""
    missing = [c for c in TASK_COLUMNS if c not in tasks.columns]
    if missing:
        raise InputError(f"tasks frame lacks column(s) {missing}")
    import polars as pl

    ids = _ids(tasks.get_column("id"))
    cols = [
        ids,
        _epoch_ms(tasks.get_column("submission_ms")),
        tasks.get_column("cpu_count").cast(pl.Int64),
        tasks.get_column("mem_capacity").cast(pl.Int64),
    ]
    if any(c.null_count() for c in cols):
        raise InputError("tasks frame has null values")
    ids_np = ids.to_numpy() if ids.dtype == pl.Int64 else np.array(ids.to_list(), dtype=object)
    dur = None
    if "duration" in tasks.columns:
        d = tasks.get_column("duration")
        dur = d.cast(pl.Int64).fill_null(-1).to_numpy() if d.dtype.is_numeric() else None
    sub, cores, mem = (c.to_numpy() for c in cols[1:])
    return TaskInput(ids_np, sub, cores, mem, duration_ms=dur).validate()


def fragment_columns(fragments: pl.DataFrame) -> tuple[pl.Series, I64, F64]:
    """Check the columns of a fragment frame: (ids as Int64 or String, durations, usages)."""
    missing = [c for c in FRAGMENT_COLUMNS if c not in fragments.columns]
    if missing:
        raise InputError(f"fragments frame lacks column(s) {missing}")
    import polars as pl

    ids = _ids(fragments.get_column("id"))
    dur = fragments.get_column("duration").cast(pl.Int64)
    use = fragments.get_column("cpu_usage").cast(pl.Float64)
    if ids.null_count() or dur.null_count() or use.null_count():
        raise InputError("fragments frame has null values")
    durations, usages = dur.to_numpy(), use.to_numpy()
    check_fragment_values(durations, usages)
    return ids, durations, usages


def _id_series(ids: Ids) -> pl.Series:
    import polars as pl

    if ids.dtype == object:
        return pl.Series("id", ids.tolist(), dtype=pl.Utf8)
    return pl.Series("id", ids, dtype=pl.Int64)
