"""``python -m opendt.engine --experiment-path X.json``: OpenDC's CLI contract (DESIGN §7)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from opendt.models.topology import TopologyError

from .carbon import CarbonError
from .experiment import Experiment, ExperimentError, Scenario, read_experiment, trackr_entry
from .frames import InputError
from .simulate import SimulationResult, simulate
from .workload import load_workload

FLOAT32 = {
    "powerSource": ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission"),
}
NON_NULL_EXCEPT = {
    "host": {"boot_time"},
    "task": {
        "gpu_count",
        "gpu_limit",
        "gpu_usage",
        "gpu_demand",
        "gpu_time_active",
        "gpu_time_idle",
        "gpu_time_steal",
        "gpu_time_lost",
        "schedule_time",
        "submission_time",
        "finish_time",
        "task_state",
    },
}


def _write(df: pl.DataFrame, path: Path, kind: str) -> None:
    casts = [pl.col(c).cast(pl.Float32) for c in FLOAT32.get(kind, ()) if c in df.columns]
    if casts:
        df = df.with_columns(casts)
    table = df.to_arrow()
    nullable = NON_NULL_EXCEPT.get(kind, set())
    fields = [pa.field(f.name, f.type, nullable=f.name in nullable) for f in table.schema]
    table = table.cast(pa.schema(fields)) if fields else table
    pq.write_table(table, path, compression="zstd")


def run_scenario(exp: Experiment, sc: Scenario) -> SimulationResult:
    """Load the scenario's workload and simulate it."""
    w = sc.workload
    tasks, fragments = load_workload(Path(w["pathToFile"]), submission_time=w.get("submissionTime"))
    if not tasks.filter(pl.col("id").is_in(fragments["id"].unique().to_list())).height:
        raise InputError(f"workload {w['pathToFile']} has no task with fragments (OpenDC crashes on it)")
    return simulate(
        sc.topology,
        tasks,
        fragments,
        export_interval_ms=sc.interval_ms,
        scaling=w.get("scalingPolicy", "NoDelay"),
        carbon_by_cluster=sc.carbon,
        tables=frozenset(sc.files),
    )


def run(path: Path) -> None:
    """Run every scenario and seed of the experiment and write OpenDC's output tree."""
    exp = read_experiment(path)
    base = exp.output_folder / exp.name
    for sub in ("power_draw", "carbon_emission"):
        (base / "simulation-analysis" / sub).mkdir(parents=True, exist_ok=True)
    for sc in exp.scenarios:
        result = run_scenario(exp, sc)
        frames = {
            "powerSource": result.power_source,
            "host": result.host,
            "task": result.task,
            "service": result.service,
        }
        for seed in range(exp.runs):
            out = base / "raw-output" / str(sc.index) / f"seed={seed}"
            out.mkdir(parents=True, exist_ok=True)
            for kind in sc.files:
                if kind in frames:
                    _write(frames[kind], out / f"{kind}.parquet", kind)
    trackr = [trackr_entry(exp, sc) for sc in exp.scenarios]
    (base / "trackr.json").write_text(json.dumps(trackr, indent=4), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Entry point; invalid input gives a one-line error on stderr and exit code 2."""
    ap = argparse.ArgumentParser(prog="python -m opendt.engine", description=__doc__)
    ap.add_argument("--experiment-path", default="resources/experiment.json", type=Path)
    args = ap.parse_args(argv)
    try:
        run(args.experiment_path)
    except (ExperimentError, TopologyError, InputError, CarbonError, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"error: {msg}\n")
        return 2
    return 0
