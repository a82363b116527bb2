"""Fragments waiting for placement, and the demand segments of placed fragments.

NoDelay (OPENDC_SEMANTICS §5.4–5.5): fragment k of a task placed at ``start`` runs on its host during
``[start + Σ_{j<k} d_j, start + Σ_{j≤k} d_j)`` and demands its ``cpu_usage`` whatever it receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .power import F64, I64

_EMPTY_I = np.zeros(0, dtype=np.int64)
_EMPTY_F = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True)
class SegmentSet:
    """Demand segments ``[start, end)`` of ``use`` MHz on ``host``, from fragments of ``task``."""

    host: I64
    start: I64
    end: I64
    use: F64
    task: I64

    @staticmethod
    def empty() -> SegmentSet:
        return SegmentSet(_EMPTY_I, _EMPTY_I, _EMPTY_I, _EMPTY_F, _EMPTY_I)

    @property
    def n(self) -> int:
        return int(self.host.size)

    def _select(self, mask: np.typing.NDArray[np.bool_]) -> SegmentSet:
        return SegmentSet(self.host[mask], self.start[mask], self.end[mask], self.use[mask], self.task[mask])

    def concat(self, other: SegmentSet) -> SegmentSet:
        if self.n == 0:
            return other
        return SegmentSet(
            np.concatenate((self.host, other.host)),
            np.concatenate((self.start, other.start)),
            np.concatenate((self.end, other.end)),
            np.concatenate((self.use, other.use)),
            np.concatenate((self.task, other.task)),
        )

    def keep_after(self, t: int) -> SegmentSet:
        """Segments active at or after ``t − 1`` (the rest is integrated; the left limit at ``t`` stays)."""
        mask = self.end >= t
        return self if mask.all() else self._select(mask)

    def on_hosts(self, n: int) -> SegmentSet:
        """Only the segments on hosts ``0 … n−1`` (after hosts were removed)."""
        mask = self.host < n
        return self if mask.all() else self._select(mask)

    def move_tasks(self, moves: dict[int, int], t: int) -> SegmentSet:
        """Move the segments of the tasks in ``moves`` (task → new host) from ``t`` on; a segment running
        at ``t`` is split there (its part before ``t`` stays on the old host)."""
        if not moves or self.n == 0:
            return self
        tasks = np.fromiter(moves, dtype=np.int64, count=len(moves))
        hosts = np.fromiter(moves.values(), dtype=np.int64, count=len(moves))
        order = np.argsort(tasks)
        tasks, hosts = tasks[order], hosts[order]
        hit = np.isin(self.task, tasks)
        if not hit.any():
            return self
        straddle = hit & (self.start < t) & (self.end > t)
        before = self._select(straddle)
        before = SegmentSet(before.host, before.start, np.full_like(before.end, t), before.use, before.task)
        start = np.where(straddle, t, self.start)
        new_host = hosts[np.searchsorted(tasks, self.task[hit])]
        host = self.host.copy()
        moved = hit & (self.end > t)
        host[hit] = np.where(moved[hit], new_host, host[hit])
        return SegmentSet(host, start, self.end, self.use, self.task).concat(before)

    def stop_tasks(self, tasks: I64, t: int) -> SegmentSet:
        """Cut the segments of ``tasks`` at ``t`` (the tasks were stopped at ``t``)."""
        hit = np.isin(self.task, tasks)
        keep = ~hit | (self.start < t)
        out = self._select(keep)
        end = np.where(np.isin(out.task, tasks), np.minimum(out.end, t), out.end)
        return SegmentSet(out.host, out.start, end, out.use, out.task)

    @staticmethod
    def concat_all(parts: list[SegmentSet]) -> SegmentSet:
        if not parts:
            return SegmentSet.empty()
        if len(parts) == 1:
            return parts[0]
        return SegmentSet(
            np.concatenate([p.host for p in parts]),
            np.concatenate([p.start for p in parts]),
            np.concatenate([p.end for p in parts]),
            np.concatenate([p.use for p in parts]),
            np.concatenate([p.task for p in parts]),
        )


class FragmentStore:
    """Known fragments: pending (task not placed yet) and, optionally, an archive of placed ones.

    ``offset`` is the fragment's start relative to its task's start. The archive lets a task that is
    stopped (its host removed) restart from its first fragment.
    """

    def __init__(self, *, archive: bool = True) -> None:
        self.task = _EMPTY_I
        self.offset = _EMPTY_I
        self.dur = _EMPTY_I
        self.use = _EMPTY_F
        self.archive: list[tuple[I64, I64, I64, F64]] | None = [] if archive else None

    def add(self, task: I64, offset: I64, dur: I64, use: F64) -> None:
        if self.task.size == 0:
            self.task, self.offset, self.dur, self.use = task, offset, dur, use
            return
        self.task = np.concatenate((self.task, task))
        self.offset = np.concatenate((self.offset, offset))
        self.dur = np.concatenate((self.dur, dur))
        self.use = np.concatenate((self.use, use))

    def take_placed(self, start: I64, host: I64) -> SegmentSet:
        """Turn the fragments of placed tasks into segments; the others stay pending."""
        if self.task.size == 0:
            return SegmentSet.empty()
        st = start[self.task]
        placed = st >= 0
        if not placed.any():
            return SegmentSet.empty()
        everything = bool(placed.all())
        sel = slice(None) if everything else placed
        task, off, dur, use = self.task[sel], self.offset[sel], self.dur[sel], self.use[sel]
        if self.archive is not None:
            self.archive.append((task, off, dur, use))
        if everything:
            self.task, self.offset, self.dur, self.use = _EMPTY_I, _EMPTY_I, _EMPTY_I, _EMPTY_F
        else:
            rest = ~placed
            self.task, self.offset = self.task[rest], self.offset[rest]
            self.dur, self.use = self.dur[rest], self.use[rest]
        s = st[sel] + off
        nz = dur > 0
        if not nz.all():
            task, s, dur, use = task[nz], s[nz], dur[nz], use[nz]
        return SegmentSet(host[task], s, s + dur, use, task)

    def reopen(self, tasks: I64) -> None:
        """Make the archived fragments of ``tasks`` pending again (the tasks restart)."""
        if self.archive is None:
            raise RuntimeError("this engine keeps no fragment archive; structural changes are impossible")
        kept: list[tuple[I64, I64, I64, F64]] = []
        for task, off, dur, use in self.archive:
            hit = np.isin(task, tasks)
            if hit.any():
                self.add(task[hit], off[hit], dur[hit], use[hit])
                rest = ~hit
                kept.append((task[rest], off[rest], dur[rest], use[rest]))
            else:
                kept.append((task, off, dur, use))
        self.archive = kept
