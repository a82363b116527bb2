"""A stand-in simulator process for the pool tests: ``python fake_sim.py MODE [options]``.

Modes:

* ``exit CODE [--stderr-lines N] [--count FILE]``: print N numbered lines to stderr, append a line to FILE
  (so tests can count attempts), exit with CODE.
* ``hang --pidfile F [--grandchild] [--ignore-term]``: optionally start a grandchild that sleeps forever,
  write ``<own pid> [<grandchild pid>]`` to F atomically, then block forever.
* ``gate --id N --dir D [--order FILE]``: count itself into ``D/counter`` under flock (tracking the
  maximum concurrency in ``D/max``), create ``D/started-N``, wait until ``D/go-N`` or ``D/go-all`` exists,
  append N to FILE, uncount itself and exit 0.
* ``engine --experiment-path P``: act like OpenDC: read the experiment JSON and write powerSource.parquet
  (with a final-flush duplicate row), task.parquet, service.parquet and trackr.json.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _block_forever() -> None:
    while True:
        signal.pause()


def mode_exit(a: argparse.Namespace) -> int:
    if a.count:
        with open(a.count, "a") as f:
            f.write("attempt\n")
    for i in range(a.stderr_lines):
        sys.stderr.write(f"stderr line {i}\n")
    sys.stderr.flush()
    return int(a.code)


def mode_hang(a: argparse.Namespace) -> int:
    if a.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = [os.getpid()]
    if a.grandchild:
        gc = subprocess.Popen(
            [sys.executable, "-c", "import signal\nwhile True: signal.pause()"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pids.append(gc.pid)
    _atomic_write(Path(a.pidfile), " ".join(map(str, pids)))
    _block_forever()
    return 0


def _count(d: Path, delta: int) -> None:
    with open(d / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = d / "counter"
        n = int(counter.read_text()) if counter.exists() else 0
        n += delta
        counter.write_text(str(n))
        mx = d / "max"
        if n > (int(mx.read_text()) if mx.exists() else 0):
            mx.write_text(str(n))
        fcntl.flock(lock, fcntl.LOCK_UN)


def mode_gate(a: argparse.Namespace) -> int:
    d = Path(a.dir)
    _count(d, +1)
    (d / f"started-{a.id}").touch()
    while not ((d / f"go-{a.id}").exists() or (d / "go-all").exists()):
        time.sleep(0.005)
    if a.order:
        with open(a.order, "a") as f:
            f.write(f"{a.id}\n")
    _count(d, -1)
    return 0


def mode_engine(a: argparse.Namespace) -> int:
    exp = json.loads(Path(a.experiment_path).read_text())
    interval_ms = int(exp["exportModels"][0]["exportInterval"]) * 1000
    workload = Path(exp["workloads"][0]["pathToFile"])
    tasks = pq.read_table(workload / "tasks.parquet").to_pylist()
    origin = min(t["submission_time"] for t in tasks)
    out = Path(exp["outputFolder"]) / exp["name"] / "raw-output" / "0" / "seed=0"
    out.mkdir(parents=True, exist_ok=True)
    ts = [interval_ms, 2 * interval_ms, 3 * interval_ms, 3 * interval_ms]  # last instant: final flush
    energy = [100.0 * interval_ms / 1000] * 3 + [0.0]
    f32 = pa.float32()
    power = pa.table(
        {
            "timestamp": pa.array(ts, pa.int64()),
            "timestamp_absolute": pa.array([t + origin for t in ts], pa.int64()),
            "source_name": ["PowerSource"] * 4,
            "cluster_name": ["C01"] * 4,
            "power_draw": pa.array([100.0] * 4, f32),
            "energy_usage": pa.array(energy, f32),
            "carbon_intensity": pa.array([0.0] * 4, f32),
            "carbon_emission": pa.array([0.0] * 4, f32),
        }
    )
    pq.write_table(power, out / "powerSource.parquet")
    task = pa.table(
        {
            "timestamp": pa.array([interval_ms] * len(tasks), pa.int64()),
            "timestamp_absolute": pa.array([interval_ms + origin] * len(tasks), pa.int64()),
            "task_id": pa.array([t["id"] for t in tasks], pa.int32()),
            "cpu_usage": pa.array([1.0] * len(tasks), f32),
        }
    )
    pq.write_table(task, out / "task.parquet")
    service = pa.table(
        {
            "timestamp": pa.array(ts, pa.int64()),
            "timestamp_absolute": pa.array([t + origin for t in ts], pa.int64()),
            "tasks_total": pa.array([len(tasks)] * 4, pa.int32()),
        }
    )
    pq.write_table(service, out / "service.parquet")
    (out.parent.parent.parent / "trackr.json").write_text(json.dumps([{"name": exp["name"]}]))
    sys.stderr.write("Simulating... 100%\n")
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("exit")
    e.add_argument("code")
    e.add_argument("--stderr-lines", type=int, default=0)
    e.add_argument("--count")
    h = sub.add_parser("hang")
    h.add_argument("--pidfile", required=True)
    h.add_argument("--grandchild", action="store_true")
    h.add_argument("--ignore-term", action="store_true")
    g = sub.add_parser("gate")
    g.add_argument("--id", required=True)
    g.add_argument("--dir", required=True)
    g.add_argument("--order")
    n = sub.add_parser("engine")
    n.add_argument("--experiment-path", required=True)
    a = p.parse_args()
    return {"exit": mode_exit, "hang": mode_hang, "gate": mode_gate, "engine": mode_engine}[a.mode](a)


if __name__ == "__main__":
    raise SystemExit(main())
