"""Physical topologies (``dc.topology``) waiting for their time (pure logic): the windower's list, and the
consumer's admission of one into it (the time gate's verdict, a bounded list).

The list is ordered by time (then arrival); the latest entry whose time is ≤ a closing window's start applies
from that window (the first one received from the first window). At most ``MAX_PENDING_TOPOLOGIES`` wait: a
full list drops its furthest-future entry for a nearer one, so topologies dated 2199 cannot lock real changes
out. Two with one timestamp and other content are a conflict (counted, logged; the later applies).
"""

from __future__ import annotations

import bisect

from opendt.models.topology import Topology

MAX_PENDING_TOPOLOGIES = 16  # physical topologies dated ahead that may wait for their time


class PendingTopologies:
    """Topologies received, not yet in effect, by time (see the module's doc)."""

    def __init__(self) -> None:
        self._waiting: list[tuple[int, int, Topology]] = []  # (time, arrival, topology), by time
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, t_ms: int, topology: Topology) -> bool:
        """Add one; False when one with the same time and other content waits already (a conflict)."""
        conflict = any(t == t_ms and topo != topology for t, _, topo in self._waiting)
        self._arrivals += 1
        bisect.insort(self._waiting, (t_ms, self._arrivals, topology), key=lambda x: (x[0], x[1]))
        return not conflict

    def evict_furthest(self, before_ms: int) -> int | None:
        """Drop the entry dated furthest ahead when it is later than ``before_ms``; its time, or None."""
        if self._waiting and self._waiting[-1][0] > before_ms:
            return self._waiting.pop()[0]
        return None

    def take(self, start_ms: int, *, first: bool) -> tuple[int, Topology] | None:
        """The topology that applies from a window starting at ``start_ms`` (the latest one dated at or before
        it; with ``first``, no topology being in effect yet, the earliest one at least), dropping it and those
        before it; None when none applies."""
        k = bisect.bisect_right([t for t, _, _ in self._waiting], start_ms)
        if k == 0 and first and self._waiting:
            k = 1
        if not k:
            return None
        t_ms, _, topology = self._waiting[k - 1]
        del self._waiting[:k]
        return t_ms, topology
