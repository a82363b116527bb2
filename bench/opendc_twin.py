"""Benchmark the twin on the OpenDC binary (``simulation.engine: opendc``, issue 16): its cost per simulated
day, against the builtin twin on the same trace.

    .venv/bin/python bench/opendc_twin.py [--workload DIR] [--bin PATH] [--every 12 [--every 48 ...]]
                                          [--hours H] [--skip-builtin]

Each run is ``opendt run --speed max --exit-when-done`` as a real process (its own embedded broker) on the
workload, with ``simulation.engine: opendc``, ``simulation.opendc_every_windows`` = each ``--every``; the
binary is ``--bin`` (a real OpenDCExperimentRunner, with JAVA_HOME from the environment) or, by default, the
honest stand-in of the tests (our engine behind OpenDC's CLI, float64 output). Printed per run: wall time,
wall seconds per simulated day, OpenDC runs and their total wall time (from the ``opendc_run`` log lines),
the last run's tasks and fragments (the cumulative input), the peak RSS of the process tree, and the max
relative difference of power, energy and carbon from the builtin twin's results.
``--hours`` cuts the trace (a shorter workload copy: the tasks submitted in its first H hours).

The SURF week (data/surf) is the default when present, else the demo workload (data/demo).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import psutil

from opendt.twin.tables import AGG, read_journal, read_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.opendc_standin import write_standin  # noqa: E402 - the repository root is on the path now

SURF = ROOT / "data" / "surf"
DEMO = ROOT / "data" / "demo"
MB = 1024 * 1024
COLUMNS = ("power_draw", "energy_usage", "carbon_emission")


def cut_workload(src: Path, hours: float, dst: Path) -> Path:
    """A copy of ``src`` with the tasks submitted in its first ``hours`` (and their fragments)."""
    dst.mkdir(parents=True, exist_ok=True)
    tasks = pl.read_parquet(src / "tasks.parquet")
    t0 = tasks["submission_time"].min()
    keep = tasks.filter(pl.col("submission_time") < t0 + pl.duration(seconds=int(hours * 3600)))
    keep.write_parquet(dst / "tasks.parquet")
    frags = pl.read_parquet(src / "fragments.parquet")
    frags.join(keep.select("id"), on="id", how="semi").write_parquet(dst / "fragments.parquet")
    for f in src.iterdir():
        if f.name not in ("tasks.parquet", "fragments.parquet") and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    return dst


@dataclass
class Result:
    wall_s: float
    windows: int
    days: float
    failed: int
    runs: int
    runs_s: float
    engine_s: float
    last_tasks: int
    last_fragments: int
    peak_mb: float
    agg: pl.DataFrame


def run(workload: Path, data: Path, env_extra: dict[str, str]) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_LOG__FORMAT": "json", **env_extra})
    args = [sys.executable, "-m", "opendt", "run", "--workload", str(workload), "--speed", "max"]
    args += ["--exit-when-done", "--data-dir", str(data), "--port", "0"]
    data.mkdir(parents=True, exist_ok=True)
    log = data / "stderr.log"
    t0 = time.monotonic()
    with log.open("w") as sink:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=sink)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
            time.sleep(0.2)
    wall = time.monotonic() - t0
    err = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"opendt run failed ({proc.returncode}): {err[-2000:]}")
    runs = [json.loads(x) for x in err.splitlines() if '"event": "opendc_run"' in x]
    (run_dir,) = (data / "runs").iterdir()
    windows = read_journal(run_dir)
    agg = read_rows(run_dir, AGG, windows)
    assert windows is not None
    assert agg is not None
    return Result(
        wall_s=wall,
        windows=windows.height,
        days=windows.height * 300 / 86400,
        failed=int((windows["status"] != "ok").sum()),
        runs=len(runs),
        runs_s=sum(r["seconds"] for r in runs),
        engine_s=sum(r.get("engine_s") or 0.0 for r in runs),
        last_tasks=runs[-1]["tasks"] if runs else 0,
        last_fragments=runs[-1]["fragments"] if runs else 0,
        peak_mb=peak / MB,
        agg=agg,
    )


def max_rel(got: pl.DataFrame, ref: pl.DataFrame) -> float:
    j = got.join(ref, on="timestamp", how="full", suffix="_ref")
    worst = 0.0
    for c in COLUMNS:
        rel = ((j[c] - j[f"{c}_ref"]).abs() / j[f"{c}_ref"].abs().clip(lower_bound=1e-9)).fill_null(1.0).max()
        worst = max(worst, float(rel))  # type: ignore[arg-type]
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", type=Path, default=SURF if SURF.exists() else DEMO)
    ap.add_argument(
        "--bin", type=Path, default=None, help="a real OpenDCExperimentRunner (default: stand-in)"
    )
    ap.add_argument("--every", type=int, action="append", default=None)
    ap.add_argument("--hours", type=float, default=None)
    ap.add_argument("--skip-builtin", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="opendc-twin-") as tmp:
        t = Path(tmp)
        workload = a.workload if a.hours is None else cut_workload(a.workload, a.hours, t / "wl")
        binary = a.bin or write_standin(t / "bin")
        print(f"workload {a.workload}{'' if a.hours is None else f' (first {a.hours:g} h)'}; binary {binary}")
        ref = None
        if not a.skip_builtin:
            b = run(workload, t / "builtin", {})
            ref = b.agg
            print(
                f"builtin twin: {b.wall_s:.1f} s wall for {b.windows} windows ({b.days:.2f} days): "
                f"{b.wall_s / b.days:.1f} s per simulated day, peak tree RSS {b.peak_mb:.0f} MB",
                flush=True,
            )
        for every in a.every or [12]:
            env = {
                "OPENDT_SIMULATION__ENGINE": "opendc",
                "OPENDT_SIMULATION__OPENDC_BIN": str(binary),
                "OPENDT_SIMULATION__OPENDC_EVERY_WINDOWS": str(every),
                "OPENDT_SIMULATION__TIMEOUT_S": "1800",
            }
            r = run(workload, t / f"opendc-{every}", env)
            diff = "" if ref is None else f", max rel diff from builtin {max_rel(r.agg, ref):.3g}"
            print(
                f"opendc every {every}: {r.wall_s:.1f} s wall for {r.windows} windows ({r.days:.2f} days, "
                f"{r.failed} failed): {r.wall_s / r.days:.1f} s per simulated day; {r.runs} OpenDC runs, "
                f"{r.runs_s:.1f} s in runs ({r.engine_s:.1f} s in the binary); last run {r.last_tasks} "
                f"tasks / {r.last_fragments} fragments; peak tree RSS {r.peak_mb:.0f} MB{diff}",
                flush=True,
            )


if __name__ == "__main__":
    main()
