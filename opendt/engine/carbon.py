"""Carbon-intensity traces: OpenDC's step function (OPENDC_SEMANTICS §7).

Rows are sorted by time; each value holds until the next row; the first value also covers all earlier
times and the last holds forever. Times are absolute epoch ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .power import F64, I64


class CarbonError(ValueError):
    """An unreadable or malformed carbon trace."""


@dataclass(frozen=True)
class CarbonTrace:
    """Sorted step times (epoch ms) and intensities (gCO2/kWh)."""

    times: I64
    values: F64

    @staticmethod
    def from_frame(df: pl.DataFrame) -> CarbonTrace:
        """Read ``timestamp`` (epoch ms or datetime) and ``carbon_intensity``; sort by time."""
        missing = {"timestamp", "carbon_intensity"} - set(df.columns)
        if missing:
            raise CarbonError(f"carbon trace lacks column(s) {sorted(missing)}")
        ts = df.get_column("timestamp")
        if ts.dtype == pl.Datetime or ts.dtype == pl.Date:
            ts = ts.cast(pl.Datetime("ms")).dt.epoch("ms")
        ts = ts.cast(pl.Int64)
        d = pl.DataFrame({"t": ts, "v": df.get_column("carbon_intensity").cast(pl.Float64)}).drop_nulls()
        if d.height == 0:
            raise CarbonError("carbon trace is empty")
        d = d.sort("t", maintain_order=True)
        return CarbonTrace(
            times=d["t"].to_numpy().astype(np.int64), values=d["v"].to_numpy().astype(np.float64)
        )

    @staticmethod
    def load(path: Path) -> CarbonTrace:
        """Read a parquet file (or a directory of parquet files)."""
        if not path.exists():
            raise CarbonError(f"carbon trace not found: {path}")
        try:
            df = pl.read_parquet(path / "*.parquet" if path.is_dir() else path)
        except (OSError, pl.exceptions.PolarsError) as e:
            raise CarbonError(f"cannot read carbon trace {path}: {e}") from None
        return CarbonTrace.from_frame(df)

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
