"""Calibration test helpers: prefixes of the demo workload (its measured power comes from a hidden
calibrationFactor 6.5), settings with a chosen search space, and a candidate worker that crashes on command."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from opendt.calibration.settings import CalibrationAxis, CalibrationSettings
from opendt.commands.demo import (
    TRUE_CALIBRATION_FACTOR,
    demo_topology,
    measured_power,
    synthetic_workload,
    write_workload,
)
from opendt.engine import Engine
from opendt.models.topology import parse_topology
from opendt.settings import Settings
from opendt.workload import load_workload

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


def truth_topology(idle: float = 1.0, mx: float = 1.0, cf: float = TRUE_CALIBRATION_FACTOR) -> dict[str, Any]:
    """The demo's datacenter with its power model moved: idle and max power × ``idle``/``mx``, factor ``cf``."""
    doc = demo_topology(cf)
    for h in doc["clusters"][0]["hosts"]:
        pm = h["cpuPowerModel"]
        pm["idlePower"], pm["maxPower"] = pm["idlePower"] * idle, pm["maxPower"] * mx
    return doc


def write_synthetic(dst: Path, seed: int, days: int, truth: list[tuple[int, dict[str, Any]]]) -> Path:
    """A demo-like workload of ``days`` days whose meter follows ``truth`` ((from ms after the first
    submission, true topology), 1 % noise); its topology.json is the demo's published one."""
    tasks, fragments, carbon = synthetic_workload(seed, days)
    power = measured_power(tasks, fragments, carbon, np.random.default_rng(seed), truth)
    write_workload(dst, tasks, fragments, carbon, power, demo_topology())
    return dst


def truth_rows(workload_dir: Path, truth: list[tuple[int, dict[str, Any]]], interval_ms: int) -> pl.DataFrame:
    """What a twin with the true topology at every instant predicts (``timestamp``, ``power_draw``), with the
    causal engine at the twin's export interval: the noise floor a calibrated twin is compared with."""
    wl = load_workload(workload_dir)
    carbon = None if wl.carbon is None else wl.carbon.rename({"timestamp_ms": "timestamp"})
    engine = Engine(parse_topology(truth[0][1]), export_interval_ms=interval_ms, carbon=carbon)
    parts = []
    for k, (_, doc) in enumerate(truth):
        if k:
            engine.set_topology(parse_topology(doc))
        end = wl.origin_ms + truth[k + 1][0] if k + 1 < len(truth) else wl.end_ms + 1
        lo = wl.origin_ms + truth[k][0] if k else -(2**62)
        sel = (pl.col("submission_ms") >= lo) & (pl.col("submission_ms") < end)
        parts.append(engine.advance(end, wl.tasks.filter(sel), wl.fragments.filter(sel)))
    parts.append(engine.finish())
    return (
        pl.concat(parts)
        .group_by("timestamp_absolute", maintain_order=True)
        .agg(pl.col("power_draw").sum())
        .select(
            pl.from_epoch("timestamp_absolute", "ms").dt.replace_time_zone("UTC").alias("timestamp"),
            "power_draw",
        )
    )


def block_mape(pred: pl.DataFrame, consumption: pl.DataFrame, lo_ms: int, hi_ms: int) -> float:
    """MAPE (%) of ``pred`` (``timestamp``, ``power_draw``) vs the meter at the instants in [lo, hi)."""
    p = pred.select(pl.col("timestamp").dt.epoch("ms").alias("timestamp_ms"), pl.col("power_draw").alias("p"))
    j = consumption.join(p.unique("timestamp_ms", keep="first"), on="timestamp_ms").filter(
        (pl.col("timestamp_ms") >= lo_ms) & (pl.col("timestamp_ms") < hi_ms)
    )
    return float((((j["p"] - j["power_draw"]).abs() / j["power_draw"]).to_numpy()).mean() * 100)
