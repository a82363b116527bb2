"""What the per-interval activity columns (``tasks_completed``, ``cpu_work``) cost the twin's engine.

    .venv/bin/python bench/activity.py [--workload DIR] [--window-s 300] [--repeat 3]

The workload (default: the SURF week) is cut into the twin's windows and advanced window by window through an
in-process :class:`~opendt.engine.Engine` (export every 150 s, carbon on), alternately with the activity
columns (the twin's engine) and without (OpenDC's one-shot runs); printed: wall time per run, the medians,
the rows, and the completed tasks (Σ ``tasks_completed``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SURF = ROOT / "data" / "surf"

from opendt.engine import Engine  # noqa: E402
from opendt.workload import load_workload  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", type=Path, default=SURF if SURF.is_dir() else ROOT / "data" / "demo")
    ap.add_argument("--window-s", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    wl = load_workload(args.workload)
    carbon = None if wl.carbon is None else wl.carbon.rename({"timestamp_ms": "timestamp"})
    w = args.window_s * 1000
    by_t, by_f = (
        {k[0]: v.drop("_w") for k, v in df.with_columns((pl.col("submission_ms") // w).alias("_w"))
         .partition_by("_w", as_dict=True).items()}
        for df in (wl.tasks, wl.fragments)
    )  # fmt: skip
    lo, hi = min(by_t), max(by_f)
    empty_t, empty_f = wl.tasks.clear(), wl.fragments.clear()
    walls: dict[bool, list[float]] = {True: [], False: []}
    rows = jobs = 0
    for _ in range(args.repeat):
        for activity in (True, False):
            eng = Engine(wl.topology, export_interval_ms=150_000, carbon=carbon, activity=activity)
            t0 = time.perf_counter()
            out = [
                eng.advance((k + 1) * w, by_t.get(k, empty_t), by_f.get(k, empty_f))
                for k in range(lo, hi + 1)
            ]
            out.append(eng.finish())
            walls[activity].append(time.perf_counter() - t0)
            if activity:
                done = pl.concat(out)
                rows, jobs = done.height, int(done["tasks_completed"].sum())
    print(
        json.dumps(
            {
                "workload": str(args.workload),
                "windows": hi - lo + 1,
                "with_activity_s": [round(x, 2) for x in walls[True]],
                "without_s": [round(x, 2) for x in walls[False]],
                "median_with_s": round(statistics.median(walls[True]), 2),
                "median_without_s": round(statistics.median(walls[False]), 2),
                "rows_per_cluster_and_instant": rows,
                "tasks_completed": jobs,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
