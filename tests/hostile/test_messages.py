"""Issue 20's message cases through the real broker and the real daemon: records outside the model's bounds on
every consumed topic (a task with cpu_count 2³¹ or a fragment with index 2³¹ killed the daemon, and crash-looped
it on the same offset, before) are refused where they enter: each counted in /api/status, logged with
topic/partition/offset, the input ones dead-lettered as sent with a reason naming the field; the daemon runs
on, and its results equal a clean run's (none of the refused data reaches a window)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from structlog.testing import capture_logs

from opendt.daemon import run_daemon
from opendt.kafka.client import make_producer
from opendt.models.bounds import MAX_HOSTS
from opendt.models.messages import DATACENTER_KEY
from opendt.settings import Settings
from opendt.twin.status import TwinState
from opendt.workload import load_workload

from ..pipeline.conftest import (
    assert_windows_contiguous,
    last_window_end_ms,
    max_rel_diff,
    one_shot,
    read_results,
    write_small_workload,
)
from .conftest import call, dead_letters

T = "2024-01-01T00:10:00Z"
TASK = {"submission_time": T, "duration": 60_000, "cpu_count": 4, "cpu_capacity": 16000.0, "mem_capacity": 1}
FRAG = {"submission_time": T, "duration": 60_000, "cpu_count": 4, "cpu_usage": 100.0, "index": 0}
POWER = {"timestamp": T, "power_draw": 500.0, "energy_usage": 1.0}
HOST = {"name": "H", "count": 4, "cpu": {"coreCount": 16, "coreSpeed": 2000}, "memory": {"memorySize": 1000}}


def _sim_topology(**change: Any) -> bytes:
    host = {**HOST, **change}
    topo = {"clusters": [{"name": "C", "hosts": [host]}]}
    doc = {"version": 1, "source": "api", "timestamp": T, "reason": "hostile", "topology": topo}
    return json.dumps(doc).encode()  # orjson cannot write 10**30


def _hostile(settings: Settings) -> list[tuple[str, bytes | None, bytes, bytes]]:
    """(topic, key, value, the field the refusal names) of every hostile record."""
    t = settings.kafka.topics
    task_key, frag_key = b'{"id":"h1"}', b'{"id":"h2"}'
    return [
        (t.tasks, task_key, orjson.dumps({**TASK, "cpu_count": 2**31}), b"cpu_count"),
        (t.tasks, task_key, orjson.dumps({**TASK, "duration": 2**62}), b"duration"),
        (t.tasks, task_key, orjson.dumps({**TASK, "submission_time": "9999-12-31T00:00:00Z"}), b"submission_time"),
        (t.tasks, task_key, orjson.dumps({**TASK, "submission_time": 1704067800}), b"submission_time"),
        (t.tasks, task_key, orjson.dumps({**TASK, "mem_capacity": 2**41}), b"mem_capacity"),
        (t.tasks, b'{"id":"' + b"x" * 300 + b'"}', orjson.dumps(TASK), b"id"),
        (t.fragments, frag_key, orjson.dumps({**FRAG, "index": 2**31}), b"index"),
        (t.fragments, frag_key, orjson.dumps({**FRAG, "cpu_count": 2**63}), b"cpu_count"),
        (t.fragments, frag_key, orjson.dumps({**FRAG, "cpu_usage": 1e300}), b"cpu_usage"),
        (t.fragments, frag_key, orjson.dumps({**FRAG, "submission_time": "1969-12-31T23:00:00Z"}), b"submission_time"),
        (t.power, b'{"source":"dc"}', orjson.dumps({**POWER, "power_draw": 1e300}), b"power_draw"),
        (t.power, None, b'{"heartbeat": 12345}', b"heartbeat"),
        (t.power, None, b'{"heartbeat": "12345"}', b"heartbeat"),
        (t.tasks, None, b'{"heartbeat": "2262-04-12T00:00:00Z"}', b"heartbeat"),
        (t.sim_topology, DATACENTER_KEY, _sim_topology(cpu={"coreCount": 2**62, "count": 4, "coreSpeed": 2000}), b"coreCount"),
        (t.sim_topology, DATACENTER_KEY, _sim_topology(count=MAX_HOSTS + 1), b"count"),
        (t.sim_topology, DATACENTER_KEY, _sim_topology(cpu={"coreCount": 10**30, "coreSpeed": 2000}), b"coreCount"),
    ]  # fmt: skip


async def _produce(settings: Settings, records: list[tuple[str, bytes | None, bytes, bytes]]) -> None:
    producer = make_producer(settings.kafka.bootstrap_servers or "", settings.kafka)
    await producer.start()
    try:
        for topic, key, value, _ in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_out_of_bounds_messages_are_refused_counted_and_dead_lettered(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """1. seventeen hostile records are produced first (tasks, fragments, power, heartbeats, sim.topology);
    2. the daemon replays a small workload over them and keeps running: every one is counted in /api/status
    (``counters.malformed_messages``) and logged with its topic/partition/offset and a reason naming the field;
    3. the fourteen input records are on the dead-letter topic as sent, with source topic/offset and reason;
    4. every window is ok, every record of the workload lands, the topology stays at version 0, and the
    results equal the one-shot engine's (a clean run); the daemon exits 0."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload)
    hostile = _hostile(settings)
    inputs = [h for h in hostile if h[0] != settings.kafka.topics.sim_topology]
    await _produce(settings, hostile)

    state = TwinState()
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with asyncio.timeout(90), asyncio.TaskGroup() as tg:
            daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
            deadline = time.monotonic() + 75
            while not (
                state.loop is not None
                and state.snapshot()["simulation"]["done"]
                and state.snapshot()["counters"]["malformed_messages"] >= len(hostile)
            ):
                assert not daemon.done(), "the daemon stopped"
                assert time.monotonic() < deadline, f"not done: {state.snapshot() if state.loop else state}"
                await asyncio.sleep(0.05)
            assert state.api_url is not None
            answer = await asyncio.to_thread(call, state.api_url, "GET", "/api/status")
            stop.set()
    assert daemon.result() == 0

    status = answer.json()
    assert status["counters"]["malformed_messages"] == len(hostile)
    assert status["windows"]["malformed"] == len(inputs)
    assert status["windows"]["dead_lettered"] == len(inputs)
    assert status["topology"]["version"] == 0

    bad = sorted((e["topic"], e["offset"], e["reason"]) for e in logs if e["event"] == "message_malformed")
    assert len(bad) == len(hostile)
    for topic, _, value, field in hostile:
        offset = [h[2] for h in hostile if h[0] == topic].index(value)
        [reason] = [r for t, o, r in bad if (t, o) == (topic, offset)]
        assert field.decode() in reason, (value[:80], reason)
        assert len(reason) < 600

    letters = await dead_letters(settings, len(inputs))
    assert sorted((r.key or b"", r.value) for r in letters) == sorted((k or b"", v) for _, k, v, _ in inputs)
    for r in letters:
        headers = dict(r.headers)
        [field] = [
            f for t, k, v, f in inputs if (k, v) == (r.key, r.value) and t == headers["source_topic"].decode()
        ]
        assert field in headers["reason"], (r.value[:80], headers["reason"])

    wl = load_workload(workload)
    agg, windows = read_results(settings.data_dir)
    assert_windows_contiguous(windows)
    assert windows["status"].unique().to_list() == ["ok"]
    assert windows["tasks"].sum() == wl.tasks.height
    assert windows["fragments"].sum() == wl.fragments.height
    assert wl.consumption is not None
    assert windows["power_samples"].sum() == wl.consumption.height
    assert agg["topology_version"].unique().to_list() == [0]
    assert max_rel_diff(agg, one_shot(workload, last_window_end_ms(windows))) <= 1e-6
