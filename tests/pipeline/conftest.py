"""A small generated workload for pipeline tests (no ../shared needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def write_small_workload(path: Path, *, tasks: int = 12, seed: int = 3, hours: float = 2.0) -> Path:
    """Tasks over ``hours`` with 60 s fragments, 4 hosts, carbon + measured power every 30 s."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    sub = np.sort(rng.integers(0, int(hours * 3600), tasks)) * 1000 + START_MS
    nfrag = rng.integers(2, 40, tasks)
    ids = [f"t{i}" for i in range(tasks)]
    pl.DataFrame(
        {
            "id": ids,
            "submission_time": pl.Series(sub).cast(pl.Datetime("ms")),
            "duration": nfrag * 60_000,
            "cpu_count": rng.choice([4, 8], tasks).astype(np.int32),
            "cpu_capacity": np.full(tasks, 16000.0),
            "mem_capacity": np.full(tasks, 1000),
        }
    ).write_parquet(path / "tasks.parquet")
    fid = np.repeat(np.arange(tasks), nfrag)
    pl.DataFrame(
        {
            "id": pl.Series(ids)[fid],
            "duration": np.full(len(fid), 60_000),
            "cpu_count": np.full(len(fid), 8, dtype=np.int32),
            "cpu_usage": np.round(rng.uniform(0, 16000, len(fid)), 1),
        }
    ).write_parquet(path / "fragments.parquet")
    end = int(hours * 3600 * 1000) + 40 * 60_000
    ts = np.arange(30_000, end, 30_000)
    pl.DataFrame(
        {"timestamp": ts, "power_draw": rng.uniform(400, 900, len(ts)), "energy_usage": np.full(len(ts), 1.0)}
    ).write_parquet(path / "consumption.parquet")
    ct = START_MS + np.arange(-4, int(hours * 4) + 12) * 900_000
    pl.DataFrame(
        {
            "timestamp": pl.Series(ct).cast(pl.Datetime("ms")),
            "carbon_intensity": rng.uniform(100, 300, len(ct)),
        }
    ).write_parquet(path / "carbon.parquet")
    topo = {
        "clusters": [
            {
                "name": "C",
                "hosts": [
                    {
                        "name": "H",
                        "count": 4,
                        "cpu": {"coreCount": 8, "coreSpeed": 2000},
                        "memory": {"memorySize": 100000},
                        "cpuPowerModel": {
                            "modelType": "mse",
                            "idlePower": 100,
                            "maxPower": 200,
                            "calibrationFactor": 4,
                        },
                    }
                ],
                "powerSource": {"carbonTracePath": "carbon.parquet"},
            }
        ]
    }
    (path / "topology.json").write_text(json.dumps(topo))
    return path


@pytest.fixture
def small_workload(tmp_path: Path) -> Path:
    """A generated 2-hour workload directory."""
    return write_small_workload(tmp_path / "wl")
