"""Hostile records inside an NDJSON batch (issue 30), through the real broker and the real daemon: a batch on
``dc.fragments`` carries good records of the workload and, among them, one malformed record, one dated two
days ahead and one duplicate. Each of the three is counted (malformed, quarantined, duplicate) and the two bad
ones are dead-lettered alone (the malformed one as its line, with ``source_line``); the good records of the
same batch are taken, and the results equal a clean run's (the one-shot engine over the workload)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from opendt.daemon import run_daemon
from opendt.kafka.client import make_producer
from opendt.models.messages import iso_ms, time_ms
from opendt.settings import Settings
from opendt.stream.columns import CONTENT_TYPE, NDJSON
from opendt.stream.replay import encode_chunk, event_order, streams_of
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


def _first_fragment_lines(workload: Path, n: int) -> list[bytes]:
    """The workload's first ``n`` fragments as the replay sends them (batch lines, the id inline)."""
    wl = load_workload(workload)
    streams = streams_of(wl, wl.topology.clusters[0].powerSource.name)
    chunk = encode_chunk(streams, event_order(streams), lines=True)
    frag = next(i for i, s in enumerate(streams) if s.kind == "fragments")
    return [v.encode() for v in chunk.filter(chunk["stream"] == frag)["value"].head(n).to_list()]


async def test_bad_records_inside_a_batch_fail_alone(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload)
    f0, f1, f2, f3 = _first_fragment_lines(workload, 4)
    malformed = orjson.dumps({**orjson.loads(f2), "cpu_count": 0})
    later = time_ms(orjson.loads(f2)["submission_time"]) + 2 * 86_400_000
    future = orjson.dumps({**orjson.loads(f2), "index": 999, "submission_time": iso_ms(later)})
    batch = b"\n".join([f0, f1, malformed, future, f2, f1, f3])
    producer = make_producer(settings.kafka.bootstrap_servers or "", settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.kafka.topics.fragments,
            batch,
            key=b'"datacenter"',
            headers=[(CONTENT_TYPE, NDJSON.encode())],
        )
    finally:
        await producer.stop()

    state = TwinState()
    stop = asyncio.Event()
    async with asyncio.timeout(90), asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        deadline = time.monotonic() + 75
        while not (state.loop is not None and state.snapshot()["simulation"]["done"]):
            assert not daemon.done(), "the daemon stopped"
            assert time.monotonic() < deadline, f"not done: {state.snapshot() if state.loop else state}"
            await asyncio.sleep(0.05)
        assert state.api_url is not None
        status = (await asyncio.to_thread(call, state.api_url, "GET", "/api/status")).json()
        stop.set()
    assert daemon.result() == 0

    windows_status = status["windows"]
    assert windows_status["malformed"] == 1
    assert windows_status["quarantined"] == 1
    assert windows_status["duplicates"] == 1 + 4  # f1 again in the batch; the replay's f0..f3 after it
    assert windows_status["dead_lettered"] == 2

    letters = await dead_letters(settings, 2)
    by_reason = {dict(r.headers)["reason"].decode().split(":")[0]: r for r in letters}
    bad_line = by_reason["invalid fragments message"]
    assert bad_line.value == malformed
    assert dict(bad_line.headers)["source_line"] == b"2"
    quarantined = by_reason["quarantined"]
    assert quarantined.value is not None
    assert orjson.loads(quarantined.value)["position"] == 999

    wl = load_workload(workload)
    agg, windows = read_results(settings.data_dir)
    assert_windows_contiguous(windows)
    assert windows["status"].unique().to_list() == ["ok"]
    assert windows["tasks"].sum() == wl.tasks.height
    assert windows["fragments"].sum() == wl.fragments.height
    assert max_rel_diff(agg, one_shot(workload, last_window_end_ms(windows))) <= 1e-6
