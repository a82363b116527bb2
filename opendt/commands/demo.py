"""The embedded demo workload: a deterministic, small SURF-format workload (about one day).

What it contains (seeded, byte-for-byte reproducible with the pinned polars/pyarrow):

* a heterogeneous datacenter: one cluster, 24 hosts × 16 cores @ 2400 MHz and 12 hosts × 32 cores @ 2000 MHz,
  mse power model (idle 30/45 W, max 190/260 W, calibrationFactor 4) — the topology the twin *believes*;
* a few hundred tasks with a diurnal arrival pattern, 4–32 cores, fragments of 30, 60 or 120 s whose usage
  follows a bounded random walk (some tasks have no fragments, as in SURF, and are dropped);
* a carbon-intensity trace in 15-min steps;
* a "measured" power series in 30 s samples, computed by our engine with a hidden "true" topology
  (:data:`TRUE_CALIBRATION_FACTOR`) plus 1 % Gaussian meter noise — what a calibrator should recover.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

START = datetime(2024, 3, 4, tzinfo=UTC)
DAY_MS = 86_400_000
TRUE_CALIBRATION_FACTOR = 6.5
"""The hidden calibrationFactor the measured power was made with (the published topology says 4)."""
BELIEVED_CALIBRATION_FACTOR = 4.0
METER_INTERVAL_MS = 30_000
NOISE = 0.01


def demo_topology(calibration_factor: float = BELIEVED_CALIBRATION_FACTOR) -> dict[str, Any]:
    return {
        "clusters": [
            {
                "name": "demo",
                "hosts": [
                    {
                        "name": "A",
                        "count": 24,
                        "cpu": {"coreCount": 16, "coreSpeed": 2400},
                        "memory": {"memorySize": 256000},
                        "cpuPowerModel": {
                            "modelType": "mse",
                            "idlePower": 30.0,
                            "maxPower": 190.0,
                            "calibrationFactor": calibration_factor,
                        },
                    },
                    {
                        "name": "B",
                        "count": 12,
                        "cpu": {"coreCount": 32, "coreSpeed": 2000},
                        "memory": {"memorySize": 512000},
                        "cpuPowerModel": {
                            "modelType": "mse",
                            "idlePower": 45.0,
                            "maxPower": 260.0,
                            "calibrationFactor": calibration_factor,
                        },
                    },
                ],
                "powerSource": {"carbonTracePath": "carbon.parquet"},
            }
        ]
    }


def _tasks_and_fragments(rng: np.random.Generator) -> tuple[pl.DataFrame, pl.DataFrame]:
    start_ms = int(START.timestamp() * 1000)
    # Diurnal arrivals: more submissions during the working day (UTC 07–19).
    hours = np.arange(24)
    rate = 12 + 18 * np.exp(-(((hours - 13) / 4.0) ** 2))
    counts = rng.poisson(rate)
    sub = np.concatenate(
        [h * 3_600_000 + np.sort(rng.integers(0, 3600, c)) * 1000 for h, c in enumerate(counts)]
    )
    n = len(sub)
    cores = rng.choice([4, 8, 16, 32], size=n, p=[0.3, 0.3, 0.3, 0.1])
    speed = np.where(cores == 32, 2000.0, 2400.0)
    frag_len = rng.choice([30_000, 60_000, 120_000], size=n, p=[0.5, 0.35, 0.15])
    nfrag = np.clip(rng.lognormal(mean=4.2, sigma=0.8, size=n).astype(np.int64), 3, 480)
    no_frag = rng.random(n) < 0.08
    nfrag[no_frag] = 0
    ids = [f"demo-{i:05d}" for i in range(n)]
    tasks = pl.DataFrame(
        {
            "id": ids,
            "submission_time": pl.Series((start_ms + sub).astype(np.int64)).cast(pl.Datetime("ms")),
            "duration": (nfrag * frag_len).astype(np.int64),
            "cpu_count": cores.astype(np.int32),
            "cpu_capacity": cores * speed,
            "mem_capacity": (cores * 4000).astype(np.int64),
        }
    )
    frag_ids: list[np.ndarray] = []
    durs: list[np.ndarray] = []
    usages: list[np.ndarray] = []
    counts_out: list[np.ndarray] = []
    for i in range(n):
        k = int(nfrag[i])
        if k == 0:
            continue
        level = rng.uniform(0.15, 0.95)
        walk = np.clip(level + np.cumsum(rng.normal(0.0, 0.05, k)), 0.0, 1.0)
        if rng.random() < 0.05:  # an idle task: all zero usage
            walk[:] = 0.0
        usage = np.round(walk * cores[i] * speed[i], 1)
        frag_ids.append(np.full(k, i))
        durs.append(np.full(k, frag_len[i], dtype=np.int64))
        usages.append(usage)
        counts_out.append(np.full(k, cores[i], dtype=np.int32))
    idx = np.concatenate(frag_ids)
    fragments = pl.DataFrame(
        {
            "id": pl.Series(ids)[idx],
            "duration": np.concatenate(durs),
            "cpu_count": np.concatenate(counts_out),
            "cpu_usage": np.concatenate(usages),
        }
    )
    return tasks, fragments


def _carbon(rng: np.random.Generator) -> pl.DataFrame:
    start_ms = int(START.timestamp() * 1000)
    steps = np.arange(-4, 2 * 96)  # an hour before the start to a day after the end
    t = start_ms + steps * 900_000
    hour = (steps % 96) / 4.0
    solar = np.clip(np.sin((hour - 6) / 12 * np.pi), 0, None)
    ci = 320 - 140 * solar + rng.normal(0, 8, len(steps))
    return pl.DataFrame(
        {
            "timestamp": pl.Series(t.astype(np.int64)).cast(pl.Datetime("ms")),
            "carbon_intensity": np.round(ci, 3),
        }
    )


def _measured_power(
    tasks: pl.DataFrame, fragments: pl.DataFrame, carbon: pl.DataFrame, rng: np.random.Generator
) -> pl.DataFrame:
    from opendt.engine import simulate
    from opendt.models.topology import parse_topology
    from opendt.workload import normalize_carbon, normalize_fragments, normalize_tasks

    topo = parse_topology(demo_topology(TRUE_CALIBRATION_FACTOR), source="demo (true)")
    result = simulate(
        topo,
        normalize_tasks(tasks),
        normalize_fragments(fragments),
        export_interval_ms=METER_INTERVAL_MS,
        carbon=normalize_carbon(carbon),
        tables=frozenset({"powerSource"}),
    )
    ps = result.power_source.unique(subset=["timestamp"], keep="first", maintain_order=True)
    ps = ps.filter(pl.col("timestamp") % METER_INTERVAL_MS == 0)
    true_mean = ps["energy_usage"].to_numpy() / (METER_INTERVAL_MS / 1000)
    measured = np.round(true_mean * (1 + rng.normal(0, NOISE, len(true_mean))), 2)
    return pl.DataFrame(
        {
            "timestamp": ps["timestamp"].cast(pl.Int64),
            "power_draw": measured,
            "energy_usage": np.round(measured * METER_INTERVAL_MS / 1000, 2),
        }
    )


WORKLOAD_YAML = """\
name: "demo"
description: "OpenDT demo workload: one synthetic day on a 36-host heterogeneous cluster (generated)"

