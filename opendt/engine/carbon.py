"""Carbon-intensity traces: OpenDC's step function (OPENDC_SEMANTICS §7).

Rows are sorted by time; each value holds until the next row; the first value also covers all earlier
times and the last holds forever. Times are absolute epoch ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .power import F64, I64

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

COLUMNS = ("timestamp", "carbon_intensity")


class CarbonError(ValueError):
    """An unreadable or malformed carbon trace."""


@dataclass(frozen=True)
class CarbonTrace:
    """Sorted step times (epoch ms) and intensities (gCO2/kWh)."""

    times: I64
    values: F64

    @staticmethod
    def from_arrays(times: I64, values: F64) -> CarbonTrace:
        """Steps from epoch-ms times and intensities (rows with a null are already dropped); sorts by time."""
        if times.size == 0:
            raise CarbonError("carbon trace is empty")
        order = np.argsort(times, kind="stable")
        return CarbonTrace(times=times[order].astype(np.int64), values=values[order].astype(np.float64))

    @staticmethod
    def from_frame(df: pl.DataFrame) -> CarbonTrace:
        """Read ``timestamp`` (epoch ms or datetime; ``timestamp_ms`` is taken as well: the frames the twin
        builds name it so) and ``carbon_intensity``; sort by time."""
        import polars as pl

        if "timestamp" not in df.columns and "timestamp_ms" in df.columns:
            df = df.rename({"timestamp_ms": "timestamp"})
        missing = set(COLUMNS) - set(df.columns)
        if missing:
            raise CarbonError(f"carbon trace lacks column(s) {sorted(missing)}")
        ts = df.get_column("timestamp")
        if ts.dtype == pl.Datetime or ts.dtype == pl.Date:
            ts = ts.cast(pl.Datetime("ms")).dt.epoch("ms")
        ts = ts.cast(pl.Int64)
        d = pl.DataFrame({"t": ts, "v": df.get_column("carbon_intensity").cast(pl.Float64)}).drop_nulls()
        return CarbonTrace.from_arrays(d["t"].to_numpy(), d["v"].to_numpy())

    @staticmethod
    def load(path: Path) -> CarbonTrace:
        """Read a parquet file (or a directory of parquet files) with pyarrow."""
        import pyarrow.parquet as pq

        if not path.exists():
            raise CarbonError(f"carbon trace not found: {path}")
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        times: list[I64] = []
        values: list[F64] = []
        try:
            for file in files:
                f = pq.ParquetFile(file)
                missing = set(COLUMNS) - set(f.schema_arrow.names)
                if missing:
                    raise CarbonError(f"carbon trace lacks column(s) {sorted(missing)}")
                table = f.read(columns=list(COLUMNS))
                t, v = table.column("timestamp"), table.column("carbon_intensity")
                ok = _valid(t) & _valid(v)
                times.append(_epoch_ms(t, ok)[ok])
                values.append(np.where(ok, v.to_numpy(), 0.0).astype(np.float64)[ok])
        except (OSError, ValueError) as e:
            if isinstance(e, CarbonError):
                raise
            raise CarbonError(f"cannot read carbon trace {path}: {e}") from None
        if not files:
            raise CarbonError(f"cannot read carbon trace {path}: no parquet files")
        return CarbonTrace.from_arrays(np.concatenate(times), np.concatenate(values))

    def extended(self, times: I64, values: F64) -> CarbonTrace:
        """This trace with the steps of ``times`` after its last step appended (earlier or equal times are
        already known: a stream that repeats itself changes nothing)."""
        order = np.argsort(times, kind="stable")
        times, values = times[order].astype(np.int64), values[order].astype(np.float64)
        new = times > self.times[-1]
        if not new.any():
            return self
        return CarbonTrace(
            np.concatenate((self.times, times[new])), np.concatenate((self.values, values[new]))
        )

    def since(self, t: int) -> CarbonTrace:
        """The steps from the one in force at absolute ``t`` on (what lookups at ``t`` or later need)."""
        i = max(int(np.searchsorted(self.times, t, side="right")) - 1, 0)
        return self if i == 0 else CarbonTrace(self.times[i:], self.values[i:])

    def at(self, t: I64) -> F64:
        """Value in force at absolute ``t`` (right-continuous)."""
        i = np.searchsorted(self.times, t, side="right") - 1
        out: F64 = self.values[np.maximum(i, 0)]
        return out

    def before(self, t: I64) -> F64:
        """Value just before absolute ``t`` (left limit)."""
        i = np.searchsorted(self.times, t, side="left") - 1
        out: F64 = self.values[np.maximum(i, 0)]
        return out

    def steps_between(self, lo: int, hi: int) -> I64:
        """Step times strictly inside ``(lo, hi)``."""
        a = np.searchsorted(self.times, lo, side="right")
        b = np.searchsorted(self.times, hi, side="left")
        return self.times[a:b]

    def first_step_after(self, t: int) -> int | None:
        """The first step time strictly after ``t`` (None when there is none)."""
        i = int(np.searchsorted(self.times, t, side="right"))
        return int(self.times[i]) if i < self.times.size else None


def _valid(col: pa.ChunkedArray) -> npt.NDArray[np.bool_]:
    """False where ``col`` is null (read from the validity bitmaps, without pyarrow.compute)."""
    if col.null_count == 0:
        return np.ones(len(col), dtype=np.bool_)
    parts = []
    for chunk in col.chunks:
        bitmap = chunk.buffers()[0]
        if bitmap is None:
            parts.append(np.ones(len(chunk), dtype=np.bool_))
            continue
        bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
        parts.append(bits[chunk.offset : chunk.offset + len(chunk)].astype(np.bool_))
    return np.concatenate(parts)


def _epoch_ms(col: pa.ChunkedArray, ok: npt.NDArray[np.bool_]) -> I64:
    """Epoch ms of an integer, timestamp or date column (0 where ``ok`` is False)."""
    import pyarrow as pa

    arr = col.to_numpy()
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        arr = arr.astype("datetime64[ms]").view(np.int64)
    out: I64 = np.where(ok, arr, 0).astype(np.int64)
    return out
