"""What a topology's size costs the engine: the measurements behind ``MAX_HOSTS`` and ``MAX_CLUSTERS``
(:mod:`opendt.models.bounds`).

Usage: ``.venv/bin/python bench/topology_size.py [--hosts 1000,2000,4096,10000] [--clusters 1,10,100,1000]``

* hosts: the engine's host table (``build_hosts``, paid by every ``Engine`` and ``set_topology``: the twin's
  apply of a new topology, every what-if, optimizer and calibration candidate) for one host group of n hosts;
* clusters: the demo day's first two hours, window by window (300 s), on n clusters of two hosts each
  (every cluster exports its own rows): median and max seconds per window.

The machine may be shared: the load average is printed with every row.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import polars as pl

from opendt.engine.engine import Engine
from opendt.engine.hosts import build_hosts
from opendt.engine.topology import DEFAULT_POWER_MODEL, ClusterSpec, HostSpec, TopoSpec
from opendt.models.topology import Cluster, Topology
from opendt.settings import REPO_ROOT
from opendt.workload import load_workload

WINDOW_MS = 300_000


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def host_table(n: int) -> float:
    """Seconds to build the host table of one group of ``n`` hosts (an engine spec: beyond the model's
    bounds too)."""
    host = HostSpec("Host", n, 16, 2100.0, 1e3, DEFAULT_POWER_MODEL, "MAX_MIN_FAIRNESS")
    spec = TopoSpec((ClusterSpec("Cluster", "PowerSource", None, False, (host,)),))
    t0 = time.perf_counter()
    build_hosts(spec)
    return time.perf_counter() - t0


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", default="1000,2000,4096,10000")
    parser.add_argument("--clusters", default="1,10,100,1000")  # 1000 > MAX_CLUSTERS: not validated
    args = parser.parse_args()
    for n in (int(x) for x in args.hosts.split(",")):
        print(f"host table, one group of {n:>6,} hosts: {host_table(n):7.2f} s   ({_load()})", flush=True)
    for n in (int(x) for x in args.clusters.split(",")):
        median, most = windows(n)
        print(
            f"{n:>5,} clusters: {median:.4f} s per window median, {most:.4f} s max   ({_load()})", flush=True
        )


if __name__ == "__main__":
    main()
