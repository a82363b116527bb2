"""Read a simulator's output (OpenDC's or ours: the same files, OPENDC_SEMANTICS §8) into polars frames.

Accepted locations: the run folder ``<outputFolder>/<name>`` (with ``raw-output/0/seed=0`` and
``trackr.json``), the ``seed=0`` folder itself, or a flat folder holding ``powerSource.parquet`` (the
layout of the reference outputs). Normalization:

* ``timestamp`` (relative ms) and ``timestamp_absolute`` (epoch ms) are Int64;
* power, energy and carbon columns are Float64 (OpenDC stores float32; sums must be done in float64);
* the final-flush duplicate (same instant written twice when the run ends on the export grid, the second
  row with energy 0) is dropped, keeping the first row per instant and key (per power source, host, task);
  an off-grid final row is kept, it carries the energy of the partial interval.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

POWER_FILE = "powerSource"
OPTIONAL_FILES = ("host", "task", "service")
_FLOAT_COLS = {
    "powerSource": ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission"),
    "host": (
        "power_draw",
        "energy_usage",
        "embodied_carbon",
        "cpu_capacity",
        "cpu_usage",
        "cpu_demand",
        "cpu_utilization",
    ),
    "task": ("cpu_limit", "cpu_usage", "cpu_demand"),
    "service": (),
}
_KEYS = {
    "powerSource": ("cluster_name", "source_name"),
    "host": ("host_name",),
    "task": ("task_id",),
    "service": (),
}
_REQUIRED = {
    "powerSource": ("timestamp", "timestamp_absolute", "power_draw", "energy_usage"),
    "host": ("timestamp", "timestamp_absolute", "host_name"),
    "task": ("timestamp", "timestamp_absolute", "task_id"),
    "service": ("timestamp", "timestamp_absolute"),
}


class SimulationOutputError(Exception):
    """The simulator's output is missing, incomplete or unreadable; the message names the file."""


@dataclass(frozen=True)
class SimulationOutput:
    """One run's output, normalized. ``power`` has one row per power source per export instant."""

    directory: Path
    power: pl.DataFrame
    host: pl.DataFrame | None = None
    task: pl.DataFrame | None = None
    service: pl.DataFrame | None = None
    trackr: list[Any] | None = None
    wall_s: float | None = None  # write + queue + run + read
    engine_s: float | None = None  # the engine process alone (all attempts)
    backend: str | None = None

    @property
    def origin_ms(self) -> int | None:
        """T0: epoch ms of simulated time 0 (the first loaded task's submission)."""
        if self.power.height == 0:
            return None
        row = self.power.row(0, named=True)
        return int(row["timestamp_absolute"]) - int(row["timestamp"])

    @property
    def total_energy_j(self) -> float:
        return float(self.power["energy_usage"].sum())

    def power_total(self) -> pl.DataFrame:
        """Sum over power sources per instant (one row per instant; equals ``power`` for one cluster)."""
        aggs = [pl.col("power_draw").sum(), pl.col("energy_usage").sum()]
        if "carbon_emission" in self.power.columns:
            aggs.append(pl.col("carbon_emission").sum())
        if "carbon_intensity" in self.power.columns:
            aggs.append(pl.col("carbon_intensity").mean())
        return self.power.group_by("timestamp", "timestamp_absolute", maintain_order=True).agg(aggs)


def locate_raw_output(path: Path) -> Path:
    """The folder that holds ``powerSource.parquet`` for any of the accepted locations."""
    if not path.exists():
        raise SimulationOutputError(f"simulation output folder not found: {path}")
    for cand in (path, path / "raw-output" / "0" / "seed=0"):
        if (cand / f"{POWER_FILE}.parquet").is_file():
            return cand
    raise SimulationOutputError(
        f"no {POWER_FILE}.parquet in {path} (nor in {path / 'raw-output/0/seed=0'}); "
        "the simulator produced no output"
    )


def _read(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise SimulationOutputError(f"cannot read {path}: {e}") from e


def normalize(kind: str, df: pl.DataFrame, *, source: str = "") -> pl.DataFrame:
    """Apply the dtype and final-flush rules to one file's frame (``kind`` as in OpenDC: powerSource…)."""
    where = source or f"{kind}.parquet"
    missing = [c for c in _REQUIRED[kind] if c not in df.columns]
    if missing:
        raise SimulationOutputError(f"{where}: missing column(s) {', '.join(missing)}")
    casts = [pl.col("timestamp", "timestamp_absolute").cast(pl.Int64)]
    floats = [c for c in _FLOAT_COLS[kind] if c in df.columns]
    if floats:
        casts.append(pl.col(floats).cast(pl.Float64))
    df = df.with_columns(casts)
    keys = ["timestamp", *(k for k in _KEYS[kind] if k in df.columns)]
    return df.unique(subset=keys, keep="first", maintain_order=True)


def read_output(path: Path, *, files: Sequence[str] = OPTIONAL_FILES) -> SimulationOutput:
    """Read ``powerSource`` (required) and the ``files`` among host/task/service that exist (blocking)."""
    raw = locate_raw_output(path)
    power = normalize(
        POWER_FILE, _read(raw / f"{POWER_FILE}.parquet"), source=str(raw / "powerSource.parquet")
    )
    frames: dict[str, pl.DataFrame | None] = {}
    for kind in OPTIONAL_FILES:
        f = raw / f"{kind}.parquet"
        frames[kind] = normalize(kind, _read(f), source=str(f)) if kind in files and f.is_file() else None
    trackr = None
    for cand in (raw / "trackr.json", raw.parent.parent.parent / "trackr.json"):
        if cand.is_file():
            try:
                loaded = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise SimulationOutputError(f"cannot read {cand}: {e}") from e
            trackr = loaded if isinstance(loaded, list) else [loaded]
            break
    return SimulationOutput(
        directory=raw,
        power=power,
        host=frames["host"],
        task=frames["task"],
        service=frames["service"],
        trackr=trackr,
    )


async def read_output_async(path: Path, *, files: Sequence[str] = OPTIONAL_FILES) -> SimulationOutput:
    """:func:`read_output` in a worker thread, so the event loop stays free."""
    return await asyncio.to_thread(read_output, path, files=files)
