"""Warm-started candidate runs, executed inside engine worker processes (``opendt.workers`` ops ``cal.*``).

* ``cal.snapshot`` (twin worker): the engine state now, pickled. The fragment archive is left out: it only
  serves structural topology changes (re-queued tasks restart from their first fragment), which the search
  space refuses (see :mod:`opendt.calibration.space`), and it grows with the whole trace, while the rest of
  the state stays bounded (SURF mid-week: about 0.7 MB, 1 ms).
* ``cal.prepare`` (candidate worker): keep one round's base — a snapshot (or, when the lookback starts
  before the twin's first window, a fresh engine spec) — and the lookback's tasks and fragments.
* ``cal.candidate``: unpickle the base, ``set_topology(candidate)``, switch the export grid to the meter's
  interval, advance through the lookback's inputs to its end, and return one row per export instant whose
  whole interval lies inside the lookback (summed over clusters).

Advancing once over the whole lookback equals advancing window by window (the engine is causal and
incremental == one-shot); the candidate with the twin's own topology reproduces the twin's rows.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from opendt.engine import Engine

OPS = ("cal.snapshot", "cal.prepare", "cal.candidate")


def snapshot(engine: Engine) -> bytes:
    archive = engine.frags.archive
    engine.frags.archive = None
    try:
        return pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        engine.frags.archive = archive


def set_export_interval(engine: Engine, interval_ms: int) -> None:
    """Export every ``interval_ms`` from the engine's current instant on (the first row may be partial).

    Relies on the engine's export state (``interval``, ``next_k``, the carried energy of the interval in
    progress); tests/calibration/test_warm.py pins that a regridded warm start equals a one-shot run.
    """
    engine.interval = int(interval_ms)
    engine.next_k = engine.t_lo // engine.interval + 1
    engine.acc_energy = np.zeros_like(engine.acc_energy)
    engine.acc_carbon = np.zeros_like(engine.acc_carbon)


@dataclass
class RoundBase:
    blob: bytes | None
    init_topology: dict[str, Any] | None
    carbon: pl.DataFrame | None
    tasks: pl.DataFrame
    fragments: pl.DataFrame
    until_ms: int
    interval_ms: int


def prepare(header: dict[str, Any], tables: dict[str, pl.DataFrame]) -> RoundBase:
    blob = tables["snapshot"]["blob"][0] if "snapshot" in tables else None
    return RoundBase(
        blob=blob,
        init_topology=header.get("init_topology"),
        carbon=tables.get("carbon"),
        tasks=tables["tasks"],
        fragments=tables["fragments"],
        until_ms=int(header["until_ms"]),
        interval_ms=int(header["export_interval_ms"]),
    )


def run_candidate(base: RoundBase, topology: dict[str, Any]) -> pl.DataFrame:
    from opendt.engine import Engine
    from opendt.models.topology import parse_topology

    topo = parse_topology(topology, source="candidate")
    if base.blob is not None:
        engine: Engine = pickle.loads(base.blob)  # noqa: S301 - our own snapshot, from our own twin worker
        engine.set_topology(topo)
        set_export_interval(engine, base.interval_ms)
    else:
        engine = Engine(topo, export_interval_ms=base.interval_ms, carbon=base.carbon)
    start_rel = engine.t_lo
    rows = engine.advance(base.until_ms, base.tasks, base.fragments)
    if rows.is_empty():
        return pl.DataFrame(
            schema={"timestamp_absolute": pl.Int64, "power_draw": pl.Float64, "energy_usage": pl.Float64}
        )
    return (
        rows.filter(pl.col("timestamp") - base.interval_ms >= start_rel)
        .group_by("timestamp_absolute", maintain_order=True)
        .agg(pl.col("power_draw").sum(), pl.col("energy_usage").sum())
        .sort("timestamp_absolute")
    )


def handle(
    op: str,
    header: dict[str, Any],
    tables: dict[str, pl.DataFrame],
    engine: Engine | None,
    bases: dict[str, RoundBase],
) -> dict[str, pl.DataFrame]:
    """One ``cal.*`` request in a worker child; ``bases`` is the child's per-round state."""
    if op == "cal.snapshot":
        if engine is None:
            raise RuntimeError("worker not initialised")
        return {"snapshot": pl.DataFrame({"blob": [snapshot(engine)]}, schema={"blob": pl.Binary})}
    if op == "cal.prepare":
        bases.clear()  # one round at a time per worker: the previous base is dropped
        bases[str(header["round"])] = prepare(header, tables)
        return {}
    if op == "cal.candidate":
        base = bases.get(str(header["round"]))
        if base is None:
            raise RuntimeError(f"round {header['round']} not prepared in this worker")
        return {"rows": run_candidate(base, header["topology"])}
    raise ValueError(f"unknown op {op!r}")
