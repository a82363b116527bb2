"""What a topology's size costs the engine: the measurements behind ``MAX_HOSTS``, ``MAX_CLUSTERS`` and
``HOST_BYTES`` (:mod:`opendt.models.bounds`), and the growth exponent of every step in the hosts.

Usage: ``.venv/bin/python bench/topology_size.py [--hosts 1000,10000,100000] [--clusters 1,10,100,1000]
[--memory 1000000]``

For n hosts (one host group of 16-core hosts, the SURF shape), each step is timed once:

* table: the engine's host table (``build_hosts``: OpenDC's unique names, the per-host arrays);
* engine: a new ``Engine`` (host table, scheduler and its placement index);
* run: two hours of a synthetic workload that keeps every host busy (2n tasks of 16 cores, 30 min each,
  submitted over the first hour, six 5-minute fragments each), window by window (300 s): placement, the
  demand segments and the per-instant export;
* apply: ``set_topology`` of the same hosts with another power model (what a calibration applies) and of
  a topology without the last host group's last 10 % of hosts (a structural change: migration);
* snapshot: the checkpoint of the engine after the run (``opendt.worker.warm.snapshot``: time, bytes) and
  its load; what-if set-up: a clone of the engine (``Engine.clone``) and a set_topology on the clone.

The exponent of each step is log(t₂/t₁)/log(n₂/n₁) between the two largest sizes (1: linear).
clusters: the demo day's first two hours, window by window (300 s), on n clusters of two hosts each
(every cluster exports its own rows): median and max seconds per window.
``--memory N``: the RSS an engine of N hosts adds, per host (a child process, so nothing else is counted).

The machine may be shared: the load average is printed with every row.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from opendt.engine.engine import Engine
from opendt.engine.hosts import build_hosts
from opendt.engine.topology import DEFAULT_POWER_MODEL, ClusterSpec, HostSpec, TopoSpec
from opendt.models.topology import Cluster, Topology
from opendt.settings import REPO_ROOT
from opendt.worker.warm import load_snapshot, snapshot
from opendt.workload import load_workload

WINDOW_MS = 300_000
T0 = 1_700_000_000_000


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def spec_of_size(n: int, *, factor: float = 1.0) -> TopoSpec:
    power = dataclasses.replace(DEFAULT_POWER_MODEL, maxPower=DEFAULT_POWER_MODEL.maxPower * factor)
    host = HostSpec("Host", n, 16, 2100.0, 1e3, power, "MAX_MIN_FAIRNESS")
    return TopoSpec((ClusterSpec("Cluster", "PowerSource", None, False, (host,)),))


def workload(n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """2n tasks of 16 cores over the first hour, 30 min each in six fragments of 5 min."""
    m = 2 * n
    rng = np.random.default_rng(0)
    sub = T0 + np.sort(rng.integers(0, 3_600_000, m))
    tasks = pl.DataFrame(
        {
            "id": np.arange(m, dtype=np.int64),
            "submission_ms": sub,
            "duration": np.full(m, 1_800_000),
            "cpu_count": np.full(m, 16, dtype=np.int32),
            "cpu_capacity": np.full(m, 33_600.0),
            "mem_capacity": np.full(m, 100_000, dtype=np.int64),
        }
    )
    k = np.repeat(np.arange(m), 6)
    idx = np.tile(np.arange(6), m)
    frags = pl.DataFrame(
        {
            "id": k,
            "duration": np.full(6 * m, 300_000),
            "cpu_count": np.full(6 * m, 16, dtype=np.int32),
            "cpu_usage": rng.uniform(0, 33_600, 6 * m),
            "submission_ms": sub[k] + idx * 300_000,
            "index": idx.astype(np.int32),
        }
    )
    return tasks, frags


def timed(f: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def steps(n: int) -> dict[str, float]:
    """Seconds of every step for n hosts (and the snapshot's MB)."""
    spec = spec_of_size(n)
    out: dict[str, float] = {}
    out["table"], _ = timed(lambda: build_hosts(spec))
    out["engine"], eng = timed(lambda: Engine(spec))
    tasks, frags = workload(n)
    t_run = 0.0
    for w in range(24):
        lo, hi = T0 + w * WINDOW_MS, T0 + (w + 1) * WINDOW_MS
        t = tasks.filter(pl.col("submission_ms").is_between(lo, hi, closed="left"))
        f = frags.filter(pl.col("submission_ms").is_between(lo, hi, closed="left"))
        t1 = time.perf_counter()
        eng.advance(hi, t, f)
        t_run += time.perf_counter() - t1
    out["run 2h"] = t_run
    out["apply power"], _ = timed(lambda: eng.set_topology(spec_of_size(n, factor=1.1)))
    out["snapshot"], blob = timed(lambda: snapshot(eng, "running"))
    out["snapshot MB"] = len(blob) / 1e6
    out["load snapshot"], _ = timed(lambda: load_snapshot(blob))
    out["what-if clone"], twin = timed(eng.clone)
    smaller = spec_of_size(n - max(1, n // 10))
    out["apply -10% hosts"], _ = timed(lambda: twin.set_topology(smaller))
    return out


def windows(clusters: int, hours: int = 2) -> tuple[float, float]:
    wl = load_workload(REPO_ROOT / "data" / "demo")
    doc = wl.topology.to_json_dict()
    one = doc["clusters"][0]
    doc["clusters"] = [
        {**copy.deepcopy(one), "name": f"c{i}", "hosts": [{**h, "count": 1} for h in one["hosts"]]}
        for i in range(clusters)
    ]
    topology = Topology.model_construct(clusters=[Cluster.model_validate(c) for c in doc["clusters"]])
    engine = Engine(topology, carbon=wl.carbon)
    start = wl.origin_ms - wl.origin_ms % WINDOW_MS
    times = []
    for k in range(hours * 3600_000 // WINDOW_MS):
        lo, hi = start + k * WINDOW_MS, start + (k + 1) * WINDOW_MS
        tasks = wl.tasks.filter(pl.col("submission_ms").is_between(lo, hi, closed="left"))
        frags = wl.fragments.filter(pl.col("submission_ms").is_between(lo, hi, closed="left"))
        t0 = time.perf_counter()
        engine.advance(hi, tasks, frags)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times)


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_child(n: int) -> None:
    """Print the RSS per host an engine of ``n`` hosts adds (after one window that places a task)."""
    spec = spec_of_size(n)
    tasks, frags = workload(1)
    before = _rss()
    eng = Engine(spec)
    eng.advance(T0 + WINDOW_MS, tasks, frags)
    print(f"{(_rss() - before) / n:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", default="1000,10000,100000")
    parser.add_argument("--clusters", default="1,10,100,1000")
    parser.add_argument("--memory", type=int, default=0, help="hosts of the RSS-per-host measurement")
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    sizes = [int(x) for x in args.hosts.split(",") if x]
    results = []
    for n in sizes:
        r = steps(n)
        results.append(r)
        cells = "  ".join(f"{k} {v:.3f}" for k, v in r.items())
        print(f"{n:>8,} hosts: {cells}   ({_load()})", flush=True)
    if len(sizes) >= 2:
        (n1, r1), (n2, r2) = list(zip(sizes, results, strict=True))[-2:]
        print(f"exponents in hosts ({n1:,} → {n2:,}; 1 = linear):")
        for k in r1:
            if r1[k] > 0 and r2[k] > 0:
                print(f"  {k:<18} {math.log(r2[k] / r1[k]) / math.log(n2 / n1):5.2f}")
    for n in (int(x) for x in args.clusters.split(",") if x):
        median, most = windows(n)
        print(
            f"{n:>5,} clusters: {median:.4f} s per window median, {most:.4f} s max   ({_load()})", flush=True
        )
    if args.memory:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(args.memory)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"engine of {args.memory:,} hosts: {out} B of RSS per host")


if __name__ == "__main__":
    main()
