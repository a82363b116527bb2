"""Benchmark ``opendt report``: the time to draw the figures of runs (default: those of ``make reproduce``).

    .venv/bin/python bench/report.py [RUN ...] [--workload DIR] [--repeat 3] [--format png,svg,html]

Prints, over ``--repeat`` runs: the cold command (``opendt report`` as a process: imports, reading the run
files, every figure, the HTML) and, in process, the time to read the runs, to draw the figures and to render
and write them, with the median and the range; then the rows and points the figures hold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SURF = ROOT / "data" / "surf"

from opendt.report import build_report, load_runs  # noqa: E402


def _stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "runs", nargs="*", type=Path, default=[ROOT / "reproduce" / n for n in ("uncalibrated", "calibrated")]
    )
    ap.add_argument("--workload", type=Path, default=SURF if SURF.is_dir() else None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--format", default="png,svg,html")
    args = ap.parse_args()
    formats = tuple(args.format.split(","))
    cold, load, draw, save = [], [], [], []
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    runs: list[Any] = []
    report: Any = None
    with tempfile.TemporaryDirectory(prefix="opendt-bench-report-") as td:
        for k in range(args.repeat):
            cmd = [sys.executable, "-m", "opendt", "--log-level", "warning", "report", *map(str, args.runs)]
            cmd += ["--out", f"{td}/cold{k}", "--format", args.format]
            cmd += ["--workload", str(args.workload)] if args.workload else []
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            runs = load_runs(args.runs, workload=args.workload)
            load.append(time.perf_counter() - t0)
            report = build_report(runs, Path(td) / f"warm{k}", formats)
            draw.append(report.seconds["draw_s"])
            save.append(report.seconds["save_s"])
    out = {
        "runs": [f"{r.label}: {r.run_id} ({r.windows.height} windows, {r.agg.height} rows)" for r in runs],
        "formats": args.format,
        "cold_command": _stats(cold),
        "read_runs": _stats(load),
        "draw_figures": _stats(draw),
        "render_and_write": _stats(save),
        "points": {f["name"]: f["points"] for f in report.manifest["figures"]},
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
