"""Produce and consume N DESIGN §4 fragment messages through a freshly started embedded Tansu.

Usage: ``.venv/bin/python bench/kafka_roundtrip.py [N] [--partitions 4] [--tasks 2000]``

Prints msgs/s and MB/s for: encoding, producing (BatchSender, and one ``send`` future per message for
comparison), consuming with decoding (``consume_decoded``), consuming raw, and end to end (producer and
consumer running concurrently, first send to last decoded message).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing

import orjson

from opendt.kafka.admin import ensure_topics
from opendt.kafka.broker import EmbeddedBroker
from opendt.kafka.client import DecodeStats, consume_decoded, make_consumer, make_producer, send_many
from opendt.log import configure_logging
from opendt.models.messages import encode_key, iso_ms
from opendt.settings import KafkaSettings

T0_MS = 1_665_093_600_000
SETTINGS = KafkaSettings()
Records = list[tuple[bytes | None, bytes]]


def encode_fragments(n: int, tasks: int) -> Records:
    """Fragment k of every task, then k+1: keys ``{"id": ...}``, values with ISO ``Z`` submission times."""
    keys = [encode_key("id", f"task-{t}") for t in range(tasks)]
    out: Records = []
    for i in range(n):
        t, k = i % tasks, i // tasks
        value = orjson.dumps(
            {
                "submission_time": iso_ms(T0_MS + t * 1000 + k * 30_000),
                "duration": 30_000,
                "cpu_count": 1 + t % 8,
                "cpu_usage": 100.0 + k,
                "index": k,
            }
        )
        out.append((keys[t], value))
    return out


async def produce_batched(bootstrap: str, topic: str, records: Records) -> None:
    async with make_producer(bootstrap, SETTINGS) as producer:
        await send_many(producer, topic, records)


async def produce_futures(bootstrap: str, topic: str, records: Records) -> None:
    async with make_producer(bootstrap, SETTINGS) as producer:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)


async def consume(bootstrap: str, topic: str, n: int, *, decoded: bool) -> None:
    consumer = make_consumer(bootstrap, [topic], None, SETTINGS)
    await consumer.start()
    try:
        got = 0
        if decoded:
            stats = DecodeStats()
            async with aclosing(consume_decoded(consumer, "fragments", stats=stats, timeout_ms=200)) as it:
                async for batch in it:
                    got += len(batch)
                    if got >= n:
                        break
            if stats.malformed:
                raise RuntimeError(f"{stats.malformed} malformed messages")
        else:
            while got < n:
                polled = await consumer.getmany(timeout_ms=200, max_records=10_000)
                got += sum(len(r) for r in polled.values())
        if got != n:
            raise RuntimeError(f"consumed {got} messages, expected {n}")
    finally:
        await consumer.stop()


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


def report(label: str, n: int, nbytes: int, seconds: float) -> None:
    print(f"{label:<34} {n / seconds:>10,.0f} msg/s {nbytes / seconds / 1e6:>8.1f} MB/s  ({seconds:.2f} s)")


async def main(n: int, partitions: int, tasks: int) -> None:
    t0 = time.perf_counter()
    records = encode_fragments(n, tasks)
    encode_s = time.perf_counter() - t0
    nbytes = sum(len(k or b"") + len(v) for k, v in records)
    print(f"{n:,} fragment messages, {nbytes / n:.0f} B each (key+value), {partitions} partitions")
    report("encode (orjson + iso_ms)", n, nbytes, encode_s)
    async with EmbeddedBroker(SETTINGS) as broker:
        bootstrap = broker.bootstrap_servers
        tag = uuid.uuid4().hex[:6]
        a, b, c = (f"bench-{name}-{tag}" for name in ("batched", "futures", "e2e"))
        await ensure_topics(bootstrap, [a, b, c], partitions)

        report("produce, BatchSender", n, nbytes, await timed(lambda: produce_batched(bootstrap, a, records)))
        report(
            "produce, send() future per msg",
            n,
            nbytes,
            await timed(lambda: produce_futures(bootstrap, b, records)),
        )
        report(
            "consume raw (getmany)", n, nbytes, await timed(lambda: consume(bootstrap, a, n, decoded=False))
        )
        report(
            "consume + decode (consume_decoded)",
            n,
            nbytes,
            await timed(lambda: consume(bootstrap, a, n, decoded=True)),
        )

        async def both() -> None:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(consume(bootstrap, c, n, decoded=True))
                tg.create_task(produce_batched(bootstrap, c, records))

        report("end to end (concurrent)", n, nbytes, await timed(both))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("n", nargs="?", type=int, default=100_000, help="messages (default 100000)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=2000, help="distinct keys")
    args = parser.parse_args()
    configure_logging("warning", "console", stream=sys.stderr)
    asyncio.run(main(args.n, args.partitions, args.tasks))
