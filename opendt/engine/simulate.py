"""One-shot, OpenDC-compatible runs: the four output tables.

:func:`simulate` takes and returns polars frames (the library API). The CLI uses its steps on numpy
inputs (:func:`one_shot_engine`, ``Engine.ingest``, :func:`run_one_shot`): the inputs are dropped once
ingested, and the tables are built on demand as :class:`~opendt.engine.table.Table` objects, so each file
is written and dropped before the next is built, without importing polars.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .carbon import CarbonTrace
from .engine import Engine
from .segments import FragmentStore, SegmentSet
from .table import Table, height, to_polars
from .table import rows as table_rows

if TYPE_CHECKING:
    import polars as pl

    from .topology import TopologyLike

Scaling = Literal["NoDelay", "Perfect"]
KINDS = ("powerSource", "host", "task", "service")


@dataclass(frozen=True)
class SimulationResult:
    """OpenDC's output tables (float64 in memory; cast to float32 when written as OpenDC files)."""

    power_source: pl.DataFrame
    host: pl.DataFrame
    task: pl.DataFrame
    service: pl.DataFrame


class OneShot:
    """A finished one-shot run; :meth:`table` builds an output table."""

    def __init__(self, eng: Engine, power: Table, segs: SegmentSet | None) -> None:
        self.eng = eng
        self.power = power
        self.segs = segs

    def parts(self, kind: str, rows: int = 1 << 18, *, last: bool = False) -> Iterator[Table]:
        """:meth:`table` in parts of about ``rows`` rows (the host table is built part by part).

        ``last``: no table is built after this one, so the demand segments are dropped once used.
        """
        from . import detail

        if kind != "host" or self.segs is None:
            table = self.table(kind)
            n = height(table)
            for lo in range(0, max(n, 1), rows):
                yield table_rows(table, lo, min(lo + rows, n))
            return
        hs = detail.host_series(self.eng, self.power, self._take_segments() if last else self.segs)
        step = max(1, rows // max(1, hs.hosts.n))
        for lo in range(0, max(hs.n_instants, 1), step):
            yield detail.host_rows(hs, lo, min(lo + step, hs.n_instants))

    def _take_segments(self) -> SegmentSet:
        """The segments, no longer kept here (whoever uses them last frees them)."""
        segs = self.segs
        assert segs is not None
        self.segs = None
        return segs

    def table(self, kind: str) -> Table:
        """``powerSource``, ``host`` (needs the segments kept), ``task`` or ``service``."""
        from . import detail

        if kind == "powerSource":
            return self.power
        if kind == "host":
            if self.segs is None:
                raise ValueError("the host table was not requested")
            return detail.host_table(self.eng, self.power, self.segs)
        if kind == "task":
            return detail.task_table(self.eng, self.power, self.segs)
        if kind == "service":
            return detail.service_table(self.eng, self.power)
        raise ValueError(f"unknown output table {kind!r}")


def one_shot_engine(
    topology: TopologyLike,
    *,
    export_interval_ms: int,
    scaling: str = "NoDelay",
    carbon: pl.DataFrame | None = None,
    carbon_by_cluster: list[CarbonTrace | None] | None = None,
    tables: frozenset[str] = frozenset(KINDS),
) -> Engine:
    """An engine for a one-shot run: ingest the whole trace (``merge=merge_fragments(scaling)``), then
    :func:`run_one_shot`."""
    if scaling not in ("NoDelay", "Perfect"):
        raise ValueError(f"unknown scalingPolicy {scaling!r}")
    eng = Engine(
        topology,
        export_interval_ms=export_interval_ms,
        carbon=carbon,
        streaming=False,
        carbon_by_cluster=carbon_by_cluster,
        activity=False,  # OpenDC's powerSource columns only
    )
    eng.frags = FragmentStore(archive=False)
    eng.history = [] if {"host", "task"} & tables else None  # their tables need the demand segments
    return eng


def merge_fragments(scaling: str) -> bool:
    """Whether ingestion may merge equal-usage fragments: not under Perfect, where each fragment's end is
    truncated to the ms on its own."""
    return scaling == "NoDelay"


def run_one_shot(eng: Engine, scaling: str) -> OneShot:
    """Run an ingested one-shot engine to the end with OpenDC's semantics (all-zero tasks complete
    instantly)."""
    if scaling == "Perfect":
        from .perfect import run_perfect

        run_perfect(eng)
        if eng.history is not None:
            eng.history.append(eng.segs)
        eng.finished = True
        if eng.t0 is not None:
            power = eng.integrate(max(eng.sched.end_time(), 0), final=True)
        else:
            eng.finished = False
            power = eng.finish_table()
    else:
        power = eng.finish_table()
    segs = None if eng.history is None else SegmentSet.concat_all(eng.history)
    eng.history = None
    return OneShot(eng, power, segs)


def simulate(
    topology: TopologyLike,
    tasks: pl.DataFrame,
    fragments: pl.DataFrame,
    *,
    export_interval_ms: int,
    carbon: pl.DataFrame | None = None,
    scaling: Scaling = "NoDelay",
    carbon_by_cluster: list[CarbonTrace | None] | None = None,
    tables: frozenset[str] = frozenset(KINDS),
) -> SimulationResult:
    """Run the whole trace at once with OpenDC's semantics (all-zero tasks complete instantly)."""
    import polars as pl

    eng = one_shot_engine(
        topology,
        export_interval_ms=export_interval_ms,
        scaling=scaling,
        carbon=carbon,
        carbon_by_cluster=carbon_by_cluster,
        tables=tables,
    )
    eng.ingest_frames(tasks, fragments, merge=merge_fragments(scaling))
    run = run_one_shot(eng, scaling)
    frames = [to_polars(run.table(k)) if k in tables else pl.DataFrame() for k in KINDS]
    return SimulationResult(*frames)
