"""The RamWeigher's choice without a scan of every host: hosts bucketed by class and free cores.

The Mem policy (placement.py) places a task of ``c`` cores and ``m`` memory on the host with the most
available memory among those with ``free ≥ c``, ``capacity ≥ m`` and ``slack + available ≥ m`` (lowest
index on ties). A scan costs time linear in the hosts for every placement, so a run costs hosts × tasks:
quadratic in the size of a datacenter whose workload grows with it. Here hosts with the same cores and
memory capacity form a class (a host group usually is one); within a class, the hosts of each free-core
count sit in a heap ordered by (−available, index). The best host of a bucket is its heap's top, and the
memory filters hold for the top whenever they hold for any host of the bucket (slack and capacity are those
of the class; ``slack + available`` grows with the available memory), so a placement looks at one top per
(class, free cores) bucket: independent of the number of hosts. The answer is the scan's, float
comparisons included (tests/engine/test_placement_index.py compares both on random operations).

Heaps are updated lazily: a host whose free cores or memory change gets a new entry, and entries that no
longer match the host's state are dropped when they reach the top; the heaps are rebuilt when stale
entries outnumber the hosts, so memory stays linear in the hosts. With more than :data:`MAX_BUCKETS`
buckets (many distinct host shapes) :meth:`HostIndex.pick` returns None and the caller scans.
"""

from __future__ import annotations

import heapq

import numpy as np
import numpy.typing as npt

from .power import F64, I64

MAX_BUCKETS = 256
"""Beyond this many (class, free cores) buckets a scan over the hosts is as cheap: the caller scans."""


class HostIndex:
    """Hosts ``members`` (all when None) by class and free cores, over the live arrays ``free``/``avail``
    (the caller changes them and calls :meth:`update` for the host it changed)."""

    def __init__(
        self,
        cores: I64,
        mem_cap: F64,
        slack: F64,
        free: I64,
        avail: F64,
        members: I64 | None = None,
    ) -> None:
        self.free = free
        self.avail = avail
        self.members: I64 = np.arange(cores.size, dtype=np.int64) if members is None else members
        shapes: dict[tuple[int, float], int] = {}
        cls = np.full(cores.size, -1, dtype=np.int64)
        if self.members.size:
            m = self.members
            pairs = zip(cores[m].tolist(), mem_cap[m].tolist(), strict=True)
            cls[m] = np.fromiter((shapes.setdefault(p, len(shapes)) for p in pairs), np.int64, m.size)
        self.cls = cls
        first = np.zeros(len(shapes), dtype=np.int64)  # a member of each class (its slack is the class's)
        if self.members.size:
            _, at = np.unique(cls[self.members], return_index=True)
            first = self.members[at]
        self.classes: list[tuple[int, float, float]] = [
            (c, cap, float(slack[int(first[k])])) for (c, cap), k in shapes.items()
        ]
        self.buckets: list[dict[int, list[tuple[float, int]]]] = [{} for _ in self.classes]
        self.n_buckets = 0
        self.entries = 0
        self.rebuild()

    def rebuild(self) -> None:
        """Heaps from the hosts' current state (one entry per host)."""
        m = self.members
        self.buckets = [{} for _ in self.classes]
        self.entries = int(m.size)
        self.n_buckets = 0
        if not m.size:
            return
        order = np.lexsort((self.free[m], self.cls[m]))
        hosts = m[order]
        cls, free = self.cls[hosts], self.free[hosts]
        change = (cls[1:] != cls[:-1]) | (free[1:] != free[:-1])
        starts = np.flatnonzero(np.r_[True, change])
        ends = np.r_[starts[1:], hosts.size]
        neg = (-self.avail[hosts]).tolist()
        ids = hosts.tolist()
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            heap = list(zip(neg[s:e], ids[s:e], strict=True))
            heapq.heapify(heap)
            self.buckets[int(cls[s])][int(free[s])] = heap
        self.n_buckets = starts.size

    @property
    def usable(self) -> bool:
        return self.n_buckets <= MAX_BUCKETS

    def update(self, h: int) -> None:
        """Host ``h``'s free cores or available memory changed."""
        k = int(self.cls[h])
        if k < 0:
            return
        buckets, f = self.buckets[k], int(self.free[h])
        heap = buckets.get(f)
        if heap is None:
            heap = buckets[f] = []
            self.n_buckets += 1
        heapq.heappush(heap, (-float(self.avail[h]), h))
        self.entries += 1
        if self.entries > 2 * self.members.size + 4096:
            self.rebuild()

    def pick(self, c: int, m: float) -> int | None:
        """The host a task of ``c`` cores and ``m`` memory goes to (−1: none passes the filters); None when
        there are too many buckets (the caller scans)."""
        if not self.usable:
            return None
        best: tuple[float, int] | None = None
        free, avail = self.free, self.avail
        for k, (cores, cap, slack) in enumerate(self.classes):
            if cores < c or not cap >= m:
                continue
            buckets = self.buckets[k]
            empty = []
            for f, heap in buckets.items():
                if f < c:
                    continue
                while heap:
                    neg, h = heap[0]
                    if free[h] == f and avail[h] == -neg:
                        break
                    heapq.heappop(heap)
                    self.entries -= 1
                if not heap:
                    empty.append(f)
                    continue
                top = heap[0]
                if slack + -top[0] >= m and (best is None or top < best):
                    best = top
            for f in empty:
                del buckets[f]
            self.n_buckets -= len(empty)
        return -1 if best is None else best[1]


def scan(
    c: int,
    m: float,
    free: I64,
    avail: F64,
    mem_fit: npt.NDArray[np.bool_],
    slack: F64,
    allowed: npt.NDArray[np.bool_] | None = None,
) -> int:
    """The same choice by a scan of every host (``mem_fit``: capacity ≥ m per host)."""
    ok = free >= c
    ok &= mem_fit
    ok &= slack + avail >= m
    if allowed is not None:
        ok &= allowed
    h = int(np.where(ok, avail, -np.inf).argmax())
    return h if ok[h] else -1
