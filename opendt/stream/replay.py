"""The replay producer: the datacenter stand-in. Streams a workload directory into Kafka at trace pace.

One merged, time-ordered stream of tasks, fragments and power samples (DESIGN §4 encodings, built
vectorized with polars in chunks, off the event loop); every record is sent at its trace time mapped to wall
time by ``speed`` through one :class:`ReplayClock` (one clock and one origin for all streams: they start
together and gaps are preserved). Heartbeats every ``heartbeat_s`` of trace time on every partition of the
three streams; a final heartbeat at the end. The physical topology goes to ``dc.topology`` first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import structlog
from aiokafka import AIOKafkaProducer

from opendt.clock import Clock, ReplayClock
from opendt.kafka.client import BatchSender
from opendt.models.datacenter import DEFAULT as DEFAULT_DATACENTER
from opendt.models.messages import DATACENTER_KEY, encode_heartbeat, encode_topology_message
from opendt.settings import ReplaySettings, TopicNames
from opendt.stream.columns import CONTENT_TYPE, NDJSON
from opendt.workload import Workload

log = structlog.get_logger(component="replay")

CHUNK = 50_000
YIELD_EVERY = 2_000
FLUSH_EVERY_S = 0.02
"""At a finite speed, what is due is flushed before every wait at least this long and at least this often in a
dense stream, so a record leaves at most about twice this late; one produce round trip per event instant
(SURF has 514k distinct fragment times) would overload the broker and make the replay fall behind."""
BATCH_HEADERS = ((CONTENT_TYPE, NDJSON.encode()),)
KINDS = ("tasks", "fragments", "power", "carbon")
"""The streams, in the order records of one instant are sent (tasks before their fragments)."""


def _iso(col: str) -> pl.Expr:
    return pl.from_epoch(pl.col(col), time_unit="ms").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")


def _json_str(col: str) -> pl.Expr:
    return (
        pl.col(col)
        .cast(pl.Utf8)
        .str.replace_all("\\", "\\\\", literal=True)
        .str.replace_all('"', '\\"', literal=True)
    )


def _num(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Utf8)


def _json_object(fields: list[tuple[str, pl.Expr, bool]]) -> pl.Expr:
    """A JSON object as one string expression: ``(name, expression, quoted)`` per field, in order."""
    parts: list[pl.Expr] = []
    for i, (name, expr, quoted) in enumerate(fields):
        q = '"' if quoted else ""
        parts += [pl.lit(("{" if i == 0 else ",") + f'"{name}":{q}'), expr]
        if quoted:
            parts.append(pl.lit('"'))
    return pl.concat_str([*parts, pl.lit("}")])


@dataclass(frozen=True)
class _Stream:
    kind: str
    """One of :data:`KINDS`."""
    frame: pl.DataFrame
    t: str
    """The column of trace time (epoch ms)."""
    key: pl.Expr
    value: pl.Expr
    line: pl.Expr | None = None
    """The record as a line of an NDJSON batch (its key's field inline); None: sent one per message."""


def _submitted(*numeric: str, inline_id: bool = False) -> pl.Expr:
    """A task or fragment record: its ``submission_time``, then the ``numeric`` columns in order (with
    ``inline_id`` first its ``id``: a line of a batch)."""
    head = [("id", _json_str("id"), True)] if inline_id else []
    return _json_object(
        [*head, ("submission_time", _iso("submission_ms"), True), *((c, _num(c), False) for c in numeric)]
    )


def streams_of(
    workload: Workload, power_source: str, *, first_ms: int | None = None, after_ms: int | None = None
) -> list[_Stream]:
    """Per stream of :data:`KINDS` present in the workload: its rows and its records' expressions.

    Carbon steps are sent at their time, but not before ``first_ms`` (the first event: steps in force
    before the trace starts go out with it) nor after the trace's end (steps after it go out with the last
    events: the twin needs them while the last tasks run out, and they must not move its clock past the
    trace); with ``after_ms`` (a resumed twin knows the steps up to it) only the later steps."""
    id_key = _json_object([("id", _json_str("id"), True)])
    out = [
        _Stream(
            "tasks",
            workload.tasks,
            "submission_ms",
            id_key,
            _submitted("duration", "cpu_count", "cpu_capacity", "mem_capacity"),
            _submitted("duration", "cpu_count", "cpu_capacity", "mem_capacity", inline_id=True),
        ),
        _Stream(
            "fragments",
            workload.fragments,
            "submission_ms",
            id_key,
            _submitted("duration", "cpu_count", "cpu_usage", "index"),
            _submitted("duration", "cpu_count", "cpu_usage", "index", inline_id=True),
        ),
    ]
    if workload.consumption is not None:
        source = power_source.replace("\\", "\\\\").replace('"', '\\"')
        fields = [
            ("timestamp", _iso("timestamp_ms"), True),
            ("power_draw", _num("power_draw"), False),
            ("energy_usage", pl.col("energy_usage").fill_null(0.0).cast(pl.Utf8), False),
        ]
        out.append(
            _Stream(
                "power",
                workload.consumption,
                "timestamp_ms",
                pl.lit('{"source":"' + source + '"}'),
                _json_object(fields),
                _json_object([("source", pl.lit(source), True), *fields]),
            )
        )
    if workload.carbon is not None:
        carbon = workload.carbon
        if after_ms is not None:
            carbon = carbon.filter(pl.col("timestamp_ms") > after_ms)
        send = pl.min_horizontal(pl.col("timestamp_ms"), pl.lit(workload.end_ms))
        if first_ms is not None:
            send = pl.max_horizontal(send, pl.lit(first_ms))
        out.append(
            _Stream(
                "carbon",
                carbon.with_columns(send.cast(pl.Int64).alias("send_ms")),
                "send_ms",
                pl.lit(DATACENTER_KEY.decode()),
                _json_object(
                    [
                        ("timestamp", _iso("timestamp_ms"), True),
                        ("carbon_intensity", _num("carbon_intensity"), False),
                    ]
                ),
            )
        )
    return out


def event_order(streams: list[_Stream]) -> pl.DataFrame:
    """Every record's place in the merged stream: ``t`` (ms), ``stream``, ``row`` (in its frame), sorted by
    trace time, then stream (tasks before their fragments), then row. 13 bytes a record: the records
    themselves are encoded a chunk at a time (:func:`encode_chunk`)."""
    parts = [
        s.frame.select(
            pl.col(s.t).cast(pl.Int64).alias("t"),
            pl.lit(i, pl.Int8).alias("stream"),
            pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"),
        )
        for i, s in enumerate(streams)
    ]
    return pl.concat(parts).sort(["t", "stream"], maintain_order=True)


def encode_chunk(streams: list[_Stream], order: pl.DataFrame, *, lines: bool = False) -> pl.DataFrame:
    """The records of ``order`` (a slice of :func:`event_order`) in its order: ``t``, ``stream``, ``key``,
    ``value`` (DESIGN §4 JSON; with ``lines``, the value of a stream sent in batches is its batch line)."""
    pos = order.with_row_index("pos")
    parts = []
    for i, s in enumerate(streams):
        mine = pos.filter(pl.col("stream") == i)
        if mine.height:
            value = s.line if lines and s.line is not None else s.value
            rows = s.frame[mine["row"]].select(s.key.alias("key"), value.alias("value"))
            parts.append(pl.concat([mine.select("pos", "t", "stream"), rows], how="horizontal"))
    if not parts:
        return pl.DataFrame(schema={"t": pl.Int64, "stream": pl.Int8, "key": pl.Utf8, "value": pl.Utf8})
    return pl.concat(parts).sort("pos").drop("pos")


def batch_groups(
    chunk: pl.DataFrame,
    hb_ms: int,
    bucket_ms: int | None,
    batch_records: int,
    batch_bytes: int,
    batched: list[bool],
) -> pl.DataFrame:
    """The messages of an encoded chunk (:func:`encode_chunk` with lines), in order: ``stream``, ``t0``/``t1``
    (first and last record time), ``n``, ``key``, ``payload``. A batched stream's records go in NDJSON batches
    of at most ``batch_records`` records and ``batch_bytes`` bytes, never across a heartbeat (``hb_ms``) nor,
    at a finite speed, across a pacing slot (``bucket_ms``: records due together); others one a message."""
    longest = int(chunk["value"].str.len_bytes().max() or 1) + 1  # type: ignore[arg-type]
    per_batch = max(1, min(batch_records, batch_bytes // longest))
    keys = [(pl.col("t") // hb_ms).alias("hb"), pl.col("stream")]
    if bucket_ms is not None:
        keys.append((pl.col("t") // bucket_ms).alias("bucket"))
    single = pl.col("stream").is_in([i for i, b in enumerate(batched) if not b])
    rank = pl.int_range(pl.len()).over(keys)
    sub = pl.when(single).then(rank).otherwise(rank // per_batch).alias("sub")
    return (
        chunk.with_columns(sub)
        .group_by([*keys, "sub"], maintain_order=True)
        .agg(
            pl.col("t").first().alias("t0"),
            pl.col("t").last().alias("t1"),
            pl.len().alias("n"),
            pl.col("key").first(),
            pl.col("value").str.join("\n").alias("payload"),
        )
        .select("stream", "t0", "t1", "n", "key", "payload")
    )


@dataclass
class ReplayProgress:
    trace_ms: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    sent: int = 0
    rate_per_s: float = 0.0
    lag_s: float = 0.0
    done: bool = False
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "trace_ms": self.trace_ms,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "sent": self.sent,
            "rate_per_s": round(self.rate_per_s, 1),
            "lag_s": round(self.lag_s, 3),
            "done": self.done,
            "counts": dict(self.counts),
        }


class ReplayProducer:
    def __init__(
        self,
        workload: Workload,
        producer: AIOKafkaProducer,
        topics: TopicNames,
        settings: ReplaySettings,
        clock: Clock,
        progress: ReplayProgress | None = None,
        *,
        start_at_ms: int | None = None,
        datacenter: str = DEFAULT_DATACENTER,
    ) -> None:
        self.workload = workload
        self.datacenter = (
            datacenter  # a named one's messages carry its header, on its partition of each topic
        )
        self.start_at_ms = start_at_ms
        """Resume: send only the events from here on (a restarted twin has the earlier ones)."""
        self.producer = producer
        self.topics = topics
        self.settings = settings
        self.clock = clock
        self.progress = progress if progress is not None else ReplayProgress()
        self._log = log.bind(workload=workload.meta.name)
        self._next_hb, self._last_flush, self._next_report = 0, 0.0, 0.0

    async def _chunks(
        self,
        streams: list[_Stream],
        order: pl.DataFrame,
        groups: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> AsyncIterator[pl.DataFrame]:
        """The encoded records, ``CHUNK`` at a time, each encoded off the event loop while the one before it
        is sent; with ``groups``, the messages it makes of them (records in batches), also off the loop."""

        def encode(part: pl.DataFrame) -> pl.DataFrame:
            chunk = encode_chunk(streams, part, lines=groups is not None)
            return chunk if groups is None else groups(chunk)

        offsets = range(0, order.height, CHUNK)
        if not offsets:
            return
        ahead = asyncio.ensure_future(asyncio.to_thread(encode, order.slice(0, CHUNK)))
        try:
            for off in offsets:
                chunk = await ahead
                if off + CHUNK < order.height:
                    ahead = asyncio.ensure_future(asyncio.to_thread(encode, order.slice(off + CHUNK, CHUNK)))
                yield chunk
        finally:
            if not ahead.done():
                ahead.cancel()

    async def run(self) -> None:
        wl = self.workload
        source = wl.topology.clusters[0].powerSource.name
        firsts = [int(f["submission_ms"].min()) for f in (wl.tasks, wl.fragments) if f.height]  # type: ignore[arg-type]
        if wl.consumption is not None and wl.consumption.height:
            firsts.append(int(wl.consumption["timestamp_ms"].min()))  # type: ignore[arg-type]
        first_ms = min(firsts) if firsts else wl.origin_ms
        streams = streams_of(wl, source, first_ms=first_ms, after_ms=self.start_at_ms)
        order = await asyncio.to_thread(event_order, streams)
        if self.start_at_ms is not None:
            order = order.filter(pl.col("t") >= self.start_at_ms)
        start_ms = int(order["t"][0]) if order.height else max(first_ms, self.start_at_ms or first_ms)
        end_ms = max(wl.end_ms, start_ms)
        hb_ms = int(self.settings.heartbeat_s * 1000)
        speed = None if self.settings.speed == "max" else float(self.settings.speed)
        rclock = ReplayClock(self.clock, speed, start_ms)
        p, dc, t = self.progress, self.datacenter, self.topics
        p.start_ms, p.end_ms = start_ms, end_ms
        by_kind = {k: BatchSender(self.producer, getattr(t, k), dc) for k in KINDS}
        senders = [by_kind[s.kind] for s in streams]  # by stream index
        every = list(by_kind.values())
        async with BatchSender(self.producer, t.topology, dc) as topology:
            await topology.send(DATACENTER_KEY, encode_topology_message(first_ms, wl.topology))
        rclock.start()  # the barrier: every stream is paced from this one origin
        wall0 = time.monotonic()
        self._next_hb = (start_ms // hb_ms + 1) * hb_ms
        self._last_flush = self.clock.monotonic()
        self._next_report = self._last_flush + self.settings.progress_every_s
        self._log.info(
            "replay_started", records=order.height, start_ms=start_ms, end_ms=end_ms, speed=speed or "max"
        )
        if self.settings.batch_records > 1:
            n = await self._send_batches(streams, order, rclock, senders, every, wall0)
        else:
            n = await self._send_records(streams, order, rclock, senders, every, wall0)
        for sender in every:
            await sender.send_to_all(None, encode_heartbeat(end_ms, final=True))
            await sender.flush()
        p.trace_ms = end_ms
        p.done = True
        self._report(n, wall0, rclock, end_ms)
        self._log.info("replay_finished", sent=n, wall_s=round(time.monotonic() - wall0, 3))

    async def _heartbeats(self, t: int, every: list[BatchSender], speed: float | None) -> None:
        """The heartbeats due before a record at ``t`` (one per partition of each stream)."""
        hb_ms = int(self.settings.heartbeat_s * 1000)
        if t < self._next_hb:
            return
        hb = (t // hb_ms) * hb_ms
        for sender in every:
            await sender.send_to_all(None, encode_heartbeat(hb))
        self._next_hb = hb + hb_ms
        if speed is None and self.clock.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            for sender in every:  # a sparse stream's heartbeats must not wait for a full batch
                await sender.submit()
            self._last_flush = self.clock.monotonic()

    async def _pace(self, t: int, rclock: ReplayClock, every: list[BatchSender]) -> None:
        """Wait until ``t`` is due (a finite speed), flushing what is due first."""
        if rclock.speed is not None:
            now = self.clock.monotonic()
            if rclock.wall_due(t) - now >= FLUSH_EVERY_S or now - self._last_flush >= FLUSH_EVERY_S:
                for sender in every:  # what is due now must leave now, not at the next batch
                    await sender.flush()
                self._last_flush = self.clock.monotonic()
            await rclock.wait_until(t)
        self.progress.trace_ms = t

    async def _send_records(
        self,
        streams: list[_Stream],
        order: pl.DataFrame,
        rclock: ReplayClock,
        senders: list[BatchSender],
        every: list[BatchSender],
        wall0: float,
    ) -> int:
        """One record per message (``replay.batch_records: 1``); returns the records sent."""
        p, names, n = self.progress, [s.kind for s in streams], 0
        current_t: int | None = None
        async for chunk in self._chunks(streams, order):
            ts = chunk["t"].to_list()
            kinds = chunk["stream"].to_list()
            keys = chunk["key"].to_list()
            values = chunk["value"].to_list()
            for t, s, k, v in zip(ts, kinds, keys, values, strict=True):
                await self._heartbeats(t, every, rclock.speed)
                if t != current_t:
                    current_t = t
                    await self._pace(t, rclock, every)
                await senders[s].send(k.encode(), v.encode())
                p.counts[names[s]] += 1
                n += 1
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                    self._report_due(n, wall0, rclock, t)
        return n

    async def _send_batches(
        self,
        streams: list[_Stream],
        order: pl.DataFrame,
        rclock: ReplayClock,
        senders: list[BatchSender],
        every: list[BatchSender],
        wall0: float,
    ) -> int:
        """Records in NDJSON batches (:func:`batch_groups`); returns the records sent."""
        p, names, n = self.progress, [s.kind for s in streams], 0
        hb_ms = int(self.settings.heartbeat_s * 1000)
        bucket_ms = None if rclock.speed is None else max(1, int(FLUSH_EVERY_S * 1000 * rclock.speed))
        batched = [s.line is not None for s in streams]
        records, size = self.settings.batch_records, self.settings.batch_bytes

        def groups(chunk: pl.DataFrame) -> pl.DataFrame:
            return batch_groups(chunk, hb_ms, bucket_ms, records, size, batched)

        async for messages in self._chunks(streams, order, groups):
            for s, t0, t1, count, key, payload in messages.iter_rows():
                await self._heartbeats(t0, every, rclock.speed)
                await self._pace(t1, rclock, every)
                if batched[s]:
                    await senders[s].send(DATACENTER_KEY, payload.encode(), headers=BATCH_HEADERS)
                else:
                    await senders[s].send(key.encode(), payload.encode())
                p.counts[names[s]] += count
                n += count
                await asyncio.sleep(0)
                self._report_due(n, wall0, rclock, t1)
        return n

    def _report_due(self, n: int, wall0: float, rclock: ReplayClock, t: int) -> None:
        """Report progress when ``replay.progress_every_s`` has passed since the last report."""
        now = self.clock.monotonic()
        if now >= self._next_report:
            self._next_report = now + self.settings.progress_every_s
            self._report(n, wall0, rclock, t)

    def _report(self, n: int, wall0: float, rclock: ReplayClock, t: int) -> None:
        p = self.progress
        p.sent = n
        p.rate_per_s = n / max(1e-9, time.monotonic() - wall0)
        p.lag_s = rclock.lag_s(t) if rclock.speed is not None else 0.0
        self._log.info(
            "replay_progress", trace_ms=t, sent=n, rate_per_s=round(p.rate_per_s), lag_s=round(p.lag_s, 3)
        )
