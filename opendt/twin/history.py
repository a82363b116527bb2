"""The twin's recent past, kept for warm-started runs (what-if, optimizer): window inputs, engine snapshots.

A :class:`TwinHistory` is a simulator hook (:class:`~opendt.twin.loop.WindowHooks`): after each window it
keeps the window's tasks and fragments and, every ``snapshot_every_ms`` of trace time, a snapshot of the
twin's engine taken at the window's end (with the running tasks' fragments, so a warm start may change the
host structure). Everything older than ``retention_ms`` behind the newest window is dropped, so memory is
bounded by the retention, not by the length of the run.

A run over ``[start, end)`` starts from the newest snapshot at or before ``start`` (or from a fresh engine
when ``start`` is not after the twin's first window), replays the kept inputs from there, and switches
topology at ``start`` (see :mod:`opendt.worker.warm`).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import polars as pl
import structlog

from opendt.stream.windowing import Window
from opendt.workload import carbon_frame

log = structlog.get_logger(component="history")

Snapshot = Callable[[], Awaitable[bytes]]


class HistoryGap(ValueError):
    """The requested range is not (or no longer) covered by the kept history; the message says what is."""


@dataclass
class _Kept:
    start_ms: int
    end_ms: int
    tasks: pl.DataFrame
    fragments: pl.DataFrame
    carbon: pl.DataFrame


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
    def __init__(self, snapshot: Snapshot, *, retention_ms: int, snapshot_every_ms: int) -> None:
        if snapshot_every_ms <= 0 or retention_ms <= 0:
            raise ValueError("retention_ms and snapshot_every_ms must be > 0")
        self.snapshot = snapshot
        self.retention_ms = retention_ms
        self.snapshot_every_ms = snapshot_every_ms
        self.first_start_ms: int | None = None
        self.last_end_ms: int | None = None
        self._kept: deque[_Kept] = deque()
        self._snap_at: list[int] = []
        self._snap_blob: list[bytes] = []
        self.snapshot_failures = 0

    # -- simulator hooks ---------------------------------------------------------------------------------

    async def before_window(self, w: Window) -> None:
        return None

    async def after_window(
        self, w: Window, tasks: pl.DataFrame, fragments: pl.DataFrame, *, replayed: bool = False
    ) -> None:
        if self.first_start_ms is None:
            self.first_start_ms = w.start_ms
        self._kept.append(_Kept(w.start_ms, w.end_ms, tasks, fragments, carbon_frame(w.carbon)))
        self.last_end_ms = w.end_ms
        horizon = w.end_ms - self.retention_ms
        while self._kept and self._kept[0].end_ms <= horizon:
            self._kept.popleft()
        # a snapshot is useful while windows after it are still kept
        cut = bisect.bisect_left(self._snap_at, horizon)
        if cut:
            del self._snap_at[:cut], self._snap_blob[:cut]
        if w.final or w.end_ms // self.snapshot_every_ms == w.start_ms // self.snapshot_every_ms:
            return  # a snapshot at the end of each window that reaches or crosses a multiple of the interval
        try:
            blob = await self.snapshot()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - what-ifs from here start at the previous snapshot instead
            self.snapshot_failures += 1
            log.warning("history_snapshot_failed", at_ms=w.end_ms, error=str(e))
            return
        self._snap_at.append(w.end_ms)
        self._snap_blob.append(blob)

    # -- queries -----------------------------------------------------------------------------------------

    @property
    def earliest_ms(self) -> int | None:
        """The earliest ``start`` a run can have now (None = nothing simulated yet)."""
        if self.first_start_ms is None or not self._kept:
            return None
        if self._kept[0].start_ms == self.first_start_ms:
            return self.first_start_ms
        return self._snap_at[0] if self._snap_at else None

    def view(self) -> dict[str, object]:
        return {
            "earliest_ms": self.earliest_ms,
            "latest_ms": self.last_end_ms,
            "windows_kept": len(self._kept),
            "snapshots": len(self._snap_at),
            "snapshot_bytes": sum(len(b) for b in self._snap_blob),
            "snapshot_failures": self.snapshot_failures,
        }

    def base(self, start_ms: int, end_ms: int) -> Base:
        """The warm-start base for a run over ``[start_ms, end_ms)``; :class:`HistoryGap` when not covered."""
        earliest = self.earliest_ms
        if earliest is None or self.last_end_ms is None:
            raise HistoryGap("the twin has simulated no window yet")
        if end_ms > self.last_end_ms:
            raise HistoryGap(f"end is after the twin's last simulated window (it ends at {self.last_end_ms})")
        if start_ms < earliest:
            raise HistoryGap(f"start is before the kept history (the earliest start is {earliest})")
        i = bisect.bisect_right(self._snap_at, start_ms)
        assert self.first_start_ms is not None
        if i:
            at, blob = self._snap_at[i - 1], self._snap_blob[i - 1]
        else:
            at, blob = self.first_start_ms, None
        kept = [k for k in self._kept if k.start_ms >= at and k.start_ms < end_ms]
        if not kept:
            raise HistoryGap("no kept window overlaps the range")
        tasks = pl.concat([k.tasks for k in kept], how="vertical_relaxed")
        fragments = pl.concat([k.fragments for k in kept], how="vertical_relaxed")
        carbon = pl.concat([k.carbon for k in kept], how="vertical_relaxed")
        return Base(at, blob, tasks, fragments, carbon)
