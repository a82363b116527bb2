"""Idle sources (as Flink's): a partition that has been silent for ``windowing.idle_after_s`` of wall time,
with nothing left to read, stops holding the watermark, so a datacenter that sends only its records (no
heartbeats), or no carbon or power feed at all, is twinned too. When every source is idle, event time is taken
to go on with the wall clock from the newest record received, less ``windowing.allowed_lateness_s``: the last
windows close after at most ``window_s + idle_after_s + allowed_lateness_s`` of silence, and a historical feed
sent fast then stopped goes on from its own time, not today's. Heartbeats keep a source active and make
closing exact (a replay with heartbeats never goes idle: its partitions are never silent that long).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from opendt.models.messages import iso_ms
from opendt.stream.windowing import FINAL, Windower


class IdleWatch:
    def __init__(
        self,
        sources: Iterable[Hashable],
        idle_after_s: float,
        allowed_lateness_ms: int,
        clock: Callable[[], float],
    ) -> None:
        self.idle_after_s = idle_after_s
        self.allowed_lateness_ms = allowed_lateness_ms
        self._clock = clock
        start = clock()
        self._heard = dict.fromkeys(sources, start)
        self._last_record: float | None = None
        self._checked = -1e18
        self._drained: set[Hashable] = set()

    def heard(self, source: Hashable) -> None:
        """``source`` delivered messages now."""
        now = self._clock()
        if source in self._heard:
            self._heard[source] = now
        self._last_record = now

    def silent(self) -> list[Hashable]:
        """The sources silent for at least ``idle_after_s`` (idle if nothing is left to read of them)."""
        now = self._clock()
        return [s for s, t in self._heard.items() if now - t >= self.idle_after_s]

    async def update(
        self, kafka: AIOKafkaConsumer, windower: Windower, sources: list[TopicPartition]
    ) -> None:
        """Mark the sources silent for ``idle_after_s`` with nothing left to read (asked of the broker at most
        twice a second) as idle in ``windower``; when all are, its watermark follows the wall clock."""
        silent = self.silent()
        if silent and self._clock() - self._checked >= 0.5:
            self._checked = self._clock()
            ends = await kafka.end_offsets(silent)
            self._drained = {tp for tp in silent if await kafka.position(tp) >= ends[tp]}
        idle = {tp for tp in silent if tp in self._drained}
        for tp in sources:
            windower.set_idle(tp, tp in idle)
        windower.clock_ms = self.clock_ms(windower.newest_ms) if len(idle) == len(sources) else None

    def clock_ms(self, newest_ms: int | None) -> int | None:
        """Event time while every source is idle: the newest record's time plus the wall time since it
        arrived, less the allowed lateness (None before any record)."""
        if newest_ms is None or self._last_record is None:
            return None
        return newest_ms + int((self._clock() - self._last_record) * 1000) - self.allowed_lateness_ms


def waiting_for(w: Windower, topology_topic: str, idle_after_s: float) -> list[str]:
    """What holds the windows back: the physical topology (required) while none has come; each partition
    not heard from (until it is idle), each at the watermark (its next message moves it)."""
    out = []
    if w.need_topology and not w.topology_known and not w.pending_topologies:
        out.append(f"{topology_topic}: a physical topology (required; no window closes without one)")
    for tp, t in w.holding():
        if not isinstance(tp, TopicPartition) or (t is not None and t >= FINAL):
            continue
        if t is None:
            quiet = f"{idle_after_s:g} s of silence"
            out.append(f"{tp.topic}[{tp.partition}]: its first message (or {quiet}: then idle)")
        else:
            out.append(f"{tp.topic}[{tp.partition}]: a message after {iso_ms(t)} (the watermark)")
    return out


def late_view(w: Windower) -> dict[str, str] | None:
    """The latest late record as the status shows it (its time and its window's start), or None."""
    if w.last_late is None:
        return None
    return {"time": iso_ms(w.last_late[0]), "window_start": iso_ms(w.last_late[1])}
