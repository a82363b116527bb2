"""The aiokafka helpers against a real broker: bulk round trip, per-key order, malformed-message handling."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from opendt.kafka.client import (
    BatchSender,
    DeadLetter,
    DecodedRecord,
    DecodeStats,
    consume_decoded,
    make_consumer,
    make_producer,
    produce_json,
    send_many,
)
from opendt.models.messages import (
    FragmentMessage,
    Heartbeat,
    StreamKind,
    encode_heartbeat,
    encode_key,
    iso_ms,
)
from opendt.settings import KafkaSettings

pytestmark = pytest.mark.kafka

T0_MS = 1_665_093_600_000  # 2022-10-06T22:00:00Z


def fragment_value(submission_ms: int, duration: int, cpu_count: int, cpu_usage: float, index: int) -> bytes:
    return orjson.dumps(
        {
            "submission_time": iso_ms(submission_ms),
            "duration": duration,
            "cpu_count": cpu_count,
            "cpu_usage": cpu_usage,
            "index": index,
        }
    )


def fragments(tasks: int, per_task: int) -> list[tuple[bytes, bytes]]:
    """DESIGN §4 fragment records, interleaved across tasks (fragment k of every task, then k+1)."""
    keys = [encode_key("id", f"task-{t}") for t in range(tasks)]
    out = []
    for k in range(per_task):
        for t in range(tasks):
            start = T0_MS + t * 1000 + k * 30_000
            out.append((keys[t], fragment_value(start, 30_000, 1 + t % 8, 100.0 + k, k)))
    return out


async def collect(
    bootstrap: str,
    settings: KafkaSettings,
    topic: str,
    kind: StreamKind,
    expected: int,
    stats: DecodeStats,
    dead_letter: DeadLetter | None = None,
    *,
    group: bool = False,
) -> list[DecodedRecord]:
    """Consume ``topic`` until ``expected`` good messages arrived (with a fresh group: then commit)."""
    got: list[DecodedRecord] = []
    group_id = f"g-{uuid.uuid4().hex[:8]}" if group else None
    consumer = make_consumer(bootstrap, [topic], group_id, settings)
    await consumer.start()
    try:
        async with asyncio.timeout(120):
            async with contextlib.aclosing(
                consume_decoded(consumer, kind, stats=stats, dead_letter=dead_letter, timeout_ms=200)
            ) as batches:
                async for batch in batches:
                    got.extend(batch)
                    if len(got) >= expected:
                        break
        if group_id is not None:
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            await consumer.client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}


@pytest.mark.slow
async def test_100k_fragments_round_trip_without_loss_and_in_key_order(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, topic_factory: Callable[..., str]
) -> None:
    """100k DESIGN-encoded fragments over 4 partitions all arrive, once each, in order per task."""
    topic = topic_factory("frag", partitions=4)
    records = fragments(tasks=2000, per_task=50)
    assert len(records) == 100_000
    async with make_producer(kafka_bootstrap, kafka_settings) as producer:
        assert await send_many(producer, topic, records) == 100_000

    stats = DecodeStats()
    got = await collect(kafka_bootstrap, kafka_settings, topic, "fragments", 100_000, stats, group=True)

    assert len(got) == 100_000
    assert stats.decoded == 100_000
    assert stats.malformed == 0
    assert {r.partition for r in got} == {0, 1, 2, 3}
    per_task: dict[str, list[int]] = {}
    partition_of: dict[str, set[int]] = {}
    for r in got:
        msg = r.message
        assert isinstance(msg, FragmentMessage)
        per_task.setdefault(msg.id, []).append(msg.index)
        partition_of.setdefault(msg.id, set()).add(r.partition)
    assert len(per_task) == 2000
    assert all(indexes == list(range(50)) for indexes in per_task.values())
    assert all(len(parts) == 1 for parts in partition_of.values())
    first = next(
        r.message for r in got if isinstance(r.message, FragmentMessage) and r.message.id == "task-7"
    )
    assert isinstance(first, FragmentMessage)
    assert first.time_ms == T0_MS + 7000
    assert first.cpu_count == 8


async def test_malformed_messages_are_counted_logged_skipped_and_dead_lettered(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, topic_factory: Callable[..., str]
) -> None:
    """Non-JSON, wrong types, missing key and unknown fields are skipped and forwarded; good ones arrive."""
    topic = topic_factory("mixed")
    dlq = topic_factory("dlq")
    key = encode_key("id", "t1")
    good0 = fragment_value(T0_MS, 1000, 2, 50.0, 0)
    good1 = fragment_value(T0_MS + 1000, 1000, 2, 60.0, 1)
    bad = [
        (key, b"{not json"),
        (key, orjson.dumps({**orjson.loads(good0), "duration": "long"})),
        (None, good0),
        (key, orjson.dumps({**orjson.loads(good0), "colour": "red"})),
    ]
    async with make_producer(kafka_bootstrap, kafka_settings) as producer:
        assert await send_many(producer, topic, [(key, good0), *bad, (key, good1)]) == 6
        stats = DecodeStats()
        got = await collect(
            kafka_bootstrap, kafka_settings, topic, "fragments", 2, stats, DeadLetter(producer, dlq)
        )

    expected = [orjson.loads(good0), orjson.loads(good1)]
    assert [(r.offset, r.message) for r in got] == [
        (0, FragmentMessage.model_validate({**expected[0], "id": "t1"})),
        (5, FragmentMessage.model_validate({**expected[1], "id": "t1"})),
    ]
    assert stats.decoded == 2
    assert stats.malformed == 4
    assert stats.dead_lettered == 4
    dead = await collect_raw(kafka_bootstrap, kafka_settings, dlq, 4)
    assert [r.value for r in dead] == [v for _, v in bad]
    assert [dict(r.headers)["source_offset"] for r in dead] == [b"1", b"2", b"3", b"4"]
    reasons = [dict(r.headers)["reason"].decode() for r in dead]
    assert "not JSON" in reasons[0]
    assert "duration" in reasons[1]
    assert "missing key" in reasons[2]
    assert "unknown key" in reasons[3]


async def collect_raw(bootstrap: str, settings: KafkaSettings, topic: str, expected: int) -> list[Any]:
    consumer = make_consumer(bootstrap, [topic], None, settings)
    out: list[Any] = []
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while len(out) < expected:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(records)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: r.offset)


async def test_heartbeats_reach_every_partition_and_produce_json_delivers(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, topic_factory: Callable[..., str]
) -> None:
    """send_to_all puts a heartbeat on each partition; produce_json waits for the broker's offset."""
    topic = topic_factory("hb", partitions=3)
    async with make_producer(kafka_bootstrap, kafka_settings) as producer:
        async with BatchSender(producer, topic) as sender:
            await sender.send_to_all(None, encode_heartbeat(T0_MS))
        assert sender.sent == 3
        meta = await produce_json(
            producer, topic, None, encode_heartbeat(T0_MS + 60_000, final=True), partition=1
        )
        assert (meta.partition, meta.offset) == (1, 1)
    assert await end_offsets(kafka_bootstrap, topic) == {0: 1, 1: 2, 2: 1}
    stats = DecodeStats()
    got = await collect(kafka_bootstrap, kafka_settings, topic, "fragments", 4, stats)
    beats = sorted((r.partition, r.offset, r.message) for r in got)
    assert [(p, o) for p, o, _ in beats] == [(0, 0), (1, 0), (1, 1), (2, 0)]
    assert all(isinstance(m, Heartbeat) for _, _, m in beats)
    final = beats[2][2]
    assert isinstance(final, Heartbeat)
    assert final.final
