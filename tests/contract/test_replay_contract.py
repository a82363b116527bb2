"""Every message the replay producer sends (the demo workload through a real broker) follows the AsyncAPI
document: its key, headers and value validate against the schemas of one of its channel's messages (an NDJSON
batch, the replay's default: every line against the batch line's schema)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft7Validator

from opendt.api.asyncapi import asyncapi_document
from opendt.clock import SystemClock
from opendt.kafka.client import make_consumer, make_producer
from opendt.settings import KafkaSettings, ReplaySettings, TopicNames
from opendt.stream.columns import NDJSON
from opendt.stream.replay import ReplayProducer
from opendt.workload import load_workload

from .schema_strategy import validator

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
DOC = asyncapi_document()


def _checks(
    kind: str, content_type: str
) -> list[tuple[str, Draft7Validator, Draft7Validator, Draft7Validator]]:
    """Per message of the channel of ``content_type`` (JSON, or the NDJSON batch form): name, key, headers,
    value (or line) validators."""
    out = []
    for ref in DOC["channels"][kind]["messages"].values():
        name = ref["$ref"].rsplit("/", 1)[-1]
        msg = DOC["components"]["messages"][name]
        if msg["contentType"] != content_type:
            continue
        out.append(
            (
                name,
                validator(DOC, msg["bindings"]["kafka"]["key"]),
                validator(DOC, msg.get("headers", {"type": "object"})),
                validator(DOC, msg["payload"]),
            )
        )
    return out


Checks = list[tuple[str, Draft7Validator, Draft7Validator, Draft7Validator]]


def _matches(checks: Checks, batches: Checks, record: Any) -> tuple[str, int]:
    """The message name ``record`` follows (a batch counts as its records: ``(name, lines)``)."""
    key = None if record.key is None else orjson.loads(record.key)
    headers = {k: v.decode() for k, v in record.headers}
    if headers.get("content-type") == NDJSON:
        lines = [orjson.loads(line) for line in record.value.split(b"\n")]
        for name, k, h, v in batches:
            if k.is_valid(key) and h.is_valid(headers) and all(v.is_valid(line) for line in lines):
                return name.removesuffix("Batch"), len(lines)
        errors = [str(e.message) for _, _, _, v in batches for line in lines for e in v.iter_errors(line)]
        raise AssertionError(f"{record.topic}@{record.offset}: a batch line follows no schema: {errors[:4]}")
    value = orjson.loads(record.value)
    for name, k, h, v in checks:
        if k.is_valid(key) and h.is_valid(headers) and v.is_valid(value):
            return name, 1
    errors = [str(e.message) for _, k, h, v in checks for e in (*k.iter_errors(key), *v.iter_errors(value))]
    raise AssertionError(f"{record.topic}@{record.offset} follows no message of its channel: {errors[:4]}")


async def test_every_replayed_message_follows_the_document(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """1. the replay producer streams the demo (at max speed) into fresh topics of two partitions; 2. every
    record of dc.tasks, dc.fragments, dc.power, dc.carbon and dc.topology is read back; 3. each validates as
    one of its channel's messages, all records and heartbeats arrived, and finals on every partition."""
    kinds = ("tasks", "fragments", "power", "carbon", "topology")
    names = {k: topic_factory(k, partitions=2) for k in kinds}
    topics = TopicNames(**names)
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topics=topics)
    wl = load_workload(DEMO)
    producer = make_producer(kafka_bootstrap, settings)
    await producer.start()
    try:
        replay = ReplayProducer(wl, producer, topics, ReplaySettings(speed="max"), SystemClock())
        await asyncio.wait_for(replay.run(), 120)
    finally:
        await producer.stop()
    assert wl.consumption is not None
    assert wl.carbon is not None
    expected = {
        "tasks": wl.tasks.height,
        "fragments": wl.fragments.height,
        "power": wl.consumption.height,
        "carbon": wl.carbon.height,
        "topology": 1,
    }
    for kind in kinds:
        checks, batches = _checks(kind, "application/json"), _checks(kind, NDJSON)
        consumer = make_consumer(kafka_bootstrap, [names[kind]], None, settings)
        await consumer.start()
        seen: dict[str, int] = {}
        finals = 0
        try:
            async with asyncio.timeout(60):
                while seen.get(kind.capitalize(), 0) < expected[kind] or (kind != "topology" and finals < 2):
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        for r in records:
                            name, n = _matches(checks, batches, r)
                            seen[name] = seen.get(name, 0) + n
                            finals += name == "heartbeat" and orjson.loads(r.value).get("final", False)
        finally:
            await consumer.stop()
        assert seen[kind.capitalize()] == expected[kind], (kind, seen)
        if kind != "topology":
            assert seen["heartbeat"] >= 2, (kind, seen)
