"""Calibration test helpers: prefixes of the demo workload (its measured power comes from a hidden
calibrationFactor 6.5), settings with a chosen search space, and a candidate worker that crashes on command."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import polars as pl

from opendt.settings import CalibrationAxis, CalibrationSettings, Settings

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
CRASHING_WORKER = Path(__file__).resolve().parent / "crashing_worker.py"


def write_demo_prefix(dst: Path, hours: float, *, drop_power: tuple[float, float] | None = None) -> Path:
    """The demo's tasks submitted in the first ``hours`` (all their fragments) and the measured power of those
    hours, without the samples in ``drop_power`` = (from_h, to_h) when given. Times are relative to the first
    task, as in consumption.parquet."""
    dst.mkdir(parents=True, exist_ok=True)
    tasks = pl.read_parquet(DEMO / "tasks.parquet")
    t0 = tasks["submission_time"].min()
    keep = tasks.filter(pl.col("submission_time") < t0 + pl.duration(milliseconds=int(hours * 3_600_000)))
    keep.write_parquet(dst / "tasks.parquet")
    frags = pl.read_parquet(DEMO / "fragments.parquet")
    frags.join(keep.select("id"), on="id", how="semi", maintain_order="left").write_parquet(
        dst / "fragments.parquet"
    )
    power = pl.read_parquet(DEMO / "consumption.parquet").filter(pl.col("timestamp") < int(hours * 3_600_000))
    if drop_power is not None:
        lo, hi = (int(h * 3_600_000) for h in drop_power)
        power = power.filter((pl.col("timestamp") < lo) | (pl.col("timestamp") >= hi))
    power.write_parquet(dst / "consumption.parquet")
    for name in ("carbon.parquet", "topology.json", "workload.yaml"):
        shutil.copy(DEMO / name, dst / name)
    return dst


def cf_settings(tmp: Path, values: list[float], **cal: Any) -> Settings:
    """Settings calibrating calibrationFactor over ``values`` (no refinement unless asked), data under tmp."""
    axis = CalibrationAxis(parameter="cpuPowerModel.calibrationFactor", values=list(values))
    opts: dict[str, Any] = {"enabled": True, "grid": [axis], "refine_steps": 0, "max_parallel": 2, **cal}
    return Settings(calibration=CalibrationSettings(**opts), data_dir=tmp / "data")


def crashing_command() -> list[str]:
    return [sys.executable, str(CRASHING_WORKER)]
