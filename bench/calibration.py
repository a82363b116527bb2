"""Benchmark the online calibrator over a whole trace (default: the SURF week), with the default search space.

    .venv/bin/python bench/calibration.py [--workload DIR] [--offline] [--keep DIR]

Default: the daemon as a real process, ``OPENDT_CALIBRATION__ENABLED=true opendt run --speed max
--exit-when-done`` (embedded broker, replay, twin worker, calibrator with its candidate workers). With
``--offline``: ``opendt calibrate`` (same calibrator and simulator, windows cut from the workload, no Kafka).
``OPENDT_CALIBRATION__*`` variables in the environment are passed on (e.g. another search space).

Reported: wall time of the whole run; rounds, candidates per round, round duration; per UTC day the calibrated
vs uncalibrated MAPE (the physical topology throughout, same causal engine, same instants) and the parameter
changes; MAPE of the twin's
prediction (its 150 s ``power_draw`` rows) vs the measured power at the same instants over the whole trace —
every prediction at t uses only topologies chosen from data before t; the window latency p95 overall and
during rounds (the windows starting in [R, R + apply_delay] of a round at R: the round runs while those are
simulated and is over by the last one's start); the time the twin waited at apply gates; the calibrated
values over time (min / median / max per axis).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from logs import events  # bench/logs.py, beside this script

from opendt.twin.tables import AGG, read_journal, read_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SURF = ROOT / "data" / "surf"

from opendt.calibration.journal import from_frame  # noqa: E402
from opendt.commands.calibrate import (  # noqa: E402
    calibrate_offline,
    daily_mape,
    during_rounds,
    prediction_mape,
    uncalibrated_rows,
)
from opendt.settings import load_settings  # noqa: E402
from opendt.workload import load_workload  # noqa: E402


def run_daemon(workload: Path, tmp: Path) -> tuple[Path, float, float]:
    """(run dir, wall s, gate wait s) of ``opendt run`` with calibration on."""
    keep = ("OPENDT_CALIBRATION__", "OPENDT_SIMULATION__")  # let the caller vary the calibrator
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_") or k.startswith(keep)}
    env.update({"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json", "OPENDT_CALIBRATION__ENABLED": "true"})
    cmd = [
        sys.executable,
        "-m",
        "opendt",
        "run",
        "--workload",
        str(workload),
        "--data-dir",
        str(tmp / "data"),
    ]
    log_path = tmp / "daemon.log"
    t0 = time.monotonic()
    with log_path.open("wb") as log:
        rc = subprocess.run(
            [*cmd, "--speed", "max", "--exit-when-done"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            check=False,
        ).returncode
    wall = time.monotonic() - t0
    if rc != 0:
        raise SystemExit(f"opendt run exited {rc}; see {log_path}")
    [run] = list((tmp / "data" / "runs").iterdir())
    gate = sum(e["waited_s"] for e in events(log_path, "calibration_gate_waited"))
    return run, wall, gate


def run_offline(workload: Path, tmp: Path) -> tuple[Path, float, float]:
    settings = load_settings()
    t0 = time.monotonic()
    result = asyncio.run(calibrate_offline(workload, settings, out=tmp / "run"))
    return result.run_dir, time.monotonic() - t0, result.gate_wait_s


def _p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95)) if xs else float("nan")


def _num(value: object) -> float:
    """A polars aggregate as a float (0 when there was nothing to aggregate)."""
    return float(value) if isinstance(value, int | float) else 0.0


def report(workload: Path, run: Path, wall: float, gate: float) -> dict[str, Any]:
    wl = load_workload(workload)
    windows = read_journal(run)
    agg = read_rows(run, AGG, windows)
    assert windows is not None
    assert agg is not None
    rounds = pl.read_parquet(run / "calibration.parquet")
    mape, matched = prediction_mape(agg, wl.consumption)
    uncal = uncalibrated_rows(
        wl, int(agg["timestamp"].dt.epoch("ms").diff().drop_nulls().to_numpy().min(initial=150_000))
    )
    unc_mape, _ = prediction_mape(uncal, wl.consumption)
    days = daily_mape(agg, uncal, wl.consumption, from_frame(rounds))
    delay_ms = int((rounds["apply_at"] - rounds["time"]).dt.total_milliseconds().to_numpy().max(initial=0))
    from opendt.calibration.journal import RoundRecord

    recs = [
        RoundRecord(int(r), int(t), 0, 0, "", "", "")
        for r, t in zip(rounds["round"], rounds["time"].dt.epoch("ms"), strict=True)
    ]
    during = during_rounds(windows, recs, delay_ms)
    scored = rounds.filter(pl.col("status") != "skipped")
    axes: dict[str, list[float]] = {}
    for doc in rounds["in_effect"].to_list():
        for k, v in json.loads(doc).items():
            axes.setdefault(k, []).append(float(v))
    return {
        "workload": str(workload),
        "wall_s": round(wall, 1),
        "windows": windows.height,
        "failed_windows": int((windows["status"] != "ok").sum()),
        "rounds": rounds.height,
        "rounds_applied": int((rounds["status"] == "applied").sum()),
        "rounds_skipped": int((rounds["status"] == "skipped").sum()),
        "candidates_per_round": round(_num(scored["candidates"].mean()), 1),
        "failed_candidates": int(rounds["failed"].sum()),
        "round_duration_s_median": round(_num(scored["duration_s"].median()), 3),
        "round_duration_s_max": round(_num(scored["duration_s"].max()), 3),
        "mape_pct": round(mape, 3),
        "mape_uncalibrated_pct": round(unc_mape, 3),
        "matched_instants": matched,
        "days": days,
        "worse_days": [d["day"] for d in days if d["calibrated"] > d["uncalibrated"]],
        "changes_per_day": [d["changes"] for d in days],
        "window_latency_p50_s": round(_num(windows["latency_s"].median()), 4),
        "window_latency_p95_s": round(_p95(windows["latency_s"].to_list()), 4),
        "window_latency_p95_during_rounds_s": round(_p95(during), 4),
        "windows_during_rounds": len(during),
        "gate_wait_s": round(gate, 2),
        "values": {k: (min(v), statistics.median(v), max(v)) for k, v in axes.items()},
        "run_dir": str(run),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", type=Path, default=SURF if SURF.is_dir() else ROOT / "data" / "demo")
    ap.add_argument("--offline", action="store_true", help="opendt calibrate instead of the daemon")
    ap.add_argument("--keep", type=Path, help="keep the run under DIR (default: a temp dir, removed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="opendt-bench-cal-") as td:
        tmp = args.keep or Path(td)
        tmp.mkdir(parents=True, exist_ok=True)
        run, wall, gate = (run_offline if args.offline else run_daemon)(args.workload, tmp)
        out = report(args.workload, run, wall, gate)
    out["path"] = "offline (opendt calibrate)" if args.offline else "daemon (opendt run --speed max)"
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
