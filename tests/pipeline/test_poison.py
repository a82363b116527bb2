"""Poison messages on every topic the twin consumes are skipped and counted; the good data all lands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from aiokafka import ConsumerRecord
from structlog.testing import capture_logs

from opendt.daemon import run_daemon
from opendt.kafka.client import make_consumer, make_producer
from opendt.models.messages import DATACENTER_KEY
from opendt.settings import Settings
from opendt.twin.status import TwinState
from opendt.workload import load_workload

from .conftest import assert_windows_contiguous, last_window_end_ms, max_rel_diff, one_shot, read_results

SUB = "2024-01-01T00:10:00Z"


def _poison(settings: Settings) -> list[tuple[str, bytes | None, bytes]]:
    """One undecodable record per consumed topic (plus a schema-invalid topology), in different ways."""
    t = settings.kafka.topics
    api_topology = {
        "version": 1,
        "source": "api",
        "timestamp": SUB,
        "reason": "bad",
        "topology": {"clusters": []},
    }
    return [
        (
            t.tasks,
            b'{"id":"p"}',
            b'{"submission_time":"' + SUB.encode() + b'","duration":"abc","cpu_count":1}',
        ),
        (t.fragments, b"not a json key", b"{}"),
        (
            t.power,
            b'{"source":"x"}',
            b'{"timestamp":"' + SUB.encode() + b'","power_draw":-5,"energy_usage":1}',
        ),
        (t.sim_topology, DATACENTER_KEY, b"{not json"),
        (t.sim_topology, DATACENTER_KEY, orjson.dumps(api_topology)),
    ]


async def test_poison_on_every_topic_is_skipped_and_counted(
    daemon_settings: Callable[..., Settings], small_workload: Path
) -> None:
    """1. a malformed record is produced first on dc.tasks, dc.fragments, dc.power and sim.topology (two
    there); 2. the daemon runs over them: each is logged with topic/partition/offset and counted (state
    counters and the consumer's stats), none stops it; 3. every task, fragment and power sample of the
    workload lands in a window, all windows ok, results equal the one-shot engine, topology unchanged."""
    settings = daemon_settings(small_workload)
    poison = _poison(settings)
    producer = make_producer(settings.kafka.bootstrap_servers or "", settings.kafka)
    await producer.start()
    try:
        for topic, key, value in poison:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    state = TwinState()
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
            deadline = time.monotonic() + 45
            while not (
                state.loop is not None
                and state.snapshot()["simulation"]["done"]
                and state.snapshot()["counters"]["malformed_messages"] >= len(poison)
            ):
                assert not daemon.done(), "the daemon stopped"
                assert time.monotonic() < deadline, (
                    f"not done: {state.snapshot() if state.loop is not None else state}"
                )
                await asyncio.sleep(0.05)
            snap = state.snapshot()
            stop.set()
    assert daemon.result() == 0

    assert snap["counters"]["malformed_messages"] == len(poison)
    assert snap["windows"]["malformed"] == 3
    assert snap["windows"]["dead_lettered"] == 3
    # the three malformed input records are on the dead-letter topic, as sent, with where and why
    dlq = make_consumer(
        settings.kafka.bootstrap_servers or "", [settings.kafka.topics.dead_letter], None, settings.kafka
    )
    await dlq.start()
    try:
        async with asyncio.timeout(20):
            letters: list[ConsumerRecord[bytes, bytes]] = []
            while len(letters) < 3:
                for records in (await dlq.getmany(timeout_ms=500)).values():
                    letters.extend(records)
    finally:
        await dlq.stop()
    assert sorted((r.key, r.value) for r in letters) == sorted((k, v) for _, k, v in poison[:3])
    for r in letters:
        headers = dict(r.headers)
        assert headers["source_topic"].decode() in {topic for topic, _, _ in poison[:3]}
        assert headers["source_offset"] == b"0"
        assert headers["reason"]
    assert snap["topology"]["version"] == 0
    bad = [e for e in logs if e["event"] == "message_malformed"]
    assert sorted((e["topic"], e["partition"], e["offset"]) for e in bad) == sorted(
        [(topic, 0, 0) for topic, _, _ in poison[:4]] + [(settings.kafka.topics.sim_topology, 0, 1)]
    )
    assert all(e["reason"] for e in bad)

    wl = load_workload(small_workload)
    agg, windows = read_results(settings.data_dir)
    assert_windows_contiguous(windows)
    assert windows["status"].unique().to_list() == ["ok"]
    assert windows["tasks"].sum() == wl.tasks.height
    assert windows["fragments"].sum() == wl.fragments.height
    assert wl.consumption is not None
    assert windows["power_samples"].sum() == wl.consumption.height
    assert agg["topology_version"].unique().to_list() == [0]
    assert max_rel_diff(agg, one_shot(small_workload, last_window_end_ms(windows))) <= 1e-6
