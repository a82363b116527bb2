"""Window accumulation as pure logic (no Kafka, no clock): events and heartbeats in, closed windows out.

Windows are half-open ``[start, end)`` of ``window_ms``, aligned to multiples of the window size since the
epoch (DESIGN §5). The watermark is the minimum, over every input source (topic-partition), of the latest
heartbeat or event time seen there; a source that sent its final heartbeat no longer holds it back. A
window closes when the watermark reaches its end; every window between the first event and the watermark
is emitted, empty or not, so the engine's clock advances through gaps.

Duplicates (a task id seen before, a fragment index not above the last one of its task, a power sample not
after the last one of its source) are dropped and counted; they never double a window. An event older than
the closed horizon (a broken heartbeat promise) is not lost: it joins the next window to close, counted as
late.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from opendt.models.messages import FragmentRow, PowerRow, TaskRow

FINAL = 2**62


@dataclass
class Window:
    start_ms: int
    end_ms: int
    tasks: list[TaskRow] = field(default_factory=list)
    fragments: list[FragmentRow] = field(default_factory=list)
    power: list[PowerRow] = field(default_factory=list)
    final: bool = False
    """The last window of the stream (the final heartbeat closed it)."""

    @property
    def empty(self) -> bool:
        return not (self.tasks or self.fragments or self.power)


@dataclass
class WindowStats:
    events: int = 0
    duplicates: int = 0
    late: int = 0
    windows_closed: int = 0


def window_start(t_ms: int, window_ms: int) -> int:
    return (t_ms // window_ms) * window_ms


class Windower:
    """Accumulates events per window and closes windows as the watermark advances.

    ``sources`` are the inputs that hold the watermark (e.g. ``("dc.fragments", 0)``); a source that has
    not been heard from yet holds it at "unknown", so nothing closes before every source has spoken.
    """

    def __init__(self, window_ms: int, sources: list[Hashable]) -> None:
        if window_ms <= 0:
            raise ValueError("window_ms must be > 0")
        if not sources:
            raise ValueError("at least one source is needed")
        self.window_ms = window_ms
        self._latest: dict[Hashable, int | None] = dict.fromkeys(sources)
        self._open: dict[int, Window] = {}
        self._next_start: int | None = None  # start of the earliest window not yet closed
        self._task_ids: set[str] = set()
        self._last_index: dict[str, int] = {}
        self._last_power: dict[str, int] = {}
        self.stats = WindowStats()
        self.finished = False

    # -- inputs ------------------------------------------------------------------------------------------

    @property
    def watermark_ms(self) -> int | None:
        """The event time every source has reached (None before each has spoken). Once every source has
        ended, the end of the last closed window (not the internal end-of-stream marker)."""
        values = list(self._latest.values())
        if any(v is None for v in values):
            return None
        wm = min(v for v in values if v is not None)
        if wm >= FINAL and self._next_start is not None:
            return self._next_start
        return wm

    def _seen(self, source: Hashable, t_ms: int) -> None:
        if source not in self._latest:
            raise KeyError(f"unknown source {source!r}")
        prev = self._latest[source]
        if prev is None or t_ms > prev:
            self._latest[source] = t_ms

    def heartbeat(self, source: Hashable, t_ms: int, *, final: bool = False) -> None:
        self._seen(source, FINAL if final else t_ms)
        if final:
            self._touch(t_ms)

    def _touch(self, t_ms: int) -> None:
        start = window_start(t_ms, self.window_ms)
        if self._next_start is None or (start < self._next_start and not self.stats.windows_closed):
            self._next_start = start

    def _window_for(self, t_ms: int) -> Window:
        self._touch(t_ms)
        start = window_start(t_ms, self.window_ms)
        assert self._next_start is not None
        if start < self._next_start:  # older than what was already closed: join the next window
            self.stats.late += 1
            start = self._next_start
        w = self._open.get(start)
        if w is None:
            w = self._open[start] = Window(start, start + self.window_ms)
        return w

    def add_task(self, source: Hashable, row: TaskRow) -> bool:
        """Add a task; returns False (and counts) for a duplicate."""
        self._seen(source, row.submission_ms)
        if row.id in self._task_ids:
            self.stats.duplicates += 1
            return False
        self._task_ids.add(row.id)
        self.stats.events += 1
        self._window_for(row.submission_ms).tasks.append(row)
        return True

    def add_fragment(self, source: Hashable, row: FragmentRow) -> bool:
        self._seen(source, row.submission_ms)
        last = self._last_index.get(row.id, -1)
        if row.position <= last:
            self.stats.duplicates += 1
            return False
        self._last_index[row.id] = row.position
        self.stats.events += 1
        self._window_for(row.submission_ms).fragments.append(row)
        return True

    def add_power(self, source: Hashable, row: PowerRow) -> bool:
        self._seen(source, row.timestamp_ms)
        last = self._last_power.get(row.source)
        if last is not None and row.timestamp_ms <= last:
            self.stats.duplicates += 1
            return False
        self._last_power[row.source] = row.timestamp_ms
        self.stats.events += 1
        self._window_for(row.timestamp_ms).power.append(row)
        return True

    # -- output ------------------------------------------------------------------------------------------

    def close_ready(self) -> list[Window]:
        """Every window whose end is ≤ the watermark, in order (empty ones included)."""
        wm = self.watermark_ms
        if wm is None or self._next_start is None:
            return []
        all_final = all(v == FINAL for v in self._latest.values())
        last_end = None
        if all_final:
            ends = [w.end_ms for w in self._open.values()]
            last_end = max([*ends, self._next_start])
            wm = last_end
        out: list[Window] = []
        while self._next_start + self.window_ms <= wm:
            start = self._next_start
            w = self._open.pop(start, None) or Window(start, start + self.window_ms)
            self._next_start = start + self.window_ms
            if all_final and w.end_ms == last_end:
                w.final = True
            self.stats.windows_closed += 1
            out.append(w)
        if all_final:
            self.finished = True
        return out
