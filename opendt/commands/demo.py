"""The embedded demo workload: a deterministic, small SURF-format workload (34 hours).

What it contains (seeded, byte-for-byte reproducible with the pinned polars/pyarrow):

* a heterogeneous datacenter: one cluster, 24 hosts × 16 cores @ 2400 MHz and 12 hosts × 32 cores @ 2000 MHz,
  mse power model (idle 30/45 W, max 190/260 W, calibrationFactor 4) — the topology the twin *believes*;
* a few hundred tasks with a diurnal arrival pattern, 4–32 cores, fragments of 30, 60 or 120 s whose usage
  follows a bounded random walk (some tasks have no fragments, as in SURF, and are dropped);
* a carbon-intensity trace in 15-min steps;
* a "measured" power series in 30 s samples, computed by our engine with a hidden "true" topology
  (:data:`TRUE_CALIBRATION_FACTOR`) plus 1 % Gaussian meter noise — what a calibrator should recover. It is
  made with the causal (streaming) semantics the twin uses (DESIGN §6: a task whose fragments are all zero
  holds its host for their duration, as a real machine would), so the true topology in the streaming twin
  reaches the noise floor.

:func:`synthetic_workload` and :func:`measured_power` make other traces of the same kind (more days, true
parameters that change at known instants) for the calibration tests.
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


def _tasks_and_fragments(
    rng: np.random.Generator, *, day: int = 0, prefix: str = "demo"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One day of tasks (``day`` days after :data:`START`) and their fragments; ids ``<prefix>-00000``…"""
    start_ms = int(START.timestamp() * 1000) + day * DAY_MS
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
    ids = [f"{prefix}-{i:05d}" for i in range(n)]
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


def _carbon(rng: np.random.Generator, days: int = 1) -> pl.DataFrame:
    start_ms = int(START.timestamp() * 1000)
    steps = np.arange(-4, (days + 1) * 96)  # an hour before the start to a day after the end
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


def measured_power(
    tasks: pl.DataFrame,
    fragments: pl.DataFrame,
    carbon: pl.DataFrame,
    rng: np.random.Generator,
    truth: list[tuple[int, dict[str, Any]]],
    noise: float = NOISE,
) -> pl.DataFrame:
    """The meter of a datacenter whose true topology is ``truth[0][1]``, replaced by ``truth[k][1]`` from
    ``truth[k][0]`` ms after the first submission on (multiples of the meter interval): the causal engine's
    mean power over each 30 s interval (exact energy / 30 s) times ``1 + N(0, noise)``, in the file format
    (``timestamp`` relative to the first submission, ``power_draw``, ``energy_usage``)."""
    from opendt.engine import Engine
    from opendt.models.topology import parse_topology
    from opendt.workload import (
        normalize_carbon,
        normalize_fragments,
        normalize_tasks,
        synthesize_fragment_times,
    )

    norm = normalize_tasks(tasks)
    frags = synthesize_fragment_times(norm, normalize_fragments(fragments))
    loaded = norm.join(frags.select(pl.col("id").unique()), on="id", how="semi")
    origin = int(loaded["submission_ms"].min())  # type: ignore[arg-type]
    cal = normalize_carbon(carbon)
    first = parse_topology(truth[0][1], source="true topology")
    engine = Engine(first, export_interval_ms=METER_INTERVAL_MS, carbon=cal)
    last = int(frags["submission_ms"].max()) + 1  # type: ignore[arg-type]
    parts = []
    for k, (_, doc) in enumerate(truth):
        if k:
            engine.set_topology(parse_topology(doc, source="true topology"))
        end = origin + truth[k + 1][0] if k + 1 < len(truth) else max(last, origin)
        t_sel = norm.filter(pl.col("submission_ms") < end)
        f_sel = frags.filter(pl.col("submission_ms") < end)
        norm, frags = (
            norm.join(t_sel, on="id", how="anti"),
            frags.join(f_sel.select("id", "index"), on=["id", "index"], how="anti"),
        )
        parts.append(engine.advance(end, t_sel, f_sel))
    parts.append(engine.finish())
    ps = (
        pl.concat(parts)
        .group_by("timestamp", maintain_order=True)
        .agg(pl.col("energy_usage").sum())
        .filter(pl.col("timestamp") % METER_INTERVAL_MS == 0)
        .sort("timestamp")
    )
    true_mean = ps["energy_usage"].to_numpy() / (METER_INTERVAL_MS / 1000)
    measured = np.round(true_mean * (1 + rng.normal(0, noise, len(true_mean))), 2)
    return pl.DataFrame(
        {
            "timestamp": ps["timestamp"].cast(pl.Int64),
            "power_draw": measured,
            "energy_usage": np.round(measured * METER_INTERVAL_MS / 1000, 2),
        }
    )


def synthetic_workload(seed: int, days: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``days`` demo-like days (each drawn from its own seeded generator) and a carbon trace: tasks,
    fragments, carbon in the file formats."""
    parts = [
        _tasks_and_fragments(np.random.default_rng([seed, d]), day=d, prefix=f"d{d}") for d in range(days)
    ]
    tasks = pl.concat([p[0] for p in parts])
    fragments = pl.concat([p[1] for p in parts])
    return tasks, fragments, _carbon(np.random.default_rng([seed, days]), days)


def write_workload(
    out: Path,
    tasks: pl.DataFrame,
    fragments: pl.DataFrame,
    carbon: pl.DataFrame,
    consumption: pl.DataFrame,
    topology: dict[str, Any],
) -> int:
    """Write a workload directory (the demo's file layout); returns its size in bytes."""
    out.mkdir(parents=True, exist_ok=True)
    opts: dict[str, Any] = {"compression": "zstd", "compression_level": 9, "statistics": False}
    tasks.write_parquet(out / "tasks.parquet", **opts)
    fragments.write_parquet(out / "fragments.parquet", **opts)
    carbon.write_parquet(out / "carbon.parquet", **opts)
    consumption.write_parquet(out / "consumption.parquet", **opts)
    (out / "topology.json").write_text(json.dumps(topology, indent=2) + "\n", encoding="utf-8")
    (out / "workload.yaml").write_text(WORKLOAD_YAML, encoding="utf-8")
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file())


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
    consumption = measured_power(tasks, fragments, carbon, rng, [(0, demo_topology(TRUE_CALIBRATION_FACTOR))])
    size = write_workload(out, tasks, fragments, carbon, consumption, demo_topology())
    return (
        f"demo workload written to {out}: {tasks.height} tasks, {fragments.height} fragments, "
        f"{consumption.height} power samples, {size / 1e6:.2f} MB"
    )
