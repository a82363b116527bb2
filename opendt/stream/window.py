"""A window as the consumer closes it: its span, the events it carries (fragments also a fetch at a time, as
frames), the series steps and the physical topology that apply from it; and the window arithmetic."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from opendt.models.messages import CarbonRow, FragmentRow, PowerRow, TaskRow
from opendt.models.topology import Topology
from opendt.workload import FRAGMENT_SCHEMA, TASK_SCHEMA


@dataclass
class Window:
    start_ms: int
    end_ms: int
    tasks: list[TaskRow] = field(default_factory=list)
    fragments: list[FragmentRow] = field(default_factory=list)
    power: list[PowerRow] = field(default_factory=list)
    carbon: list[CarbonRow] = field(default_factory=list)
    """Carbon-intensity steps received up to the window's end and not carried by an earlier window."""
    topology: Topology | None = None
    """A new physical topology in effect from this window on (None: unchanged)."""
    topology_ms: int | None = None
    """The time of the ``dc.topology`` message that brought ``topology``."""
    final: bool = False
    """The last window of the stream (the final heartbeat closed it)."""
    chunks: list[pl.DataFrame] = field(default_factory=list)
    """Fragments added a fetch at a time (``FRAGMENT_SCHEMA``), before those in ``fragments``."""

    @property
    def empty(self) -> bool:
        return not (self.tasks or self.fragments or self.power or self.chunks)

    def add_chunk(self, frame: pl.DataFrame) -> None:
        """Fragments of one fetch, in arrival order after those added before (rows or chunks)."""
        if self.fragments:
            self.chunks.append(pl.DataFrame(self.fragments, schema=FRAGMENT_SCHEMA, orient="row"))
            self.fragments = []
        self.chunks.append(frame)

    def fragment_frame(self) -> pl.DataFrame:
        """All the window's fragments in arrival order (``FRAGMENT_SCHEMA``); the engine puts them in its own
        order (:meth:`opendt.engine.Engine.advance`)."""
        rows = pl.DataFrame(self.fragments, schema=FRAGMENT_SCHEMA, orient="row")
        if not self.chunks:
            return rows
        return pl.concat([*self.chunks, rows]) if self.fragments else pl.concat(self.chunks)

    def fragment_rows(self) -> list[FragmentRow]:
        if not self.chunks:
            return list(self.fragments)
        return [FragmentRow(*r) for r in self.fragment_frame().iter_rows()]

    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The tasks and fragments (``TASK_SCHEMA``, ``FRAGMENT_SCHEMA``) as the engine takes them."""
        return pl.DataFrame(self.tasks, schema=TASK_SCHEMA, orient="row"), self.fragment_frame()

    @property
    def n_fragments(self) -> int:
        return sum(c.height for c in self.chunks) + len(self.fragments)


def window_start(t_ms: int, window_ms: int) -> int:
    return (t_ms // window_ms) * window_ms


def carry_carbon(windows: list[Window], steps: Iterable[CarbonRow]) -> None:
    """Give ``windows`` (in order) the carbon steps as the consumer does: each the steps up to its end not
    carried by an earlier one (the first also those before it, the final one the rest)."""
    ordered = sorted(steps, key=lambda c: c.timestamp_ms)
    times = [c.timestamp_ms for c in ordered]
    lo = 0
    for w in windows:
        hi = len(ordered) if w.final else bisect.bisect_right(times, w.end_ms)
        if hi > lo:
            w.carbon = ordered[lo:hi]
            lo = hi
