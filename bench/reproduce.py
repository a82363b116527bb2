"""Reproduce the paper's two experiments and draw their figures (``make reproduce``).

    .venv/bin/python bench/reproduce.py [--workload DIR] [--out reproduce] [--sequential] [--progress-s S]

The original OpenDT's capsule runs two experiments on SURF, about an hour each at 300× through Docker, then
draws four figures. Here, as real processes (the embedded broker, the replay through Kafka, the engine worker,
the calibrator's workers):

1. ``opendt run --speed max --exit-when-done`` without calibration → ``OUT/W/uncalibrated/runs/<id>/``;
2. the same with ``OPENDT_CALIBRATION__ENABLED=true`` (the default search space) → ``OUT/W/calibrated/…``;
3. ``opendt report OUT/W/uncalibrated OUT/W/calibrated --format png,svg,html`` → ``OUT/W/report/`` (every
   figure, ``report.html``, ``report.json``, ``data/*.csv``).

``W`` is the workload directory's name (``surf``, ``demo``): a reproduction replaces only the earlier results
of the same workload, and says so. While the experiments run, a line every ``--progress-s`` (10 s) tells how
far each is (from the ``progress`` lines of its log, ``OUT/W/<experiment>.log``).

Both experiments run at once (two daemons, each with its own broker and ports; ``--sequential`` runs them one
after the other). Only ``OPENDT_*`` variables set here reach the daemons, so the configuration is the
repository's. Printed and written to ``OUT/summary.json``: the wall time of each experiment, of the report and
of the whole, and the headline numbers (MAPE, energy error, energy, jobs) of both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SURF = ROOT / "data" / "surf"
EXPERIMENTS = {"uncalibrated": "false", "calibrated": "true"}


def _env(calibration: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update(
        {
            "OPENDT_API__PORT": "0",
            "OPENDT_LOG__FORMAT": "json",
            "OPENDT_LOG__LEVEL": "info",
            "OPENDT_CALIBRATION__ENABLED": calibration,
        }
    )
    return env


def _start(name: str, workload: Path, out: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "opendt", "run", "--workload", str(workload), "--data-dir", str(out / name)]
    cmd += ["--speed", "max", "--exit-when-done"]
    with (out / f"{name}.log").open("wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(EXPERIMENTS[name]), stdout=log, stderr=log)


def progress_of(log: Path) -> str:
    """How far an experiment is, from the newest ``progress`` line in the tail of its JSON log."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65_536))
            lines = f.read().splitlines()
    except OSError:
        return "starting"
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "progress":
            pct = event.get("percent")
            share = "" if pct is None else f"{pct:.1f} %, "
            return f"{share}{event.get('done')} windows"
    return "starting"


def _wait_all(
    procs: dict[str, subprocess.Popen[bytes]], t0: float, out: Path, every_s: float
) -> dict[str, float]:
    """Wait for every experiment, printing each one's progress every ``every_s`` and its end."""
    walls: dict[str, float] = {}
    last = time.monotonic()
    while len(walls) < len(procs):
        for name, proc in procs.items():
            if name in walls or proc.poll() is None:
                continue
            walls[name] = time.monotonic() - t0
            if proc.returncode != 0:
                raise SystemExit(f"experiment {name} exited {proc.returncode}; see {out / (name + '.log')}")
            print(f"reproduce: {name} done in {walls[name]:.1f} s", flush=True)
        now = time.monotonic()
        if now - last >= every_s and len(walls) < len(procs):
            last = now
            running = ", ".join(
                f"{name} {progress_of(out / (name + '.log'))}" for name in procs if name not in walls
            )
            print(f"reproduce: {now - t0:.0f} s: {running}", flush=True)
        time.sleep(0.2)
    return walls


def run_experiments(
    workload: Path, out: Path, *, sequential: bool, every_s: float = 10.0
) -> dict[str, float]:
    walls: dict[str, float] = {}
    if sequential:
        for name in EXPERIMENTS:
            walls |= _wait_all({name: _start(name, workload, out)}, time.monotonic(), out, every_s)
        return walls
    t0 = time.monotonic()
    procs = {name: _start(name, workload, out) for name in EXPERIMENTS}
    try:
        walls = _wait_all(procs, t0, out, every_s)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return walls


def run_report(out: Path, workload: Path, walls: dict[str, float]) -> float:
    cmd = [sys.executable, "-m", "opendt", "--log-level", "warning", "report"]
    cmd += [str(out / name) for name in EXPERIMENTS]
    cmd += ["--out", str(out / "report"), "--format", "png,svg,html", "--workload", str(workload)]
    for name in EXPERIMENTS:
        cmd += ["--label", name, "--wall-s", f"{walls[name]:.1f}"]
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, env=_env("false"), check=True)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", type=Path, default=SURF, help="workload directory (default: the SURF week)")
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "reproduce",
        help="output directory: the results go to OUT/<workload name>/ (replacing only those)",
    )
    ap.add_argument("--sequential", action="store_true", help="one experiment after the other")
    ap.add_argument("--progress-s", type=float, default=10.0, help="seconds between progress lines")
    args = ap.parse_args()
    if not (args.workload / "tasks.parquet").is_file():
        raise SystemExit(f"no workload at {args.workload} (give --workload DIR, e.g. data/demo)")
    out: Path = args.out.resolve() / args.workload.resolve().name.lower()
    if out.exists():
        print(f"reproduce: replacing the earlier results of {args.workload.name} in {out}", flush=True)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print(
        f"reproduce: {' and '.join(EXPERIMENTS)} on {args.workload} "
        f"({'one after the other' if args.sequential else 'at once'}), into {out}; logs in {out}/*.log",
        flush=True,
    )
    t0 = time.monotonic()
    walls = run_experiments(args.workload.resolve(), out, sequential=args.sequential, every_s=args.progress_s)
    t_exp = time.monotonic() - t0
    print("reproduce: drawing the report", flush=True)
    report_s = run_report(out, args.workload.resolve(), walls)
    total = time.monotonic() - t0
    manifest = json.loads((out / "report" / "report.json").read_text())
    keys = ("mape_pct", "energy_error_pct", "matched", "energy_kwh", "jobs", "windows", "calibration_rounds")
    summary: dict[str, Any] = {
        "workload": str(args.workload),
        "mode": "sequential" if args.sequential else "parallel",
        "experiments_wall_s": {k: round(v, 1) for k, v in walls.items()},
        "experiments_s": round(t_exp, 1),
        "report_s": round(report_s, 1),
        "total_s": round(total, 1),
        "runs": {r["label"]: {k: r[k] for k in keys} for r in manifest["runs"]},
        "report": str(out / "report" / "report.html"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
