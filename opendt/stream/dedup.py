"""What duplicates are judged against: fragment positions received per task, power instants per source.

A position (or instant) is a duplicate only of itself. Positions arrive in order almost always, so a task's
positions are kept as one contiguous range ``[lo, hi]`` in two plain dicts (updated a whole fetch at a time,
:meth:`Positions.add_run`); a task whose positions left one range (a gap, a position before the range)
moves to a :class:`Seen` of disjoint ranges, judged record by record. Either way the memory per task does not
grow with its number of fragments.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable

import polars as pl

from opendt.models.messages import FragmentRow, PowerRow, TaskRow


class Seen:
    """A set of integers received (fragment positions of a task, power instants of a source) as disjoint
    ranges: in-order arrivals keep one range, whatever their number. ``last_ms``: the newest event time."""

    __slots__ = ("_hi", "_lo", "_n", "last_ms")

    def __init__(self) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []  # inclusive
        self.last_ms = -(2**62)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def ranges(self) -> int:
        return len(self._lo)

    def bounds(self) -> tuple[int, int]:
        """The lowest and highest value kept."""
        return self._lo[0], self._hi[-1]

    def __contains__(self, v: int) -> bool:
        i = bisect.bisect_right(self._lo, v) - 1
        return i >= 0 and v <= self._hi[i]

    def add(self, v: int, t_ms: int) -> None:
        self.last_ms = max(self.last_ms, t_ms)
        self._n += 1
        i = bisect.bisect_right(self._lo, v) - 1
        if i >= 0 and self._hi[i] + 1 >= v:  # extends range i (v is not in it: the caller checked)
            self._hi[i] = max(self._hi[i], v)
        else:
            i += 1
            self._lo.insert(i, v)
            self._hi.insert(i, v)
        if i + 1 < len(self._lo) and self._lo[i + 1] == self._hi[i] + 1:  # joins the next range
            self._hi[i] = self._hi.pop(i + 1)
            self._lo.pop(i + 1)

    def add_range(self, lo: int, hi: int, t_ms: int) -> None:
        """Add ``lo..hi`` (inclusive) as one range (none of it received before: the caller knows)."""
        self.last_ms = max(self.last_ms, t_ms)
        self._n += hi - lo + 1
        i = bisect.bisect_right(self._lo, lo)
        self._lo.insert(i, lo)
        self._hi.insert(i, hi)

    def forget_before(self, v: int) -> None:
        """Drop what lies below ``v`` (power instants behind the duplicate horizon)."""
        k = bisect.bisect_left(self._hi, v)
        if k:
            del self._lo[:k], self._hi[:k]
        if self._lo and self._lo[0] < v:
            self._lo[0] = v


class Positions:
    """The fragment positions received, per task id (see the module's doc)."""

    def __init__(self) -> None:
        self._lo: dict[str, int] = {}
        self._hi: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._irregular: dict[str, Seen] = {}

    def __len__(self) -> int:
        return len(self._hi) + len(self._irregular)

    def __contains__(self, task: str) -> bool:
        return task in self._hi or task in self._irregular

    def seen(self, task: str, position: int) -> bool:
        hi = self._hi.get(task)
        if hi is not None:
            return self._lo[task] <= position <= hi
        s = self._irregular.get(task)
        return s is not None and position in s

    def last_ms(self, task: str) -> int | None:
        """The newest event time of the task's fragments (None when it is not kept)."""
        last = self._last.get(task)
        if last is not None:
            return last
        s = self._irregular.get(task)
        return None if s is None else s.last_ms

    def forget(self, task: str) -> None:
        self._lo.pop(task, None)
        self._hi.pop(task, None)
        self._last.pop(task, None)
        self._irregular.pop(task, None)

    def add(self, task: str, position: int, t_ms: int) -> bool:
        """Record a position not seen before (the caller checked); True when the task is new."""
        hi = self._hi.get(task)
        if hi is not None:
            if position == hi + 1:
                self._hi[task] = position
                self._last[task] = max(self._last[task], t_ms)
                return False
            ranges = Seen()  # leaves one range: judged record by record from now on
            ranges.add_range(self._lo.pop(task), self._hi.pop(task), self._last.pop(task))
            ranges.add(position, t_ms)
            self._irregular[task] = ranges
            return False
        irregular = self._irregular.get(task)
        if irregular is not None:
            irregular.add(position, t_ms)
            if irregular.ranges == 1:  # the gap is filled: one range again
                del self._irregular[task]
                self._lo[task], self._hi[task] = irregular.bounds()
                self._last[task] = irregular.last_ms
            return False
        self._lo[task] = self._hi[task] = position
        self._last[task] = t_ms
        return True

    def add_run(self, frame: pl.DataFrame) -> list[tuple[int, str]] | None:
        """Record a fetch's fragments (columns ``id``, ``index``, ``submission_ms``) when none is a duplicate
        and each task's positions continue its range without a gap: returns the new tasks with their first
        event time. Otherwise None, and nothing is recorded (the caller takes them one by one)."""
        g = frame.group_by("id", maintain_order=True).agg(
            pl.col("index").min().alias("mn"),
            pl.col("index").max().alias("mx"),
            pl.len().alias("n"),
            pl.col("index").n_unique().alias("nu"),
            pl.col("submission_ms").max().alias("tmax"),
            pl.col("submission_ms").first().alias("tfirst"),
        )
        ids: list[str] = g["id"].to_list()
        if self._irregular and not self._irregular.keys().isdisjoint(ids):
            return None
        his = pl.Series("hi", [self._hi.get(i) for i in ids], dtype=pl.Int64)
        mn, mx = g["mn"].cast(pl.Int64), g["mx"].cast(pl.Int64)
        ok = (g["nu"] == g["n"]) & (mx - mn + 1 == g["n"]) & ((mn == his + 1) | his.is_null())
        if not bool(ok.all()):
            return None
        known = his.is_not_null()
        lasts = pl.Series("last", [self._last.get(i) for i in ids], dtype=pl.Int64)
        tmax = g["tmax"]
        newest = pl.select(pl.max_horizontal(lasts, tmax)).to_series()
        self._hi.update(zip(ids, mx.to_list(), strict=True))
        self._last.update(zip(ids, newest.to_list(), strict=True))
        new = g.filter(~known)
        self._lo.update(zip(new["id"].to_list(), new["mn"].to_list(), strict=True))
        return list(zip(new["tfirst"].to_list(), new["id"].to_list(), strict=True))


class Recent:
    """What duplicates are judged against (task ids, fragment positions per task, power instants per source),
    each key kept until the newest event is ``horizon_ms`` past that key's latest event: bounded however long
    the stream runs. The windower owns one; ``tasks``, ``positions`` and ``instants`` are its to read."""

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self.tasks: dict[str, TaskRow] = {}
        self.positions = Positions()  # fragment positions received, per task
        self.instants: dict[str, Seen] = {}  # power instants received, per source
        self._order: deque[tuple[int, str, str]] = deque()  # (event ms, kind, key) to expire
        self.newest = -(2**62)

    @property
    def newest_ms(self) -> int | None:
        """The newest event time received, None before the first."""
        return None if self.newest == -(2**62) else self.newest

    def remember(self, t_ms: int, kind: str, key: str, *, new: bool) -> None:
        """Keep ``key`` (kind ``t`` task, ``f`` fragments of a task, ``p`` power source) until the newest
        event is the horizon past the latest event of that key (one queue entry per key: a refreshed key is
        re-queued when it expires)."""
        if new:
            self._order.append((t_ms, kind, key))
        self.expire(t_ms)

    def extend_fragments(self, new: list[tuple[int, str]], t_ms: int) -> None:
        """Tasks whose first fragments were just recorded (their first time, id); ``t_ms`` the newest time."""
        self._order.extend((t0, "f", task) for t0, task in new)
        self.expire(t_ms)

    def expire(self, t_ms: int) -> None:
        self.newest = max(self.newest, t_ms)
        horizon = self.newest - self.horizon_ms
        while self._order and self._order[0][0] < horizon:
            _, k, old = self._order.popleft()
            stamp: int | None
            if k == "t":
                task = self.tasks.get(old)
                stamp = None if task is None else task.submission_ms
            elif k == "f":
                stamp = self.positions.last_ms(old)
            else:
                seen = self.instants.get(old)
                stamp = None if seen is None else seen.last_ms
            if stamp is None:
                continue
            if stamp >= horizon:
                self._order.append((stamp, k, old))
            elif k == "t":
                del self.tasks[old]
            elif k == "f":
                self.positions.forget(old)
            else:
                del self.instants[old]

    def mark(self, key: str, v: int, t_ms: int, *, horizon: int | None = None) -> None:
        """Record the power instant ``v`` as received for source ``key`` at event time ``t_ms`` (instants
        below ``horizon`` forgotten)."""
        seen = self.instants.get(key)
        if seen is None:
            seen = self.instants[key] = Seen()
        seen.add(v, t_ms)
        if horizon is not None:
            seen.forget_before(horizon)
        self.remember(t_ms, "p", key, new=len(seen) == 1)

    def seed(
        self, tasks: Iterable[TaskRow], fragments: Iterable[FragmentRow], power: Iterable[PowerRow]
    ) -> None:
        """Events an earlier process already windowed (a restart)."""
        for t in tasks:
            new = t.id not in self.tasks
            self.tasks[t.id] = t
            self.remember(t.submission_ms, "t", t.id, new=new)
        for f in fragments:
            if not self.positions.seen(f.id, f.position):
                new = self.positions.add(f.id, f.position, f.submission_ms)
                self.remember(f.submission_ms, "f", f.id, new=new)
        for p in power:
            self.mark(p.source, p.timestamp_ms, p.timestamp_ms)
