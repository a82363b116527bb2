"""Fragments whose task has not been received (pure logic): held for a bounded time and count, then handed
back for the dead-letter topic.

Tasks and fragments come on separate partitions, so a fragment may be read before its task (both belong to
the same window: a task is submitted with its first fragment). Such a fragment is held, not windowed; when its
task arrives it is windowed as if it had just come. A fragment's task can no longer come once the fragment's
window has closed (the task's time is not after its fragment's, so its window has closed as well: it would be
late), so a fragment still held then is an *orphan*: dead-lettered, never simulated (before, 50,000 fragments
of task ids never sent were windowed and held the twin at 411 of 412 windows). At most ``limit`` fragments are
held: one more is dead-lettered at once (a flood of forged fragments cannot grow memory; real fragments held
at that moment are not dropped for it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any, NamedTuple

from opendt.models.messages import FragmentRow


class Held(NamedTuple):
    source: Hashable
    offset: int
    row: FragmentRow


class Orphans:
    """Fragments held until their task arrives or their window closes (see the module's doc)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self._by_task: dict[str, list[Held]] = {}
        self._n = 0
        self._earliest: int | None = None  # the lowest fragment time held (None: nothing held)

    def __len__(self) -> int:
        return self._n

    def hold(self, h: Held) -> bool:
        """Hold a fragment of a task not received; False (nothing held) when ``limit`` are held already."""
        if self._n >= self.limit:
            return False
        self._by_task.setdefault(h.row.id, []).append(h)
        self._n += 1
        t = h.row.submission_ms
        self._earliest = t if self._earliest is None else min(self._earliest, t)
        return True

    def release(self, task: str) -> list[Held]:
        """The fragments held for ``task`` (it has arrived), in arrival order; no longer held."""
        out = self._by_task.pop(task, [])
        self._n -= len(out)
        if not self._n:
            self._earliest = None
        return out

    def expire(self, before_ms: int | None) -> list[Held]:
        """The fragments held with a time before ``before_ms`` (their window has closed; None: all of them,
        the stream has ended), in task order; no longer held."""
        if self._earliest is None or (before_ms is not None and self._earliest >= before_ms):
            return []
        out: list[Held] = []
        keep: dict[str, list[Held]] = {}
        earliest: int | None = None
        for task, held in self._by_task.items():
            for h in held:
                t = h.row.submission_ms
                if before_ms is None or t < before_ms:
                    out.append(h)
                else:
                    keep.setdefault(task, []).append(h)
                    earliest = t if earliest is None else min(earliest, t)
        self._by_task, self._n, self._earliest = keep, self._n - len(out), earliest
        return out


class KnownTasks:
    """The task ids received, each with its latest event time (the task's, or a fragment's windowed since),
    kept until the windows closed are ``horizon_ms`` past it: how long a task's fragments are expected. The
    horizon follows the windows closed, not the newest event read (a partition read far ahead, e.g. a small
    tasks topic read to its end at once, must not make the tasks it holds forgotten)."""

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self._last: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()

    def __contains__(self, task: str) -> bool:
        return task in self._last

    def __len__(self) -> int:
        return len(self._last)

    def touch(self, task: str, t_ms: int) -> None:
        last = self._last.get(task)
        if last is None:
            self._order.append((t_ms, task))
            self._last[task] = t_ms
        elif t_ms > last:
            self._last[task] = t_ms

    def seed(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Tasks and fragments windowed before a restart (rows that start with ``id, submission_ms``)."""
        for r in rows:
            self.touch(r[0], r[1])

    def expire(self, closed_ms: int) -> None:
        """The windows before ``closed_ms`` are closed: forget the tasks not heard of within the horizon."""
        cutoff = closed_ms - self.horizon_ms
        while self._order and self._order[0][0] < cutoff:
            _, task = self._order.popleft()
            last = self._last.get(task)
            if last is not None and last >= cutoff:
                self._order.append((last, task))
            elif last is not None:
                del self._last[task]
