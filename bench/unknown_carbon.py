"""What keeping unknown emissions unknown (issue 24) costs the twin's engine.

    .venv/bin/python bench/unknown_carbon.py [--workload DIR] [--window-s 300] [--repeat 3]

The workload (default: the SURF week) is cut into the twin's windows and advanced window by window through an
in-process :class:`~opendt.engine.Engine` (export every 150 s), three ways: OpenDC's semantics with the whole
carbon trace (``unknown_carbon`` off), the twin's (on) with the same trace, and the twin's with no carbon feed
at all (every emission unknown). Printed: wall time per run, the medians, and the rows with an unknown
emission in each.
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
    cases = {
        "opendc_semantics": (carbon, False),
        "twin_with_carbon": (carbon, True),
        "twin_no_carbon": (None, True),
    }
    walls: dict[str, list[float]] = {k: [] for k in cases}
    unknown: dict[str, int] = {}
    for _ in range(args.repeat):
        for name, (trace, flag) in cases.items():
            eng = Engine(wl.topology, export_interval_ms=150_000, carbon=trace, unknown_carbon=flag)
            t0 = time.perf_counter()
            out = [
                eng.advance((k + 1) * w, by_t.get(k, empty_t), by_f.get(k, empty_f))
                for k in range(lo, hi + 1)
            ]
            out.append(eng.finish())
            walls[name].append(time.perf_counter() - t0)
            unknown[name] = int(pl.concat(out)["carbon_emission"].is_nan().sum())
    print(
        json.dumps(
            {
                "workload": str(args.workload),
                "windows": hi - lo + 1,
                **{f"{k}_s": [round(x, 2) for x in v] for k, v in walls.items()},
                **{f"median_{k}_s": round(statistics.median(v), 2) for k, v in walls.items()},
                "rows_unknown_emission": unknown,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
