"""Perfect scaling (OPENDC_SEMANTICS §5.4, §10.2.3): a fluid model where fragments stretch under contention.

A fragment's work is ``demand × duration``; it progresses at its supply, which is the host's max-min
water-filling share (``MaxMinFairnessFlowDistributor.distributeSupply``). Whenever something changes on a
host, every task there is brought up to date (``work −= supply × Δt``), supplies are recomputed, and
each fragment's end is ``now + (long)(work / supply)``. A fragment with no work (zero demand or zero
duration) ends at once, as in ``SimTraceWorkload.onUpdate``. Placement is the same sequential scheduler;
completions come from the fluid model, so both are interleaved event by event. Power still follows the
hosts' summed demand, so the demand segments feed the usual exact integration.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

import numpy as np

from .placement import NEVER
from .segments import SegmentSet

if TYPE_CHECKING:
    from .engine import Engine


def max_min(demands: list[float], capacity: float) -> list[float]:
    """OpenDC's water-filling: ascending demands, each gets min(demand, remaining / consumers left)."""
    total = sum(demands)
    if total <= capacity:
        return list(demands)
    order = sorted(range(len(demands)), key=lambda i: demands[i])
    out = [0.0] * len(demands)
    avail = capacity
    n = len(demands)
    for k, i in enumerate(order):
        d = demands[i]
        if d == 0.0:
            continue
        r = min(d, avail / (n - k))
        out[i] = r
        avail -= r
    return out


class _Run:
    """One running task: its fragments, current index, remaining work, demand and supply."""

    __slots__ = ("demand", "durs", "frag", "seg_start", "supply", "task", "uses", "work")

    def __init__(self, task: int, durs: list[int], uses: list[float]) -> None:
        self.task = task
        self.durs = durs
        self.uses = uses
        self.frag = -1
        self.work = 0.0
        self.demand = 0.0
        self.supply = 0.0
        self.seg_start = 0


class Fluid:
    """Per-host fluid state plus the demand segments produced so far."""

    def __init__(self, eng: Engine, durs: dict[int, list[int]], uses: dict[int, list[float]]) -> None:
        self.eng = eng
        self.durs = durs
        self.uses = uses
        self.cap = eng.hosts.capacity
        self.runs: dict[int, list[_Run]] = {}
        self.last: dict[int, int] = {}
        self.version: dict[int, int] = {}
        self.heap: list[tuple[int, int, int]] = []
        self.out: list[tuple[int, int, int, float, int]] = []

    def _close(self, h: int, r: _Run, t: int) -> None:
        if t > r.seg_start and r.demand != 0.0:
            self.out.append((h, r.seg_start, t, r.demand, r.task))

    def _advance_to(self, h: int, t: int) -> None:
        dt = t - self.last.get(h, t)
        if dt > 0:
            for r in self.runs.get(h, []):
                r.work -= r.supply * dt
        self.last[h] = t

    def _next_fragment(self, h: int, r: _Run, t: int) -> bool:
        """Start the next fragment with work at ``t``; False when the task has none left."""
        self._close(h, r, t)
        while True:
            r.frag += 1
            if r.frag >= len(r.durs):
                return False
            r.demand = r.uses[r.frag]
            r.work = r.demand * r.durs[r.frag]
            r.seg_start = t
            if r.work > 0:
                return True

    def add(self, task: int, h: int, t: int) -> None:
        """A task placed on ``h`` at ``t`` starts its first fragment."""
        self._advance_to(h, t)
        self.runs.setdefault(h, []).append(_Run(task, self.durs[task], self.uses[task]))
        self._settle(h, t)

    def update(self, h: int, t: int) -> None:
        """Bring host ``h`` to ``t`` and finish what is due."""
        self._advance_to(h, t)
        self._settle(h, t)

    def _settle(self, h: int, t: int) -> None:
        runs = self.runs[h]
        while True:
            finished = [
                r for r in runs if r.frag < 0 or r.work <= 0 or (r.supply > 0 and int(r.work / r.supply) == 0)
            ]
            if not finished:
                break
            for r in finished:
                if not self._next_fragment(h, r, t):
                    runs.remove(r)
                    self.eng.sched.complete(r.task, t)
            supplies = max_min([r.demand for r in runs], float(self.cap[h]))
            for r, s in zip(runs, supplies, strict=True):
                r.supply = s
        supplies = max_min([r.demand for r in runs], float(self.cap[h]))
        nxt = NEVER
        for r, s in zip(runs, supplies, strict=True):
            r.supply = s
            if s > 0:
                nxt = min(nxt, t + int(r.work / s))
        v = self.version.get(h, 0) + 1
        self.version[h] = v
        if nxt < NEVER:
            heapq.heappush(self.heap, (nxt, v, h))

    def next_time(self) -> int:
        while self.heap and self.version.get(self.heap[0][2]) != self.heap[0][1]:
            heapq.heappop(self.heap)
        return self.heap[0][0] if self.heap else NEVER

    def pop_due(self, t: int) -> list[int]:
        hosts = []
        while self.heap and self.heap[0][0] == t:
            _, v, h = heapq.heappop(self.heap)
            if self.version.get(h) == v:
                hosts.append(h)
        return hosts

    def segments(self) -> SegmentSet:
        if not self.out:
            return SegmentSet.empty()
        h, s, e, d, k = zip(*self.out, strict=True)
        i64 = np.int64
        return SegmentSet(np.array(h, i64), np.array(s, i64), np.array(e, i64), np.array(d), np.array(k, i64))


def run_perfect(eng: Engine) -> None:
    """Run placement and the fluid model to the end; leaves the demand segments in ``eng.segs``."""
    f = eng.frags
    order = np.lexsort((f.offset, f.task))
    task, dur, use = f.task[order], f.dur[order], f.use[order]
    bounds = np.flatnonzero(np.r_[True, task[1:] != task[:-1], True])
    durs: dict[int, list[int]] = {}
    uses: dict[int, list[float]] = {}
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        durs[int(task[a])] = dur[a:b].tolist()
        uses[int(task[a])] = use[a:b].tolist()
    sched = eng.sched
    sched.external_completions = True
    fluid = Fluid(eng, durs, uses)
    while True:
        t = min(sched.next_event(), fluid.next_time())
        if t >= NEVER:
            break
        for h in fluid.pop_due(t):
            fluid.update(h, t)
        sched.step(t)
        placed, sched.placed = sched.placed, []
        for k in placed:
            fluid.add(k, sched.host[k], t)
    eng.segs = fluid.segments()
    eng.sched.shared[:] = True
