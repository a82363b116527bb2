"""Time to make one window durable (results, measured power, journal) against the run's age, per layout.

    .venv/bin/python bench/results_append.py [--windows 8064] [--rows 2] [--samples 10]

Three layouts, each fed the same windows (``--rows`` result rows and ``--samples`` measured samples per
window, SURF's sizes; 8,064 windows = 4 weeks of 300 s windows):

* ``rewrite``: what the twin did before: the three parquet files rewritten whole per window (temporary file,
  rename), so a window costs in proportion to the run's age;
* ``parts``: one parquet file per table per window (temporary file, rename), the journal's part last;
* ``arrowlog``: the twin's :class:`~opendt.twin.results.ResultStore`: one checksummed Arrow frame per table
  appended per window (:mod:`opendt.twin.appendlog`).

Printed per layout: the median time per window at ages 0–99, 1,000–1,099, … (and the last 100), then the
time to read the finished run back (what a restart, ``opendt serve`` or a report pays once).

``--ages 0,2016,8064`` instead: per layout and age, the run filled to that many windows first (untimed), then
the median of ``--repeat`` windows made durable after it: the time per append against the run's age.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from opendt.twin.files import write_atomic
from opendt.twin.results import AGG_SCHEMA, MEASURED_SCHEMA, WINDOW_SCHEMA, ResultStore, WindowRecord

WINDOW_MS = 300_000
T0 = 1_700_000_000_000 // WINDOW_MS * WINDOW_MS


def _window(i: int, rows: int, samples: int) -> tuple[WindowRecord, pl.DataFrame, pl.DataFrame]:
    start = T0 + i * WINDOW_MS
    rng = np.random.default_rng(i)
    ts = start + (np.arange(1, rows + 1) * WINDOW_MS // rows)
    agg = pl.DataFrame(
        {
            "timestamp": ts,
            "power_draw": rng.random(rows) * 1e4,
            "energy_usage": rng.random(rows) * 1e6,
            "carbon_intensity": rng.random(rows) * 300,
            "carbon_emission": rng.random(rows),
            "topology_version": np.zeros(rows, np.int64),
            "window_start": np.full(rows, start),
            "tasks_completed": rng.integers(0, 50, rows),
            "cpu_work": rng.random(rows) * 1e5,
        }
    ).with_columns(pl.col("timestamp", "window_start").cast(pl.Datetime("ms", "UTC")))
    mts = start + np.arange(samples) * (WINDOW_MS // samples)
    measured = pl.DataFrame(
        {
            "timestamp": mts,
            "source": ["dc"] * samples,
            "power_draw": rng.random(samples) * 1e4,
            "energy_usage": rng.random(samples) * 1e5,
            "window_start": np.full(samples, start),
        }
    ).with_columns(pl.col("timestamp", "window_start").cast(pl.Datetime("ms", "UTC")))
    rec = WindowRecord(start, start + WINDOW_MS, "ok", rows, 40, 900, samples, 0, 0.01, 0.005, 1)
    return rec, agg.cast(AGG_SCHEMA), measured.cast(MEASURED_SCHEMA)


def _journal_row(rec: WindowRecord) -> pl.DataFrame:
    d = {k: v for k, v in vars(rec).items() if not k.endswith("_ms")}
    d["window_start"], d["window_end"] = rec.window_start_ms, rec.window_end_ms
    df = pl.DataFrame([d]).with_columns(pl.col("window_start", "window_end").cast(pl.Datetime("ms", "UTC")))
    return df.select(list(WINDOW_SCHEMA)).cast(WINDOW_SCHEMA)


class Rewrite:
    """The layout before: every file rewritten whole per window."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.agg = pl.DataFrame(schema=AGG_SCHEMA)
        self.measured = pl.DataFrame(schema=MEASURED_SCHEMA)
        self.windows = pl.DataFrame(schema=WINDOW_SCHEMA)

    async def commit(self, rec: WindowRecord, agg: pl.DataFrame, measured: pl.DataFrame) -> None:
        a = pl.concat([self.agg, agg])
        m = pl.concat([self.measured, measured])
        w = pl.concat([self.windows, _journal_row(rec)])
        await asyncio.to_thread(write_atomic, self.d / "agg_results.parquet", a.write_parquet)
        await asyncio.to_thread(write_atomic, self.d / "measured.parquet", m.write_parquet)
        await asyncio.to_thread(write_atomic, self.d / "windows.parquet", w.write_parquet)
        self.agg, self.measured, self.windows = a, m, w

    def read(self) -> int:
        return sum(pl.read_parquet(self.d / f).height for f in ("agg_results.parquet", "windows.parquet"))


