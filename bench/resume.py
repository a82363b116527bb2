"""Resume after kill -9: SURF at ``--speed max`` killed at day 5, restarted; how soon is a new window made?

    .venv/bin/python bench/resume.py [--day 5] [--workload DIR] [--repeat 2]

`opendt run` (embedded broker) as a real process is SIGKILLed once ``--day`` days of 300 s windows are
durable; the same command is started again and the bench reports the time from that restart to the first
window made durable after it, the restart's ``resumed`` event (checkpoint, windows replayed from the input
store, seconds) and the replay producer's start. Before the live-twin work the restarted twin replayed the
whole trace first (days of windows through the engine).
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

from opendt.twin.tables import read_journal

ROOT = Path(__file__).resolve().parents[1]
SURF = ROOT / "data" / "surf"


def _windows(data: Path) -> int:
    for d in (data / "runs").glob("*"):
        try:
            journal = read_journal(d)
        except (OSError, ValueError):
            return 0
        return 0 if journal is None else journal.height
    return 0


def _start(workload: Path, data: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json"})
    cmd = [sys.executable, "-m", "opendt", "run", "--workload", str(workload), "--speed", "max"]
    return subprocess.Popen(
        [*cmd, "--data-dir", str(data)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w")
    )


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == name:
            out.append(rec)
    return out


def once(workload: Path, day: float, tmp: Path) -> dict[str, Any]:
    data = tmp / "data"
    target = int(day * 288)
    first = _start(workload, data, tmp / "first.log")
    t0 = time.monotonic()
    while _windows(data) < target:
        if first.poll() is not None:
            raise SystemExit(f"the daemon exited {first.returncode}; see {tmp / 'first.log'}")
        time.sleep(0.05)
    first.kill()
    first.wait()
    killed_at = _windows(data)
    reached_s = time.monotonic() - t0
    t1 = time.monotonic()
    second = _start(workload, data, tmp / "second.log")
    while _windows(data) <= killed_at:
        if second.poll() is not None:
            raise SystemExit(f"the restart exited {second.returncode}; see {tmp / 'second.log'}")
        time.sleep(0.01)
    first_new_s = time.monotonic() - t1
    second.terminate()
    second.wait(60)
    [resumed] = _events(tmp / "second.log", "resumed")
    return {
        "killed_after_windows": killed_at,
        "first_run_to_kill_s": round(reached_s, 1),
        "restart_to_first_new_window_s": round(first_new_s, 2),
        "resumed_from_checkpoint_ms": resumed["checkpoint_ms"],
        "windows_replayed_from_store": resumed["windows_replayed"],
        "resume_s": resumed["seconds"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", type=Path, default=SURF)
    ap.add_argument("--day", type=float, default=5)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if not (args.workload / "tasks.parquet").exists():
        print(f"workload not found: {args.workload} (skipping)")
        return 0
    for _ in range(args.repeat):
        tmp = Path(tempfile.mkdtemp(prefix="opendt-resume-"))
        try:
            print(json.dumps(once(args.workload, args.day, tmp)), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
