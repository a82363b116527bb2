"""The twin's past, for warm-started runs (what-if, optimizer): read from disk, never kept in memory.

A run over ``[start, end)`` starts from the newest checkpoint at or before ``start`` (its engine snapshot,
with the running tasks' fragments, so a warm start may change the host structure;
:mod:`opendt.twin.checkpoint`), or from a fresh engine when ``start`` is not after the twin's first window
(and that window's inputs are still stored), and replays the stored window inputs from there
(:mod:`opendt.twin.inputs`), switching topology at ``start`` (see :mod:`opendt.worker.warm`). The reach back
is what the input store and the checkpoints keep (``api.whatif_max_range_s`` behind the newest window, and
more); this object holds only the run's first and last window instants, so memory does not grow with the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import structlog

from opendt.stream.windowing import Window
from opendt.twin.checkpoint import Checkpoints
from opendt.twin.inputs import InputStore, InputUnreadable

log = structlog.get_logger(component="history")


class HistoryGap(ValueError):
    """The requested range is not (or no longer) covered by the kept history; the message says what is."""


@dataclass
class Base:
    """Where a warm-started run begins: a snapshot at ``at_ms`` (None: a fresh engine at the first window)."""

    at_ms: int
    blob: bytes | None
    tasks: pl.DataFrame
    fragments: pl.DataFrame
    carbon: pl.DataFrame
    """The carbon-intensity steps the windows from ``at_ms`` on carried."""


class TwinHistory:
    batch_safe = True
    """It only notes the windows' span (:mod:`opendt.twin.batch`)."""

    def __init__(self, inputs: InputStore, checkpoints: Checkpoints) -> None:
        self.inputs = inputs
        self.checkpoints = checkpoints
        self.first_start_ms: int | None = None
        self.last_end_ms: int | None = None

    def resume(self, first_start_ms: int | None, last_end_ms: int | None) -> None:
        """The run's first and last durable windows (a restarted twin)."""
        self.first_start_ms, self.last_end_ms = first_start_ms, last_end_ms

    # -- window hooks ------------------------------------------------------------------------------------

    async def before_window(self, w: Window) -> None:
        return None

    async def after_window(
        self, w: Window, tasks: pl.DataFrame, fragments: pl.DataFrame, *, replayed: bool = False
    ) -> None:
        if self.first_start_ms is None:
            self.first_start_ms = w.start_ms
        self.last_end_ms = w.end_ms if self.last_end_ms is None else max(self.last_end_ms, w.end_ms)

    # -- queries -----------------------------------------------------------------------------------------

    @property
    def earliest_ms(self) -> int | None:
        """The earliest ``start`` a run can have now (None = nothing simulated yet)."""
        stored = self.inputs.starts
        if self.first_start_ms is None or not stored:
            return None
        if stored[0] <= self.first_start_ms:
            return self.first_start_ms
        usable = [a for a in self.checkpoints.instants if a >= stored[0]]
        return usable[0] if usable else None

    def view(self) -> dict[str, object]:
        return {
            "earliest_ms": self.earliest_ms,
            "latest_ms": self.last_end_ms,
            "windows_kept": len(self.inputs.starts),
            "checkpoints": len(self.checkpoints.instants),
        }

    def base(self, start_ms: int, end_ms: int) -> Base:
        """The warm-start base for a run over ``[start_ms, end_ms)`` (reads files: call it in a thread);
        :class:`HistoryGap` when the range is not covered."""
        earliest = self.earliest_ms
        if earliest is None or self.last_end_ms is None or self.first_start_ms is None:
            raise HistoryGap("the twin has simulated no window yet")
        if end_ms > self.last_end_ms:
            raise HistoryGap(f"end is after the twin's last simulated window (it ends at {self.last_end_ms})")
        if start_ms < earliest:
            raise HistoryGap(f"start is before the kept history (the earliest start is {earliest})")
        ckpt = self.checkpoints.at_or_before(start_ms)
        if ckpt is not None and ckpt.at_ms >= earliest:
            at, blob = ckpt.at_ms, ckpt.engine_blob()
        else:
            at, blob = self.first_start_ms, None
        try:
            frames = self.inputs.frames(at, end_ms)
        except InputUnreadable as e:  # a damaged stored window: the range cannot be simulated as it was
            raise HistoryGap(f"a stored window of the range does not read back: {e}") from None
        if (
            frames["tasks"].is_empty()
            and frames["fragments"].is_empty()
            and not self.inputs.between(at, end_ms)
        ):
            raise HistoryGap("no kept window overlaps the range")
        return Base(at, blob, frames["tasks"], frames["fragments"], frames["carbon"])
