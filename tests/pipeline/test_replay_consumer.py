"""Replay producer → real Kafka → window-accumulating consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import polars as pl

from opendt.clock import SystemClock
from opendt.kafka.client import make_consumer, make_producer
from opendt.settings import KafkaSettings, ReplaySettings, TopicNames
from opendt.stream.consumer import WindowConsumer
from opendt.stream.replay import ReplayProducer
from opendt.stream.resume import ClosedWindow
from opendt.workload import load_workload

W = 300_000


def _topics(topic_factory: Callable[..., str], partitions: int = 2) -> TopicNames:
    return TopicNames(
        tasks=topic_factory("tasks", partitions),
        fragments=topic_factory("fragments", partitions),
        power=topic_factory("power", 1),
        carbon=topic_factory("carbon", 1),
        topology=topic_factory("topology", 1),
    )


async def _replay_and_collect(
    bootstrap: str, topics: TopicNames, wl_dir: Path, *, poison: bool = False
) -> tuple[list[ClosedWindow], WindowConsumer]:
    ks = KafkaSettings(bootstrap_servers=bootstrap)
    wl = load_workload(wl_dir)
    producer = make_producer(bootstrap, ks)
    await producer.start()
    try:
        if poison:
            for topic in (topics.tasks, topics.fragments, topics.power):
                await producer.send_and_wait(topic, b"{not json", key=b'{"id":"x"}')
        await ReplayProducer(
            wl, producer, topics, ReplaySettings(speed="max", heartbeat_s=60), SystemClock()
        ).run()
    finally:
        await producer.stop()
    consumer = make_consumer(bootstrap, [], "g-" + topics.tasks, ks)
    await consumer.start()
    q: asyncio.Queue[ClosedWindow | None] = asyncio.Queue(maxsize=4)
    wc = WindowConsumer(consumer, topics, W, q)
    out: list[ClosedWindow] = []
    try:
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            tg.create_task(wc.run())
            while (item := await q.get()) is not None:
                out.append(item)
                await wc.commit_durable(item)
    finally:
        await consumer.stop()
    return out, wc


async def test_every_event_lands_in_its_window(
    kafka_bootstrap: str, topic_factory: Callable[..., str], small_workload: Path
) -> None:
    """1. replay the workload at max speed; 2. consume into 300 s windows; 3. every task, fragment and power
    sample arrives exactly once, in the window of its trace time, windows contiguous and aligned."""
    topics = _topics(topic_factory)
    windows, wc = await _replay_and_collect(kafka_bootstrap, topics, small_workload)
    wl = load_workload(small_workload)
    starts = [c.window.start_ms for c in windows]
    assert starts == list(range(starts[0], starts[-1] + W, W))
    assert all(s % W == 0 for s in starts)
    assert windows[-1].window.final
    frags = [f for c in windows for f in c.window.fragment_rows()]
    assert len(frags) == wl.fragments.height
    assert sum(len(c.window.tasks) for c in windows) == wl.tasks.height
    assert wl.consumption is not None
    assert sum(len(c.window.power) for c in windows) == wl.consumption.height
    for c in windows:
        for f in c.window.fragment_rows():
            assert c.window.start_ms <= f[1] < c.window.end_ms
    got = pl.DataFrame(
        frags, schema=["id", "submission_ms", "duration", "cpu_count", "cpu_usage", "index"], orient="row"
    )
    expect = wl.fragments.select("id", "submission_ms", "duration", "cpu_usage", "index")
    assert got.select(expect.columns).sort(["id", "index"]).equals(expect.sort(["id", "index"]))
    assert wc.stats.malformed == 0


async def test_poison_messages_are_counted_and_skipped(
    kafka_bootstrap: str, topic_factory: Callable[..., str], small_workload: Path
) -> None:
    """A malformed message in each input topic is counted and skipped; all good data still arrives."""
    topics = _topics(topic_factory, partitions=1)
    windows, wc = await _replay_and_collect(kafka_bootstrap, topics, small_workload, poison=True)
    wl = load_workload(small_workload)
    assert wc.stats.malformed == 3
    assert sum(len(c.window.fragment_rows()) for c in windows) == wl.fragments.height
