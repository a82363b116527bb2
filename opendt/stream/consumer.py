"""The window-accumulating consumer: a thin Kafka adapter around the pure :class:`Windower`.

``getmany`` → decode (malformed messages counted, logged with topic/partition/offset, skipped, optionally
dead-lettered) → windower → closed windows onto a bounded queue (back-pressure: when the simulator is behind,
the consumer waits, memory stays bounded). Offsets are committed only after a window's results are durable
(:meth:`WindowConsumer.commit_durable`), with the offsets recorded when the window closed: every message at
a lower offset belongs to that window or an earlier one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from opendt.kafka.client import DeadLetter, DecodeStats, forward_dead_letters, note_malformed
from opendt.models.messages import FragmentRow, Heartbeat, MessageError, TaskRow, decode_row
from opendt.settings import TopicNames
from opendt.stream.windowing import Window, Windower, window_start
from opendt.twin.status import WindowsStatus

log = structlog.get_logger(component="consumer")


@dataclass
class ClosedWindow:
    window: Window
    commit_offsets: dict[TopicPartition, int] = field(default_factory=dict)


class WindowConsumer:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: TopicNames,
        window_ms: int,
        out: asyncio.Queue[ClosedWindow | None],
        *,
        stats: DecodeStats | None = None,
        dead_letter: DeadLetter | None = None,
        commit: bool = True,
    ) -> None:
        self.consumer = consumer
        self.topics = topics
        self.window_ms = window_ms
        self.out = out
        self.stats = stats if stats is not None else DecodeStats()
        self.dead_letter = dead_letter
        self.commit = commit
        self.kinds: dict[str, Literal["tasks", "fragments", "power"]] = {
            topics.tasks: "tasks",
            topics.fragments: "fragments",
            topics.power: "power",
        }
        self.windower: Windower | None = None
        self._first_offset: dict[int, dict[TopicPartition, int]] = {}  # open window start -> tp -> offset
        self._stopping = asyncio.Event()

    @property
    def watermark_ms(self) -> int | None:
        return None if self.windower is None else self.windower.watermark_ms

    def status(self) -> WindowsStatus:
        ws = self.windower.stats if self.windower is not None else None
        return WindowsStatus(
            watermark_ms=self.watermark_ms,
            events=ws.events if ws else 0,
            duplicates=ws.duplicates if ws else 0,
            late=ws.late if ws else 0,
            malformed=self.stats.malformed,
            dead_lettered=self.stats.dead_lettered,
            queued=self.out.qsize(),
        )

    def stop_intake(self) -> None:
        """Stop fetching (shutdown step 1); windows already queued are still simulated."""
        self._stopping.set()

    async def _partitions(self) -> list[TopicPartition]:
        tps: list[TopicPartition] = []
        await self.consumer.topics()  # refreshes the cluster metadata
        for topic in self.kinds:
            parts = self.consumer.partitions_for_topic(topic)
            if not parts:
                raise RuntimeError(f"topic {topic!r} has no partitions (does it exist?)")
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        return tps

    async def run(self) -> None:
        tps = await self._partitions()
        self.consumer.assign(tps)
        self.windower = windower = Windower(self.window_ms, list(tps))
        log.info("consumer_started", partitions=len(tps), window_ms=self.window_ms)
        while not self._stopping.is_set() and not windower.finished:
            polled = await self.consumer.getmany(timeout_ms=200, max_records=20_000)
            for tp, records in polled.items():
                await self._ingest(windower, tp, records)
            for w in windower.close_ready():
                await self.out.put(ClosedWindow(w, await self._offsets_at_close(w, tps)))
        await self.out.put(None)  # end of stream (or intake stopped)
        log.info(
            "consumer_finished",
            finished=windower.finished,
            events=windower.stats.events,
            duplicates=windower.stats.duplicates,
            late=windower.stats.late,
            malformed=self.stats.malformed,
        )

    async def _ingest(
        self, windower: Windower, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> None:
        kind = self.kinds[tp.topic]
        bad: list[tuple[ConsumerRecord[bytes, bytes], str]] = []
        for rec in records:
            try:
                row = decode_row(kind, rec.key, rec.value)
            except MessageError as e:
                bad.append((rec, note_malformed(self.stats, rec, e)))
                continue
            if isinstance(row, Heartbeat):
                windower.heartbeat(tp, row.time_ms, final=row.final)
                continue
            if isinstance(row, FragmentRow):
                added, t = windower.add_fragment(tp, row), row.submission_ms
            elif isinstance(row, TaskRow):
                added, t = windower.add_task(tp, row), row.submission_ms
            else:
                added, t = windower.add_power(tp, row), row.timestamp_ms
            if added:
                offs = self._first_offset.setdefault(window_start(t, self.window_ms), {})
                offs.setdefault(tp, rec.offset)
        self.stats.decoded += len(records) - len(bad)
        if bad and self.dead_letter is not None:
            self.stats.dead_lettered += await forward_dead_letters(self.dead_letter, bad)

    async def _offsets_at_close(self, w: Window, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self._first_offset.pop(w.start_ms, None)
        for start in [s for s in self._first_offset if s < w.end_ms]:
            self._first_offset.pop(start)  # late events merged into this window
        offsets: dict[TopicPartition, int] = {}
        for tp in tps:
            later = [o[tp] for o in self._first_offset.values() if tp in o]
            offsets[tp] = min(later) if later else await self.consumer.position(tp)
        return offsets

    async def commit_durable(self, closed: ClosedWindow) -> None:
        """Commit the offsets recorded when ``closed`` closed (call once its results are durable)."""
        if self.commit and closed.commit_offsets:
            await self.consumer.commit(dict(closed.commit_offsets))
