"""Bench: load the SURF workload (tasks + 2.3M fragments + fragment-time synthesis) with opendt.workload.

Usage: .venv/bin/python bench/workload_load.py [WORKLOAD_DIR] [--repeat N]
Prints the median and min wall time of ``load_workload`` (in-process, after one warm-up), and the time of a
cold ``python -c 'load_workload(...)'`` process including imports.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SURF = REPO / "data" / "surf"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("workload", nargs="?", type=Path, default=SURF)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not (args.workload / "tasks.parquet").exists():
        print(f"workload not found: {args.workload} (skipping)")
        return 0
    sys.path.insert(0, str(REPO))
    from opendt.workload import load_workload

    w = load_workload(args.workload)  # warm-up: page cache, polars thread pool
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        w = load_workload(args.workload)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from opendt.workload import load_workload; load_workload({str(args.workload)!r})",
        ],
        check=True,
        cwd=REPO,
    )
    cold = time.perf_counter() - t0
    print(f"workload: {args.workload}")
    print(
        f"tasks: {w.tasks.height:,}  fragments: {w.fragments.height:,}  power samples: "
        f"{0 if w.consumption is None else w.consumption.height:,}"
    )
    print(
        f"load_workload (tasks+fragments+synthesis+power+carbon+topology), {args.repeat} runs: "
        f"median {statistics.median(times):.3f} s, min {min(times):.3f} s"
    )
    print(f"cold process incl. imports: {cold:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
