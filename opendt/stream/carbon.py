"""The carbon-intensity steps of ``dc.carbon`` as the windower holds them (pure logic): in time order,
whatever order they arrive in, until a closing window carries them.

A step is inserted where it belongs among the steps not carried yet, so a window gets the intensity in effect
at its time even when the feed sends steps out of order (a step older than the newest one held is not a
duplicate: before, it was dropped, and a forged step dated ahead made every real step after it a "duplicate").
A step at an instant held already is a duplicate (same intensity) or a correction (other intensity: counted as
a conflict, the later one applies, as for physical topologies). A step at or before the end of a window closed
already is *late*: that window used the intensity in effect then (counted and refused: the consumer
dead-letters it), unless it repeats a step carried (a duplicate; carried steps are remembered for
``horizon_ms`` behind the newest carried end) or comes from before a restart's resume point (carried by the
earlier process: a duplicate). What is held is bounded as before: the steps not yet carried, which the time
gate keeps within ``windowing.max_skew_s`` of the carbon partition's time, plus the carried instants of the
horizon.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Literal

from opendt.models.messages import CarbonRow

Verdict = Literal["added", "duplicate", "conflict", "late"]


class CarbonSteps:
    """Carbon steps held in time order until carried (see the module's doc)."""

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self._steps: list[CarbonRow] = []  # not carried yet, by time
        self._carried_until: int | None = None  # the end of the last window that closed (or the final's last)
        self._known_until: int | None = None  # a restart: steps up to it were carried by an earlier process
        self._carried: dict[int, float] = {}  # instants carried, within the horizon → intensity
        self._carried_order: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, row: CarbonRow) -> Verdict:
        """Insert a step in time order (``"added"``, or ``"conflict"`` when it corrects the intensity of an
        instant held), or refuse it (``"duplicate"``, ``"late"``)."""
        t = row.timestamp_ms
        if self._known_until is not None and t <= self._known_until:
            return "duplicate"
        carried = self._carried.get(t)
        if carried is not None:
            return "duplicate" if carried == row.carbon_intensity else "late"
        if self._carried_until is not None and t <= self._carried_until:
            return "late"
        i = bisect.bisect_left(self._steps, t, key=lambda c: c.timestamp_ms)
        if i < len(self._steps) and self._steps[i].timestamp_ms == t:
            if self._steps[i].carbon_intensity == row.carbon_intensity:
                return "duplicate"
            self._steps[i] = row
            return "conflict"
        self._steps.insert(i, row)
        return "added"

    def take(self, end_ms: int, *, final: bool = False) -> list[CarbonRow]:
        """The steps a window ending at ``end_ms`` carries (those up to its end; all of them when it is the
        final window); later steps at or before ``end_ms`` are late from now on."""
        k = len(self._steps)
        if not final:
            k = bisect.bisect_right(self._steps, end_ms, key=lambda c: c.timestamp_ms)
        out = self._steps[:k]
        del self._steps[:k]
        until = max([end_ms, *(c.timestamp_ms for c in out[-1:])])
        self._carried_until = until if self._carried_until is None else max(self._carried_until, until)
        for c in out:
            self._carried[c.timestamp_ms] = c.carbon_intensity
            self._carried_order.append(c.timestamp_ms)
        horizon = self._carried_until - self.horizon_ms
        while self._carried_order and self._carried_order[0] < horizon:
            self._carried.pop(self._carried_order.popleft(), None)
        return out

    def known_until(self, t_ms: int) -> None:
        """Steps up to ``t_ms`` were carried by windows of an earlier process (a restart)."""
        self._known_until = t_ms if self._known_until is None else max(self._known_until, t_ms)
