"""One-shot, OpenDC-compatible runs: all four output frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

from opendt.models.topology import Topology

from .carbon import CarbonTrace
from .engine import Engine
from .segments import FragmentStore, SegmentSet


@dataclass(frozen=True)
class SimulationResult:
    """OpenDC's output tables (float64 in memory; cast to float32 when written as OpenDC files)."""

    power_source: pl.DataFrame
    host: pl.DataFrame
    task: pl.DataFrame
    service: pl.DataFrame


def simulate(
    topology: Topology,
    tasks: pl.DataFrame,
    fragments: pl.DataFrame,
    *,
    export_interval_ms: int,
    carbon: pl.DataFrame | None = None,
    scaling: Literal["NoDelay", "Perfect"] = "NoDelay",
    carbon_by_cluster: list[CarbonTrace | None] | None = None,
    tables: frozenset[str] = frozenset({"powerSource", "host", "task", "service"}),
) -> SimulationResult:
    """Run the whole trace at once with OpenDC's semantics (all-zero tasks complete instantly)."""
    if scaling not in ("NoDelay", "Perfect"):
        raise ValueError(f"unknown scalingPolicy {scaling!r}")
    eng = Engine(
        topology,
        export_interval_ms=export_interval_ms,
        carbon=carbon,
        streaming=False,
        carbon_by_cluster=carbon_by_cluster,
    )
    eng.frags = FragmentStore(archive=False)
    eng.history = [] if "host" in tables else None
    eng._ingest(tasks, fragments)
    if scaling == "Perfect":
        from .perfect import run_perfect

        run_perfect(eng)
        if eng.history is not None:
            eng.history.append(eng.segs)
        eng.finished = True
        power = (
            eng._integrate(max(eng.sched.end_time(), 0), final=True) if eng.t0 is not None else eng.finish()
        )
    else:
        power = eng.finish()
    return _result(eng, power, SegmentSet.concat_all(eng.history or []), tables)


def _result(eng: Engine, power: pl.DataFrame, segs: SegmentSet, tables: frozenset[str]) -> SimulationResult:
    from . import detail

    empty = pl.DataFrame()
    return SimulationResult(
        power_source=power,
        host=detail.host_frame(eng, power, segs) if "host" in tables else empty,
        task=detail.task_frame(eng, power) if "task" in tables else empty,
        service=detail.service_frame(eng, power) if "service" in tables else empty,
    )