class Parts:
    """One parquet file per table per window, the journal's last."""

    def __init__(self, d: Path) -> None:
        self.d = d
        for t in ("agg", "measured", "windows"):
            (d / t).mkdir()

    async def commit(self, rec: WindowRecord, agg: pl.DataFrame, measured: pl.DataFrame) -> None:
        name = f"{rec.window_start_ms}.parquet"

        def write() -> None:
            write_atomic(self.d / "agg" / name, agg.write_parquet)
            write_atomic(self.d / "measured" / name, measured.write_parquet)
            write_atomic(self.d / "windows" / name, _journal_row(rec).write_parquet)

        await asyncio.to_thread(write)

    def read(self) -> int:
        return sum(pl.read_parquet(self.d / t / "*.parquet").height for t in ("agg", "windows"))


class Log:
    """The twin's store (appended Arrow frames)."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.store = ResultStore(d)
        self.store.load()

    async def commit(self, rec: WindowRecord, agg: pl.DataFrame, measured: pl.DataFrame) -> None:
        await self.store.commit(rec, agg, measured)

    def read(self) -> int:
        store = ResultStore(self.d)
        store.load(writable=False)
        return store.agg.height + store.windows.height


Maker = Callable[[Path], Rewrite | Parts | Log]


def _size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


async def _run(
    make: Callable[[Path], Rewrite | Parts | Log], n: int, rows: int, samples: int
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="opendt-append-") as tmp:
        layout = make(Path(tmp))
        times: list[float] = []
        for i in range(n):
            rec, agg, measured = _window(i, rows, samples)
            t = time.perf_counter()
            await layout.commit(rec, agg, measured)
            times.append(time.perf_counter() - t)
        ages = [*range(0, n - 100, 1000), n - 100]
        per_age = {f"{a}-{a + 99}": round(statistics.median(times[a : a + 100]) * 1000, 3) for a in ages}
        t = time.perf_counter()
        count = layout.read()
        read_s = time.perf_counter() - t
        size = _size(Path(tmp))
    return {
        "median_ms_per_window_by_age": per_age,
        "last_over_first": round(per_age[f"{n - 100}-{n - 1}"] / per_age["0-99"], 2),
        "total_s": round(sum(times), 2),
        "read_back_s": round(read_s, 3),
        "rows_read": count,
        "disk_mb": round(size / 2**20, 2),
    }


async def _at_age(make: Maker, age: int, repeat: int, rows: int, samples: int) -> float:
    with tempfile.TemporaryDirectory(prefix="opendt-append-") as tmp:
        layout = make(Path(tmp))
        if isinstance(layout, Rewrite) and age:  # filled in memory, written once: the same files
            parts = [_window(i, rows, samples) for i in range(age)]
            layout.agg = pl.concat([a for _, a, _ in parts])
            layout.measured = pl.concat([m for _, _, m in parts])
            layout.windows = pl.concat([_journal_row(r) for r, _, _ in parts])
        else:
            for i in range(age):
                await layout.commit(*_window(i, rows, samples))
        times = []
        for i in range(age, age + repeat):
            rec, agg, measured = _window(i, rows, samples)
            t = time.perf_counter()
            await layout.commit(rec, agg, measured)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=8064)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--layouts", default="arrowlog,parts,rewrite")
    ap.add_argument("--ages", help="comma-separated run ages (windows): time per append at each")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    makers: dict[str, Callable[[Path], Rewrite | Parts | Log]] = {
        "rewrite": Rewrite,
        "parts": Parts,
        "arrowlog": Log,
    }
    if args.ages:
        for name in args.layouts.split(","):
            ages = [int(a) for a in args.ages.split(",")]
            ms = {
                a: round(asyncio.run(_at_age(makers[name], a, args.repeat, args.rows, args.samples)), 3)
                for a in ages
            }
            print(json.dumps({"layout": name, "median_ms_per_window_at_age": ms}), flush=True)
        return 0
    for name in args.layouts.split(","):
        out = asyncio.run(_run(makers[name], args.windows, args.rows, args.samples))
        print(json.dumps({"layout": name, "windows": args.windows, **out}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
