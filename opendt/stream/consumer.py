"""The window-accumulating consumer: a thin Kafka adapter around the pure :class:`Windower`.

``getmany`` → decode a partition's fetch into columns (:mod:`opendt.stream.columns`; malformed records
counted, logged, dead-lettered) → time gate (:mod:`opendt.stream.timegate`; outliers quarantined the same way)
→ windower → closed windows onto a bounded queue (back-pressure: memory stays bounded). The sources' final
heartbeats are believed once every partition is read to its end (a forged end while data follows is taken
back). Offsets are committed only after a window's results are durable
(:meth:`WindowConsumer.commit_durable`), with the offsets recorded when the window closed: every message at a
lower offset belongs to that window or an earlier one (or is held by the time gate).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeAlias

import numpy as np
import polars as pl
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from opendt.kafka.client import DeadLetter, DecodeStats, RecordLike, forward_dead_letters, note_malformed
from opendt.models.datacenter import DEFAULT as DEFAULT_DATACENTER
from opendt.models.messages import (
    CarbonRow,
    FragmentRow,
    Heartbeat,
    MessageError,
    PowerRow,
    TaskRow,
    TopologyMessage,
    iso_ms,
)
from opendt.settings import TopicNames
from opendt.stream.columns import TIME_COLUMN, Columnar, decode_fetch
from opendt.stream.datacenters import DatacenterFilter, input_partitions
from opendt.stream.idle import IdleWatch, late_view, waiting_for
from opendt.stream.intake import admit_topology, take_orphans
from opendt.stream.offsets import FirstOffsets
from opendt.stream.records import Kind, Row, decode_record, row_item, rows_of, time_of
from opendt.stream.resume import ClosedWindow, InputsLost, Resume
from opendt.stream.timegate import TimeGate
from opendt.stream.windowing import Window, Windower, window_start
from opendt.twin.status import WindowsStatus

log = structlog.get_logger(component="consumer")


Record: TypeAlias = "ConsumerRecord[bytes, bytes]"

CLOSE_BATCH = 64  # windows closed per step: a long gap closes incrementally, the loop serving in between
SETTLE = 256  # records judged one by one before a fetch's rest is tried at once again


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
        watermark_kinds: tuple[str, ...] = ("tasks", "fragments", "power", "carbon"),
        dedup_horizon_ms: int = 86_400_000,
        need_topology: bool = True,
        resume: Resume | None = None,
        max_skew_ms: int = 3_600_000,
        final_grace_s: float = 1.0,
        idle_after_s: float = 120.0,
        allowed_lateness_s: float = 60.0,
        jump_confirm: int = 3,
        max_orphans: int | None = 100_000,
        wall_ms: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        datacenter: str = DEFAULT_DATACENTER,
    ) -> None:
        self.consumer = consumer
        self.mine = DatacenterFilter(datacenter)
        self.topics = topics
        self.window_ms = window_ms
        self.out = out
        self.stats = stats if stats is not None else DecodeStats()
        self.dead_letter = dead_letter
        self.commit = commit
        kinds: tuple[Kind, ...] = ("tasks", "fragments", "power", "carbon", "topology")
        self.kinds: dict[str, Kind] = {getattr(topics, k): k for k in kinds}
        unknown = set(watermark_kinds) - {"tasks", "fragments", "power", "carbon"}
        if unknown:
            raise ValueError(f"watermark kinds must be input streams, not {sorted(unknown)}")
        self.watermark_kinds = watermark_kinds
        self.dedup_horizon_ms = dedup_horizon_ms
        self.need_topology = need_topology
        self.resume = resume
        self.gate: TimeGate[tuple[int, Row]] = TimeGate(
            max_skew_ms,
            run_start_ms=None if resume is None else resume.run_start_ms,
            resume_ms=None if resume is None else resume.next_start_ms,
            confirm=jump_confirm,
            now_ms=wall_ms,
        )
        self._held_offsets: dict[TopicPartition, int] = {}
        self.topologies_rejected = 0
        self.final_grace_s = final_grace_s
        self._clock = clock
        self._final_since: float | None = None
        self.windower: Windower | None = None
        self._first_offset = FirstOffsets()
        self.idle_after_s = idle_after_s
        self.allowed_lateness_ms = int(allowed_lateness_s * 1000)
        self.idle: IdleWatch | None = None
        self.max_orphans = max_orphans
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
            quarantined=self.gate.stats.rejected + self.topologies_rejected,
            conflicts=ws.conflicts if ws else 0,
            other_datacenters=self.mine.others,
            finals_revoked=ws.finals_revoked if ws else 0,
            queued=self.out.qsize(),
            waiting_for=[]
            if self.windower is None
            else waiting_for(self.windower, self.topics.topology, self.idle_after_s),
            last_late=None if self.windower is None else late_view(self.windower),
            orphans=ws.orphans if ws else 0,
            orphans_held=0 if self.windower is None else self.windower.orphans_held,
        )

    def stop_intake(self) -> None:
        """Stop fetching (shutdown step 1); windows already queued are still simulated."""
        self._stopping.set()

    async def _partitions(self) -> list[TopicPartition]:
        return await input_partitions(self.consumer, self.kinds, self.mine.datacenter)

    async def _still_held(self, tps: list[TopicPartition], r: Resume) -> None:
        """Durable windows are read again: the topics must still hold them (retention)."""
        first = await self.consumer.beginning_offsets(tps)
        for tp in tps:
            want = 0 if r.from_beginning else r.positions.get((tp.topic, tp.partition))
            if want is not None and first[tp] > want:
                raise InputsLost(
                    f"{r.reread}, and {tp.topic}[{tp.partition}] no longer holds offset {want} (it starts at "
                    f"{first[tp]}): restore the files or start over (opendt run --fresh)"
                )

    async def run(self) -> None:
        tps = await self._partitions()
        self.consumer.assign(tps)
        sources = [tp for tp in tps if self.kinds[tp.topic] in self.watermark_kinds]
        self.idle = idle = IdleWatch(sources, self.idle_after_s, self.allowed_lateness_ms, self._clock)
        r = self.resume
        self.windower = windower = Windower(
            self.window_ms,
            sources,
            strict_sources=[tp for tp in sources if self.kinds[tp.topic] == "carbon"],
            need_topology=self.need_topology,
            dedup_horizon_ms=self.dedup_horizon_ms,
            resume_at_ms=None if r is None else r.next_start_ms,
            max_orphans=self.max_orphans,
        )
        if r is not None:
            windower.remember(r.tasks, r.fragments, r.power)
            if r.carbon_until_ms is not None:
                windower.carbon_known_until(r.carbon_until_ms)
            if r.topology_known:
                windower.topology_in_effect()
            for tp in tps:
                position = r.positions.get((tp.topic, tp.partition))
                if position is not None:
                    self.consumer.seek(tp, position)
            if r.from_beginning:
                await self.consumer.seek_to_beginning(*tps)
            if r.reread is not None:
                await self._still_held(tps, r)
        log.info(
            "consumer_started",
            partitions=len(tps),
            window_ms=self.window_ms,
            resume_at_ms=None if r is None else r.next_start_ms,
            seeks=0 if r is None else len(r.positions),
        )
        while not self._stopping.is_set() and not windower.finished:
            polled = await self.consumer.getmany(timeout_ms=200, max_records=20_000)
            for tp, records in polled.items():
                idle.heard(tp)
                await self._ingest(windower, tp, records)
            await idle.update(self.consumer, windower, sources)
            final_ok = await self._end_believed(windower, tps)
            while batch := windower.close_ready(limit=CLOSE_BATCH, final_ok=final_ok):
                if self.gate.run_start_ms is None:
                    self.gate.run_start_ms = batch[0].start_ms
                for w in batch:
                    await self.out.put(ClosedWindow(w, await self._offsets_at_close(w, tps)))
                await asyncio.sleep(0)  # a long gap closes in steps: the loop serves in between
            await self._dead_letters(take_orphans(windower))
        await self.out.put(None)  # end of stream (or intake stopped)
        log.info(
            "consumer_finished",
            finished=windower.finished,
            events=windower.stats.events,
            duplicates=windower.stats.duplicates,
            late=windower.stats.late,
            malformed=self.stats.malformed,
            quarantined=self.gate.stats.rejected,
        )

    async def _end_believed(self, windower: Windower, tps: list[TopicPartition]) -> bool:
        """Every source sent its final heartbeat, every partition is read to its end (nothing follows them)
        and has been for ``final_grace_s``: a forged end while the datacenter goes on is taken back by the
        next message (:attr:`WindowsStatus.finals_revoked`)."""
        if not windower.all_final or not await self._drained(tps):
            self._final_since = None
            return False
        now = self._clock()
        if self._final_since is None:
            self._final_since = now
        return now - self._final_since >= self.final_grace_s

    async def _drained(self, tps: list[TopicPartition]) -> bool:
        ends = await self.consumer.end_offsets(tps)
        for tp in tps:
            if await self.consumer.position(tp) < ends[tp]:
                return False
        return True

    async def _ingest(self, windower: Windower, tp: TopicPartition, records: list[Record]) -> None:
        if not (records := list(self.mine.keep(records))):
            return
        kind = self.kinds[tp.topic]
        if kind in ("tasks", "fragments", "power"):
            seen, bad = self._ingest_columns(windower, tp, kind, records)
        else:
            seen, bad = len(records), self._ingest_records(windower, tp, kind, records)
        self.stats.decoded += seen - len(bad)
        await self._dead_letters(bad)

    async def _dead_letters(self, bad: list[tuple[RecordLike, str]]) -> None:
        if bad and self.dead_letter is not None:
            self.stats.dead_lettered += await forward_dead_letters(self.dead_letter, bad)

    def _ingest_columns(
        self, windower: Windower, tp: TopicPartition, kind: Columnar, records: list[Record]
    ) -> tuple[int, list[tuple[RecordLike, str]]]:
        """A fetch of a high-volume stream, decoded into columns at once (:mod:`opendt.stream.columns`); when
        the time gate takes all of it at once (the common case), the fragments go to their windows a fetch at
        a time. Otherwise each record (and heartbeat) is judged and windowed in turn, exactly as alone."""
        fetch = decode_fetch(kind, records)
        bad: list[tuple[RecordLike, str]] = [
            (item, note_malformed(self.stats, item, MessageError(reason))) for item, reason in fetch.bad
        ]
        frame, beats = fetch.frame, fetch.heartbeats
        while not self._all_at_once(windower, tp, kind, frame, beats, bad):
            rest = self._one_by_one(windower, tp, kind, frame, beats, bad)
            if rest is None:
                break
            frame, beats = rest
        return fetch.records, bad

    def _all_at_once(
        self,
        windower: Windower,
        tp: TopicPartition,
        kind: Columnar,
        frame: pl.DataFrame,
        beats: list[tuple[int, int, Heartbeat]],
        bad: list[tuple[RecordLike, str]],
    ) -> bool:
        """Records (and heartbeats) the time gate takes at once: windowed at once (fragments as frames)."""
        if any(hb.final for _, _, hb in beats):
            return False
        times = frame[TIME_COLUMN[kind]].to_numpy()
        if beats:
            seqs = np.concatenate([frame["seq"].to_numpy(), np.array([s for s, _, _ in beats])])
            times = np.concatenate([times, np.array([hb.time_ms for _, _, hb in beats])])
            times = times[np.argsort(seqs, kind="stable")]
        if not self.gate.accept_run(tp, times.astype(np.int64, copy=False)):
            return False
        self._held_offsets.pop(tp, None)
        for _, _, hb in beats:
            windower.heartbeat(tp, hb.time_ms)
        firsts = windower.add_fragments(tp, frame) if kind == "fragments" else None
        if firsts is None:
            for offset, one in rows_of(kind, frame):
                if why := self._window(windower, tp, offset, one):
                    bad.append((row_item(tp, offset, one), why))
        for start, offset in firsts.items() if firsts else ():
            self._first_offset.note(start, tp, offset)
        return True

    def _one_by_one(
        self,
        windower: Windower,
        tp: TopicPartition,
        kind: Columnar,
        frame: pl.DataFrame,
        beats: list[tuple[int, int, Heartbeat]],
        bad: list[tuple[RecordLike, str]],
    ) -> tuple[pl.DataFrame, list[tuple[int, int, Heartbeat]]] | None:
        """Judge and window each record (and heartbeat) in turn, exactly as alone, until the gate is settled
        again (the partition has spoken, nothing is held) after at least ``SETTLE`` of them: the rest then
        goes back to :meth:`_all_at_once` (returned). None: all done."""
        head = frame.head(SETTLE)  # rows made of at most SETTLE records at a time (the rest stays columns)
        last = int(head["seq"][-1]) if head.height < frame.height else None
        items: list[tuple[int, int, Row]] = [b for b in beats if last is None or b[0] <= last]
        items += [(s, o, r) for (o, r), s in zip(rows_of(kind, head), head["seq"].to_list(), strict=True)]
        items.sort(key=lambda x: x[0])
        for k, (seq, offset, row) in enumerate(items):
            self._judge(windower, tp, offset, row, bad)
            settled = self.gate.accepted_ms(tp) is not None and not self.gate.holding(tp)
            if (settled and k + 1 >= SETTLE and k + 1 < len(items)) or (
                k + 1 == len(items) and last is not None
            ):
                return frame.filter(pl.col("seq") > seq), [b for b in beats if b[0] > seq]
        return None

    def _ingest_records(
        self, windower: Windower, tp: TopicPartition, kind: Kind, records: list[Record]
    ) -> list[tuple[RecordLike, str]]:
        """A fetch of ``dc.carbon`` or ``dc.topology`` (a few records): each decoded, judged and windowed."""
        bad: list[tuple[RecordLike, str]] = []
        for rec in records:
            try:
                row = decode_record(kind, rec.key, rec.value)
            except MessageError as e:
                bad.append((rec, note_malformed(self.stats, rec, e)))
                continue
            if isinstance(row, TopologyMessage):
                why, evicted = admit_topology(windower, self.gate.judge_topology(row.time_ms), row.time_ms)
                self.topologies_rejected += evicted
                if why is not None:
                    self.topologies_rejected += 1
                    bad.append((rec, self._quarantined(rec, why)))
                    continue
                if not windower.add_topology(row.time_ms, row.topology):
                    log.warning(
                        "topology_conflict",
                        offset=rec.offset,
                        timestamp=iso_ms(row.time_ms),
                        reason="another topology with this timestamp came first; the later one applies",
                    )
                start = -(-row.time_ms // self.window_ms) * self.window_ms  # the first window from it on
                self._first_offset.note(start, tp, rec.offset)
                continue
            if kind == "topology":  # a heartbeat of dc.topology: it holds no watermark
                continue
            # carbon is a step series: a step long before the run is the intensity in effect at its start
            self._judge(windower, tp, rec.offset, row, bad, series=kind == "carbon")
        return bad

    def _judge(
        self,
        windower: Windower,
        tp: TopicPartition,
        offset: int,
        row: Row,
        bad: list[tuple[RecordLike, str]],
        *,
        series: bool = False,
    ) -> None:
        """One record (or heartbeat) through the time gate, then the windower; refusals into ``bad``."""
        final = isinstance(row, Heartbeat) and row.final
        verdicts = self.gate.offer(tp, time_of(row), (offset, row), final=final, series=series)
        if self.gate.holding(tp):
            self._held_offsets.setdefault(tp, offset)
        else:
            self._held_offsets.pop(tp, None)
        for v in verdicts:
            if v.accepted:
                if why := self._window(windower, tp, *v.item):
                    bad.append((row_item(tp, *v.item), why))
            else:
                item = row_item(tp, *v.item)
                bad.append((item, self._quarantined(item, v.reason)))

    def _quarantined(self, rec: RecordLike, reason: str) -> str:
        log.warning(
            "message_quarantined", topic=rec.topic, partition=rec.partition, offset=rec.offset, reason=reason
        )
        return f"quarantined: {reason}"

    def _window(self, windower: Windower, tp: TopicPartition, offset: int, row: Row) -> str | None:
        """Hand an accepted message to the windower (remembering the offset of its window's first record);
        the reason when it is refused as late (its window was closed), for the dead-letter topic."""
        late = windower.stats.late
        if isinstance(row, Heartbeat):
            windower.heartbeat(tp, row.time_ms, final=row.final)
            return None
        if isinstance(row, FragmentRow):
            added, start = windower.add_fragment(tp, row, offset), self._start(row.submission_ms)
        elif isinstance(row, TaskRow):
            conflicts = windower.stats.conflicts
            added, start = windower.add_task(tp, row), self._start(row.submission_ms)
            if windower.stats.conflicts > conflicts:
                why = "a task with this id and other content was received first; it keeps the id"
                where = {"topic": tp.topic, "partition": tp.partition, "offset": offset}
                log.warning("task_id_conflict", **where, task=row.id[:64], reason=why)
                return f"conflict: {why}"  # dead-lettered, as the README says
        elif isinstance(row, PowerRow):
            added, start = windower.add_power(tp, row), self._start(row.timestamp_ms)
        else:
            assert isinstance(row, CarbonRow)  # carried by the window that ends at or after it
            added, start = windower.add_carbon(tp, row), self._start(row.timestamp_ms - 1)
        if added:
            self._first_offset.note(start, tp, offset)
        elif windower.stats.late > late and windower.last_late is not None:
            t_ms, closed = windower.last_late
            reason = f"late: {iso_ms(t_ms)} is in the window from {iso_ms(closed)}, closed already"
            log.warning("message_late", topic=tp.topic, partition=tp.partition, offset=offset, reason=reason)
            return reason
        return None

    def _start(self, t_ms: int) -> int:
        return window_start(t_ms, self.window_ms)

    async def _offsets_at_close(self, w: Window, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self._first_offset.close_before(w.end_ms)  # this window, and late events merged into it
        offsets: dict[TopicPartition, int] = {}
        for tp in tps:
            later = [o for o in (self._first_offset.lowest(tp), self._held_offsets.get(tp)) if o is not None]
            # a held message is not windowed yet: a restart must read it again
            offsets[tp] = min(later) if later else await self.consumer.position(tp)
        return offsets

    async def commit_durable(self, closed: ClosedWindow) -> None:
        """Commit the offsets recorded when ``closed`` closed (call once its results are durable)."""
        if self.commit and closed.commit_offsets:
            await self.consumer.commit(dict(closed.commit_offsets))
