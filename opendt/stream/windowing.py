"""Window accumulation as pure logic (no Kafka, no clock): events and heartbeats in, closed windows out.

Windows are half-open ``[start, end)`` of ``window_ms``, aligned to multiples of the window size since the
epoch (DESIGN §5). The watermark is the minimum, over every input source (topic-partition), of the latest
heartbeat or event time seen there; a source that sent its final heartbeat no longer holds it back. A
window closes when the watermark reaches its end; every window between the first event and the watermark
is emitted, empty or not, so the engine's clock advances through gaps.

Duplicates (a task id received before with the same content, a fragment index of its task received before,
a power sample or a carbon step at an instant of its source received before) are dropped and counted; they
never double a window. Nothing that arrives first can make later events duplicates: a fragment index, power
instant or carbon instant is a duplicate only of itself, and a task id received again with different
content is a *conflict* (counted and handed back for the dead-letter topic; the first one keeps the id, since
task ids must be unique). What duplicates are judged against is kept for ``dedup_horizon_ms`` of event time
behind the newest event, so it stays bounded however long the stream runs. An event older than the closed
horizon (a broken heartbeat promise, an idle source waking up) is *late*: counted and refused (the consumer
dead-letters it), never merged into another window.

A final heartbeat ends its source, but a later message of the same source takes it back (counted as
``finals_revoked``): a forged or premature end cannot end the stream while the source goes on. The consumer
closes the last windows only once every partition is read to its end (``close_ready(final_ok=...)``).

Two inputs are series, not windowed events:

* **carbon** (``dc.carbon``) steps: a strict source — a window ``[s, e)`` closes only once the carbon
  source has passed ``e`` (a step at exactly ``e`` is known, so the engine can sample at ``e`` as OpenDC
  does); each closing window carries the steps up to its end not carried before, in time order whatever
  order they arrived in (:mod:`opendt.stream.carbon`: a step for a window closed already is late).
* **physical topology** (``dc.topology``): no watermark source (the datacenter sends it rarely, without
  heartbeats). The latest message whose time is ≤ a window's start applies from that window (a late one
  from the next window to close); the first one received applies from the first window, and with
  ``need_topology`` no window closes before one is known (the twin cannot simulate without hardware).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import polars as pl

from opendt.models.messages import CarbonRow, FragmentRow, PowerRow, TaskRow
from opendt.models.topology import Topology
from opendt.stream.carbon import CarbonSteps
from opendt.stream.dedup import Recent
from opendt.stream.orphans import Held, KnownTasks, Orphans
from opendt.stream.topologies import PendingTopologies
from opendt.stream.window import Window, carry_carbon, window_start
from opendt.workload import FRAGMENT_SCHEMA

__all__ = ["FINAL", "Window", "WindowStats", "Windower", "carry_carbon", "window_start"]

FINAL = 2**62


@dataclass
class WindowStats:
    events: int = 0
    duplicates: int = 0
    late: int = 0
    windows_closed: int = 0
    topologies: int = 0
    topologies_late: int = 0
    conflicts: int = 0
    """Task ids received again with different content (the first keeps the id)."""
    finals_revoked: int = 0
    """Final heartbeats taken back because their source went on."""
    orphans: int = 0
    """Fragments of tasks never received, refused (their window closed, or ``max_orphans`` were held)."""


class Windower:
    """Accumulates events per window and closes windows as the watermark advances.

    ``sources`` are the inputs that hold the watermark (e.g. ``("dc.fragments", 0)``); a source that has
    not been heard from yet holds it at "unknown", so nothing closes before every source has spoken.
    ``strict_sources`` (among them) must pass a window's end, not only reach it (carbon). ``resume_at_ms``:
    the windows before it were closed by an earlier process (a restart), the next one starts there.
    ``max_orphans``: fragments of a task not received are held, at most that many, until it arrives or their
    window closes (:mod:`opendt.stream.orphans`; refused ones in :attr:`orphaned`); None: windowed anyway.
    """

    def __init__(
        self,
        window_ms: int,
        sources: list[Hashable],
        *,
        strict_sources: Iterable[Hashable] = (),
        need_topology: bool = False,
        dedup_horizon_ms: int = 86_400_000,
        resume_at_ms: int | None = None,
        max_orphans: int | None = None,
    ) -> None:
        if window_ms <= 0:
            raise ValueError("window_ms must be > 0")
        if not sources:
            raise ValueError("at least one source is needed")
        self.window_ms = window_ms
        self._latest: dict[Hashable, int | None] = dict.fromkeys(sources)
        self._strict = frozenset(strict_sources)
        if not self._strict <= set(sources):
            raise ValueError("strict sources must be sources")
        self._open: dict[int, Window] = {}
        self._next_start: int | None = resume_at_ms  # start of the earliest window not yet closed
        self._resumed = resume_at_ms is not None
        self.dedup_horizon_ms = dedup_horizon_ms
        self._recent = recent = Recent(dedup_horizon_ms)
        self._tasks, self._positions, self._instants = recent.tasks, recent.positions, recent.instants
        self._final_ms: dict[Hashable, int] = {}
        self._carbon = CarbonSteps(dedup_horizon_ms)
        self._topologies = PendingTopologies()
        self._orphans = None if max_orphans is None else Orphans(max_orphans)
        self._known = KnownTasks(dedup_horizon_ms)  # kept only with max_orphans
        self.orphaned: list[tuple[Held, str]] = []
        """Fragments of tasks never received, refused with the reason (the consumer dead-letters them)."""
        self.need_topology = need_topology
        self.topology_known = False
        self.stats = WindowStats()
        self.finished = False
        self._idle: set[Hashable] = set()
        self.clock_ms: int | None = None
        """The watermark while every source is idle (the consumer's wall-clock estimate), else None."""
        self.last_late: tuple[int, int] | None = None
        """The latest late event: its time and the start of its (closed) window."""

    # -- inputs ------------------------------------------------------------------------------------------

    @property
    def watermark_ms(self) -> int | None:
        """The event time every source has reached (None before each has spoken). Once every source has
        ended, the end of the last closed window (not the internal end-of-stream marker)."""
        wm = self._min_latest(strict=False)
        if wm is not None and wm >= FINAL and self._next_start is not None:
            return self._next_start
        return wm

    @property
    def silent(self) -> list[Hashable]:
        """The sources not heard from yet (they hold the watermark at "unknown")."""
        return [s for s, v in self._latest.items() if v is None]

    def set_idle(self, source: Hashable, idle: bool) -> None:
        """An idle source (silent, nothing pending: the consumer decides) does not hold the watermark."""
        if idle:
            self._idle.add(source)
        else:
            self._idle.discard(source)

    @property
    def newest_ms(self) -> int | None:
        """The newest event time received (tasks, fragments, power), None before the first."""
        return self._recent.newest_ms

    def holding(self) -> list[tuple[Hashable, int | None]]:
        """The sources holding the watermark back (active; at its minimum or not heard from), their time."""
        active = {s: v for s, v in self._latest.items() if s not in self._idle}
        low = min((v for v in active.values() if v is not None), default=None)
        return [(s, v) for s, v in active.items() if v is None or v == low]

    def _min_latest(self, *, strict: bool) -> int | None:
        """The minimum over the sources that are not idle of their latest time (a strict source counts 1 ms
        less: it must pass a window's end); None before each of them has spoken. When every source is idle,
        :attr:`clock_ms` (event time taken from the wall clock, set by the consumer)."""
        wm: int | None = None
        active = False
        for source, v in self._latest.items():
            if source in self._idle:
                continue
            active = True
            if v is None:
                return None
            if strict and source in self._strict and v < FINAL:
                v -= 1
            wm = v if wm is None else min(wm, v)
        return wm if active else self.clock_ms

    def _seen(self, source: Hashable, t_ms: int) -> None:
        if source not in self._latest:
            raise KeyError(f"unknown source {source!r}")
        prev = self._latest[source]
        if prev == FINAL and t_ms < FINAL and not self.finished:  # the source went on: its end was not one
            self.stats.finals_revoked += 1
            prev = self._latest[source] = self._final_ms.pop(source)
        if prev is None or t_ms > prev:
            self._latest[source] = t_ms

    def heartbeat(self, source: Hashable, t_ms: int, *, final: bool = False) -> None:
        if final:
            self._seen(source, t_ms)
            if self._latest[source] != FINAL:
                self._final_ms[source] = self._latest[source] or t_ms
            self._seen(source, FINAL)
            self._touch(t_ms)
        else:
            self._seen(source, t_ms)

    @property
    def pending_topologies(self) -> int:
        """Physical topologies received but not yet in effect (dated after the windows closed so far)."""
        return len(self._topologies)

    @property
    def all_final(self) -> bool:
        """Every source has sent its final heartbeat (and not gone on since)."""
        return all(v == FINAL for v in self._latest.values())

    def _touch(self, t_ms: int) -> None:
        start = window_start(t_ms, self.window_ms)
        first = not self.stats.windows_closed and not self._resumed
        if self._next_start is None or (start < self._next_start and first):
            self._next_start = start

    def _late(self, t_ms: int) -> bool:
        """An event for a window already closed (its source broke a heartbeat's promise, or was idle): counted
        and refused (:attr:`last_late`), never merged into another window."""
        self._touch(t_ms)
        assert self._next_start is not None
        start = window_start(t_ms, self.window_ms)
        if start >= self._next_start:
            return False
        self.stats.late += 1
        self.last_late = (t_ms, start)
        return True

    def _window_for(self, t_ms: int) -> Window:
        start = window_start(t_ms, self.window_ms)
        w = self._open.get(start)
        if w is None:
            w = self._open[start] = Window(start, start + self.window_ms)
        return w

    def add_task(self, source: Hashable, row: TaskRow) -> bool:
        """Add a task; returns False (and counts) for a duplicate or a conflict (see the module's doc)."""
        self._seen(source, row.submission_ms)
        first = self._tasks.get(row.id)
        if first is not None:
            if first == row:
                self.stats.duplicates += 1
            else:
                self.stats.conflicts += 1
            return False
        if self._late(row.submission_ms):
            return False
        self._tasks[row.id] = row
        self._recent.remember(row.submission_ms, "t", row.id, new=True)
        self.stats.events += 1
        self._window_for(row.submission_ms).tasks.append(row)
        if self._orphans is not None:
            self._known.touch(row.id, row.submission_ms)
            for h in self._orphans.release(row.id):
                self._add_fragment(h.source, h.row, h.offset)  # its fragments read before it
        return True

    def _orphan(self, task: str) -> bool:
        """Fragments of ``task`` are held: neither it nor its fragments were received (within the horizon)."""
        return self._orphans is not None and task not in self._known

    def _hold(self, h: Held) -> bool:
        """Hold a fragment of a task not received (True); refused when ``max_orphans`` are held already."""
        assert self._orphans is not None
        if self._orphans.hold(h):
            return True
        self.stats.orphans += 1
        why = (
            f"{self._orphans.limit} fragments of tasks not received are held already (windowing.max_orphans)"
        )
        self.orphaned.append((h, f"task {h.row.id[:64]!r} not received: {why}"))
        return False

    @property
    def orphans_held(self) -> int:
        return 0 if self._orphans is None else len(self._orphans)

    def add_fragment(self, source: Hashable, row: FragmentRow, offset: int = -1) -> bool:
        """Add a fragment (``offset``: its message's, for a dead letter); False (and counts) for a duplicate,
        a late one or a refused orphan. One of a task not received is held (True; see :attr:`orphaned`)."""
        self._seen(source, row.submission_ms)
        return self._add_fragment(source, row, offset)

    def _add_fragment(self, source: Hashable, row: FragmentRow, offset: int) -> bool:
        if self._positions.seen(row.id, row.position):
            self.stats.duplicates += 1
            return False
        orphan = self._orphan(row.id)
        if (not orphan or self.stats.windows_closed or self._resumed) and self._late(row.submission_ms):
            return False
        if orphan:
            return self._hold(Held(source, offset, row))
        new = self._positions.add(row.id, row.position, row.submission_ms)
        self._recent.remember(row.submission_ms, "f", row.id, new=new)
        if self._orphans is not None:
            self._known.touch(row.id, row.submission_ms)
        self.stats.events += 1
        self._window_for(row.submission_ms).fragments.append(row)
        return True

    def add_fragments(self, source: Hashable, frame: pl.DataFrame) -> dict[int, int] | None:
        """A fetch's fragments at once (``FRAGMENT_SCHEMA`` columns plus ``offset``, in arrival order), when
        none is a duplicate and every task's positions go on without a gap (the common case): returns, per
        window start, the lowest message offset added to it. None (nothing changed) otherwise: the caller
        adds them one by one (:meth:`add_fragment`), with the same result."""
        if frame.height == 0:
            return {}
        t = frame["submission_ms"]
        tmin, tmax = int(t.min()), int(t.max())  # type: ignore[arg-type]
        if self._next_start is not None and window_start(tmin, self.window_ms) < self._next_start:
            return None  # a late one among them: one by one
        held, ids = frame.clear(), frame["id"].unique().to_list() if self._orphans is not None else []
        if orphans := [i for i in ids if self._orphan(i)]:
            mask = frame["id"].is_in(orphans)
            held, frame = frame.filter(mask), frame.filter(~mask)
        new = self._positions.add_run(frame)
        if new is None:
            return None
        for i in set(ids).difference(orphans):  # the orphans are held, not known
            self._known.touch(i, tmax)
        self._seen(source, tmax)
        cols = list(FRAGMENT_SCHEMA.names())
        firsts: dict[int, int] = {}
        for *row, offset in held.select(*cols, "offset").iter_rows():
            if self._hold(Held(source, offset, FragmentRow(*row))):
                s = window_start(row[1], self.window_ms)
                firsts[s] = min(firsts.get(s, offset), offset)
        if not frame.height:
            return firsts
        self._touch(int(frame["submission_ms"].min()))  # type: ignore[arg-type]
        self._recent.extend_fragments(new, tmax)
        self.stats.events += frame.height
        frame = frame.with_columns(
            ((pl.col("submission_ms") // self.window_ms) * self.window_ms).alias("_start")
        )
        for (s,), part in frame.partition_by("_start", as_dict=True, maintain_order=True).items():
            s = int(s)
            w = self._open.get(s)
            if w is None:
                w = self._open[s] = Window(s, s + self.window_ms)
            w.add_chunk(part.select(cols))
            first = int(part["offset"].min())  # type: ignore[arg-type]
            firsts[s] = min(firsts.get(s, first), first)
        return firsts

    def add_power(self, source: Hashable, row: PowerRow) -> bool:
        self._seen(source, row.timestamp_ms)
        seen = self._instants.get(row.source)
        if seen is not None and row.timestamp_ms in seen:
            self.stats.duplicates += 1
            return False
        if self._late(row.timestamp_ms):
            return False
        horizon = self._recent.newest - self.dedup_horizon_ms
        self._recent.mark(row.source, row.timestamp_ms, row.timestamp_ms, horizon=horizon)
        self.stats.events += 1
        self._window_for(row.timestamp_ms).power.append(row)
        return True

    def add_carbon(self, source: Hashable, row: CarbonRow) -> bool:
        """A carbon-intensity step, inserted in time order; carried by the first window that closes with an
        end at or after it. False for a duplicate or a late step (its window closed: :attr:`last_late`)."""
        self._seen(source, row.timestamp_ms)
        verdict = self._carbon.add(row)
        if verdict == "conflict":
            self.stats.conflicts += 1
        elif verdict == "duplicate":
            self.stats.duplicates += 1
        elif verdict == "late":
            self.stats.late += 1
            self.last_late = (row.timestamp_ms, window_start(row.timestamp_ms - 1, self.window_ms))
        return verdict in ("added", "conflict")

    def add_topology(self, t_ms: int, topology: Topology) -> bool:
        """A physical topology in effect from ``t_ms`` (see the module's doc for when it applies). False when
        one with the same time and other content waits already (a conflict, counted: the later one wins)."""
        self.stats.topologies += 1
        if self._next_start is not None and self.stats.windows_closed and t_ms < self._next_start:
            self.stats.topologies_late += 1
        added = self._topologies.add(t_ms, topology)
        if not added:
            self.stats.conflicts += 1
        return added

    def evict_furthest_topology(self, before_ms: int) -> int | None:
        """Drop the waiting topology dated furthest ahead when it is later than ``before_ms`` (a full list
        keeps the nearest ones: far-future forgeries cannot lock real changes out); its time, or None."""
        return self._topologies.evict_furthest(before_ms)

    def remember(
        self, tasks: Iterable[TaskRow], fragments: Iterable[FragmentRow], power: Iterable[PowerRow]
    ) -> None:
        """Seed duplicate detection and the tasks known with events windowed before a restart."""
        tasks, fragments = list(tasks), list(fragments)
        self._recent.seed(tasks, fragments, power)
        self._known.seed([*tasks, *fragments])

    def carbon_known_until(self, t_ms: int) -> None:
        """Carbon steps up to ``t_ms`` were carried by windows of an earlier process (a restart)."""
        self._carbon.known_until(t_ms)

    def topology_in_effect(self) -> None:
        """A physical topology is already in effect (restored from a checkpoint)."""
        self.topology_known = True

    # -- output ------------------------------------------------------------------------------------------

    def close_ready(self, *, limit: int | None = None, final_ok: bool = True) -> list[Window]:
        """The windows whose end is ≤ the watermark, in order (empty ones included), at most ``limit`` of
        them (call again for the rest: a long gap closes incrementally). ``final_ok`` False: the sources'
        final heartbeats are not believed yet (the consumer has not read every partition to its end)."""
        wm = self._min_latest(strict=True)
        if wm is None or self._next_start is None:
            return []
        if self.need_topology and not self.topology_known and not self._topologies:
            return []  # no hardware to simulate on yet
        all_final = self.all_final
        if all_final and not final_ok:
            return []
        last_end = None
        if all_final:
            ends = [w.end_ms for w in self._open.values()]
            last_end = max([*ends, self._next_start])
            wm = last_end
        out: list[Window] = []
        while self._next_start + self.window_ms <= wm and (limit is None or len(out) < limit):
            start = self._next_start
            w = self._open.pop(start, None) or Window(start, start + self.window_ms)
            self._next_start = start + self.window_ms
            if all_final and w.end_ms == last_end:
                w.final = True
            self._attach_series(w)
            self.stats.windows_closed += 1
            out.append(w)
        if all_final and self._next_start + self.window_ms > wm:
            self.finished = True
        if (out or self.finished) and self._orphans is not None:  # their task can no longer come
            self._known.expire(self._next_start)
            for h in self._orphans.expire(None if self.finished else self._next_start):
                self.stats.orphans += 1
                why = f"task {h.row.id[:64]!r} not received by the end of the fragment's window (an orphan)"
                self.orphaned.append((h, why))
        return out

    def _attach_series(self, w: Window) -> None:
        """The carbon steps up to the window's end (all of them for the final window) and the physical
        topology that applies from it."""
        w.carbon = self._carbon.take(w.end_ms, final=w.final)
        applies = self._topologies.take(w.start_ms, first=not self.topology_known)
        if applies is not None:
            w.topology_ms, w.topology = applies
            self.topology_known = True
