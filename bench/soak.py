"""Soak: a multi-week trace through the daemon at ``--speed max``; memory and disk per week must not grow.

    .venv/bin/python bench/soak.py [--weeks 4] [--calibration] [--keep DIR]

The trace is SURF repeated ``--weeks`` times, each copy shifted by a week (task ids suffixed per copy; the
measured power shifted with it; SURF's carbon trace already covers the year). `opendt run` runs it as a real
process with its embedded broker; at the end of each trace week (every 2,016 durable 300 s windows) the
bench samples the resident memory of the daemon and of its engine worker, and the run directory's size on
disk (split into the input store, the checkpoints and the rest), and the CPU time the daemon and its engine
worker spent in the week. The issue's bounds: the daemon's RSS at the end of week 4 ≤ 1.1 × its RSS at the end
of week 1; a window's cost must not grow with the run's age: the median window latency (the journal's
``latency_s``) of the last week and the daemon's CPU per window of the last week ≤ 1.2 × those of week 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psutil

from opendt.twin.tables import journal_windows, read_journal

ROOT = Path(__file__).resolve().parents[1]
SURF = ROOT / "data" / "surf"
WEEK_MS = 7 * 86_400_000
WINDOWS_PER_WEEK = WEEK_MS // 300_000
MB = 1024 * 1024


def make_trace(src: Path, dst: Path, weeks: int) -> Path:
    """SURF repeated ``weeks`` times, copy k shifted by k weeks."""
    dst.mkdir(parents=True, exist_ok=True)
    tasks = pl.read_parquet(src / "tasks.parquet")
    frags = pl.read_parquet(src / "fragments.parquet")
    cons = pl.read_parquet(src / "consumption.parquet")

    def copy(df: pl.DataFrame, k: int, time_col: str | None, shift: Any) -> pl.DataFrame:
        out = df
        if "id" in df.columns and k:
            out = out.with_columns((pl.col("id").cast(pl.Utf8) + f"-w{k}").alias("id"))
        if time_col is not None:
            out = out.with_columns((pl.col(time_col) + shift).alias(time_col))
        return out

    pl.concat(
        [copy(tasks, k, "submission_time", pl.duration(milliseconds=k * WEEK_MS)) for k in range(weeks)]
    ).write_parquet(dst / "tasks.parquet")
    pl.concat([copy(frags, k, None, None) for k in range(weeks)]).write_parquet(dst / "fragments.parquet")
    pl.concat([copy(cons, k, "timestamp", k * WEEK_MS) for k in range(weeks)]).write_parquet(
        dst / "consumption.parquet"
    )
    for name in ("carbon.parquet", "topology.json"):
        shutil.copy(src / name, dst / name)
    (dst / "workload.yaml").write_text(
        (src / "workload.yaml").read_text().replace('name: "SURF"', f'name: "SURF{weeks}w"')
    )
    return dst


def _size(path: Path) -> int:
    """Bytes under ``path`` (files the daemon removes meanwhile, a pruned checkpoint, are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except FileNotFoundError:
                continue
    return total


def _journal(run: Path) -> pl.DataFrame | None:
    """The run's window journal as far as it is durable (None before the first window)."""
    try:
        return read_journal(run)
    except (OSError, ValueError):
        return None


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _per_week(journal: pl.DataFrame, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trace week: the median and p90 window latency (journal) and the CPU seconds per window of the
    daemon and of its engine worker(s) (sampled at the week's end)."""
    lat = journal.sort("window_start")["latency_s"].to_numpy()
    out = []
    prev = {"daemon_cpu_s": 0.0, "worker_cpu_s": 0.0, "windows": 0}
    for row in rows:
        k = row["week"]
        week = lat[(k - 1) * WINDOWS_PER_WEEK : k * WINDOWS_PER_WEEK]
        n = row["windows"] - prev["windows"]
        out.append(
            {
                "week": k,
                "latency_median_ms": round(float(np.median(week)) * 1000, 2),
                "latency_p90_ms": round(float(np.quantile(week, 0.9)) * 1000, 2),
                "daemon_cpu_ms_per_window": round((row["daemon_cpu_s"] - prev["daemon_cpu_s"]) / n * 1000, 2),
                "worker_cpu_ms_per_window": round((row["worker_cpu_s"] - prev["worker_cpu_s"]) / n * 1000, 2),
            }
        )
        prev = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weeks", type=int, default=4)
    ap.add_argument("--calibration", action="store_true", help="calibration.enabled (the issue's soak)")
    ap.add_argument("--keep", type=Path, help="work in DIR and keep it")
    args = ap.parse_args()
    if not SURF.is_dir():
        print(f"SURF not found at {SURF} (skipping)")
        return 0
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="opendt-soak-"))
    trace = make_trace(SURF, tmp / "trace", args.weeks)
    data = tmp / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json"})
    if args.calibration:
        env["OPENDT_CALIBRATION__ENABLED"] = "true"
    cmd = [sys.executable, "-m", "opendt", "run", "--workload", str(trace), "--speed", "max"]
    cmd += ["--exit-when-done", "--data-dir", str(data)]
    log = (tmp / "daemon.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    daemon = psutil.Process(proc.pid)
    rows: list[dict[str, Any]] = []
    peak = 0
    week = 1
    worker_cpu = 0.0
    run: Path | None = None
    while proc.poll() is None:
        time.sleep(1)
        try:
            rss = daemon.memory_info().rss
            workers = [c for c in daemon.children(recursive=True) if "opendt.worker" in " ".join(c.cmdline())]
            worker_rss = sum(c.memory_info().rss for c in workers)
            daemon_cpu = _cpu_s(daemon)
            worker_cpu = sum(_cpu_s(c) for c in workers) if workers else worker_cpu  # exited: the last
        except psutil.NoSuchProcess:
            break
        peak = max(peak, rss)
        if run is None and (data / "runs").is_dir():
            run = next((d for d in (data / "runs").iterdir() if d.is_dir()), None)
        if run is None:
            continue
        done = journal_windows(run)
        while done >= week * WINDOWS_PER_WEEK and week <= args.weeks:
            row = {
                "week": week,
                "windows": done,
                "wall_s": round(time.monotonic() - t0, 1),
                "daemon_rss_mb": round(rss / MB, 1),
                "daemon_peak_rss_mb": round(peak / MB, 1),
                "worker_rss_mb": round(worker_rss / MB, 1),
                "disk_mb": round(_size(run) / MB, 1),
                "inputs_mb": round(_size(run / "inputs") / MB, 1),
                "checkpoints_mb": round(_size(run / "checkpoints") / MB, 1),
                "daemon_cpu_s": round(daemon_cpu, 2),
                "worker_cpu_s": round(worker_cpu, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            week += 1
    code = proc.wait()
    log.close()
    journal = _journal(run) if run is not None else None
    weeks = _per_week(journal, rows) if journal is not None and rows else []
    for w in weeks:
        print(json.dumps(w), flush=True)
    out = {
        "weeks": args.weeks,
        "calibration": args.calibration,
        "exit": code,
        "wall_s": round(time.monotonic() - t0, 1),
        "per_week": rows,
        "rss_week_last_over_first": round(rows[-1]["daemon_rss_mb"] / rows[0]["daemon_rss_mb"], 3)
        if rows
        else None,
        "per_week_cost": weeks,
        "latency_week_last_over_first": round(
            weeks[-1]["latency_median_ms"] / weeks[0]["latency_median_ms"], 3
        )
        if weeks
        else None,
        "daemon_cpu_week_last_over_first": round(
            weeks[-1]["daemon_cpu_ms_per_window"] / weeks[0]["daemon_cpu_ms_per_window"], 3
        )
        if weeks
        else None,
        "dir": str(tmp),
    }
    print(json.dumps(out, indent=1))
    if args.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