timestamps:
  # consumption.parquet timestamps are ms relative to the first task submission (as in SURF)
  consumption_offset_ms: 0
"""


def generate_demo(out: Path, seed: int = 7) -> str:
    """Write the demo workload into ``out``; returns a one-line summary."""
    rng = np.random.default_rng(seed)
    tasks, fragments = _tasks_and_fragments(rng)
    carbon = _carbon(rng)
    consumption = _measured_power(tasks, fragments, carbon, rng)
    out.mkdir(parents=True, exist_ok=True)
    opts: dict[str, Any] = {"compression": "zstd", "compression_level": 9, "statistics": False}
    tasks.write_parquet(out / "tasks.parquet", **opts)
    fragments.write_parquet(out / "fragments.parquet", **opts)
    carbon.write_parquet(out / "carbon.parquet", **opts)
    consumption.write_parquet(out / "consumption.parquet", **opts)
    (out / "topology.json").write_text(json.dumps(demo_topology(), indent=2) + "\n", encoding="utf-8")
    (out / "workload.yaml").write_text(WORKLOAD_YAML, encoding="utf-8")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return (
        f"demo workload written to {out}: {tasks.height} tasks, {fragments.height} fragments, "
        f"{consumption.height} power samples, {size / 1e6:.2f} MB"
    )
