"""Shared inputs for the engine tests: the reference scenarios and small synthetic traces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from opendt.models.topology import Topology, parse_topology

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REFERENCE = SHARED / "reference" / "opendc"
SURF = Path(__file__).resolve().parents[2] / "data" / "surf"


def host_spec(name: str, count: int, cores: int, speed: float, model: dict[str, Any]) -> dict[str, Any]:
    """A topology host entry."""
    return {
        "name": name,
        "count": count,
        "cpu": {"coreCount": cores, "coreSpeed": speed},
        "memory": {"memorySize": 128_000_000},
        "cpuPowerModel": model,
    }


def linear(idle: float = 100.0, peak: float = 200.0) -> dict[str, Any]:
    return {"modelType": "linear", "idlePower": idle, "maxPower": peak}


def topo(*clusters: tuple[str, list[dict[str, Any]]]) -> Topology:
    """A topology from (cluster name, hosts) pairs."""
    return parse_topology({"clusters": [{"name": n, "hosts": h} for n, h in clusters]})


def frames(tasks: list[tuple[str, int, int, list[tuple[int, float]]]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(id, submission ms, cores, [(duration, usage)…]) → normalized task and fragment frames."""
    t = pl.DataFrame(
        {
            "id": [x[0] for x in tasks],
            "submission_ms": [x[1] for x in tasks],
            "duration": [sum(d for d, _ in x[3]) for x in tasks],
            "cpu_count": [x[2] for x in tasks],
            "cpu_capacity": [0.0] * len(tasks),
            "mem_capacity": [100_000] * len(tasks),
        },
        schema_overrides={"submission_ms": pl.Int64, "duration": pl.Int64, "mem_capacity": pl.Int64},
    )
    rows = [(x[0], d, u) for x in tasks for d, u in x[3]]
    f = pl.DataFrame(
        {"id": [r[0] for r in rows], "duration": [r[1] for r in rows], "cpu_usage": [r[2] for r in rows]},
        schema_overrides={"duration": pl.Int64, "cpu_usage": pl.Float64},
    )
    return t, f


def with_trace_times(tasks: pl.DataFrame, fragments: pl.DataFrame) -> pl.DataFrame:
    """Add each fragment's synthesized trace time (task submission + earlier fragment durations)."""
    return (
        fragments.with_row_index("_r")
        .join(tasks.select("id", "submission_ms"), on="id", how="inner")
        .sort("_r")
        .with_columns(
            (pl.col("submission_ms") + pl.col("duration").cum_sum().over("id") - pl.col("duration")).alias(
                "trace"
            )
        )
        .drop("_r", "submission_ms")
    )


def random_trace(seed: int, n_tasks: int = 60) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Mixed task sizes, off-grid submissions, varied fragment lengths, zero and over-capacity usage."""
    rng = np.random.default_rng(seed)
    t0 = 1_665_093_600_000
    out = []
    sub = t0
    for i in range(n_tasks):
        sub += int(rng.integers(0, 90_000))
        cores = int(rng.choice([1, 2, 4, 8, 16]))
        n_frag = int(rng.integers(1, 12))
        durs = rng.choice([0, 1_000, 7_500, 30_000, 45_000, 300_000], size=n_frag)
        use = rng.uniform(0, 40_000, size=n_frag) * (rng.random(n_frag) > 0.15)
        if i % 17 == 3:
            use[:] = 0.0
        out.append((f"t{i}", sub, cores, list(zip(durs.tolist(), use.tolist(), strict=True))))
    return frames(out)


def windows(
    tasks: pl.DataFrame, fragments: pl.DataFrame, window_ms: int
) -> list[tuple[int, pl.DataFrame, pl.DataFrame]]:
    """Split the input into [lo, hi) windows by trace time (epoch-aligned), like the twin's consumer."""
    f = with_trace_times(tasks, fragments)
    t = tasks.with_columns((pl.col("submission_ms") // window_ms).alias("_w"))
    f = f.with_columns((pl.col("trace") // window_ms).alias("_w"))
    tw = {k[0]: v.drop("_w") for k, v in t.partition_by("_w", as_dict=True).items()}
    fw = {k[0]: v.drop("_w", "trace") for k, v in f.partition_by("_w", as_dict=True).items()}
    lo = int(t["_w"].min())  # type: ignore[arg-type]
    hi = int(f["_w"].max())  # type: ignore[arg-type]
    empty_t, empty_f = tasks.clear(), fragments.clear()
    return [((w + 1) * window_ms, tw.get(w, empty_t), fw.get(w, empty_f)) for w in range(lo, hi + 1)]


@pytest.fixture(scope="session")
def surf_inputs() -> tuple[pl.DataFrame, pl.DataFrame]:
    """The reference SURF workload (OpenDC schema) as engine frames."""
    from opendt.engine.workload import load_workload

    d = REFERENCE / "_inputs" / "surf_workload"
    if not d.is_dir():
        pytest.skip("../shared/reference/opendc is not present")
    return load_workload(d)


@pytest.fixture(scope="session")
def surf_carbon() -> pl.DataFrame:
    """The SURF carbon trace (data/surf; the reference's copy is the same file)."""
    return pl.read_parquet(SURF / "carbon.parquet")
