"""Issue 20's time attacks through the real broker and the real daemon: records whose timestamps lie (a task
dated 1970 or 2199, heartbeats and samples hours or days ahead, forged final heartbeats, a fragment a year
ahead) before the stream and in the middle of it. Before, one such record started the run 54 years early,
made a year of empty windows, or closed a day of windows before their events arrived. Now each is refused by
the time gate (opendt/stream/timegate.py): counted as quarantined in /api/status, dead-lettered with the
reason, and the results equal a clean run's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from structlog.testing import capture_logs

from opendt.daemon import run_daemon
from opendt.kafka.client import make_producer
from opendt.models.messages import DATACENTER_KEY, encode_carbon, encode_heartbeat, iso_ms
from opendt.settings import Settings
from opendt.twin.status import TwinState
from opendt.workload import load_workload

from ..pipeline.conftest import (
    START_MS,
    assert_windows_contiguous,
    last_window_end_ms,
    max_rel_diff,
    one_shot,
    read_results,
    write_small_workload,
)
from .conftest import call

H = 3_600_000
DAY = 24 * H
YEAR = 365 * DAY


def _task(ms: int) -> bytes:
    doc = {"submission_time": iso_ms(ms), "duration": 60_000, "cpu_count": 4, "cpu_capacity": 16000.0}
    return orjson.dumps({**doc, "mem_capacity": 1})


def _fragment(ms: int, index: int) -> bytes:
    doc = {"submission_time": iso_ms(ms), "duration": 60_000, "cpu_count": 4, "cpu_usage": 100.0}
    return orjson.dumps({**doc, "index": index})


def _power(ms: int) -> bytes:
    return orjson.dumps({"timestamp": iso_ms(ms), "power_draw": 900.0, "energy_usage": 27_000.0})


def _lies(settings: Settings, now_ms: int) -> list[tuple[str, bytes | None, bytes]]:
    """Records whose times lie, relative to ``now_ms`` (the stream's time when they are sent): in each
    partition's order, every one is refused (see the gate's rules)."""
    t = settings.kafka.topics
    return [
        (t.tasks, b'{"id":"ghost-1970"}', _task(1000)),
        (t.tasks, b'{"id":"ghost-2199"}', _task(7_226_582_400_000)),
        (t.tasks, None, encode_heartbeat(now_ms + 36 * H, final=True)),
        (t.fragments, None, encode_heartbeat(now_ms + 36 * H)),
        (t.fragments, b'{"id":"t0"}', _fragment(now_ms + YEAR, 10_000)),
        (t.power, b'{"source":"dc"}', _power(now_ms + 20 * H)),
        (t.power, None, encode_heartbeat(now_ms + 36 * H, final=True)),
    ]


async def _produce(settings: Settings, records: list[tuple[str, bytes | None, bytes]]) -> None:
    """Each record in order (a value of several lines is sent as an NDJSON batch, DESIGN §4)."""
    producer = make_producer(settings.kafka.bootstrap_servers or "", settings.kafka)
    await producer.start()
    try:
        for topic, key, value in records:
            batch = [("content-type", b"application/x-ndjson")] if b"\n" in value else None
            await producer.send_and_wait(topic, value, key=key, headers=batch)
    finally:
        await producer.stop()


def _check_results(settings: Settings, workload: Path) -> None:
    wl = load_workload(workload)
    agg, windows = read_results(settings.data_dir)
    assert_windows_contiguous(windows)
    first = int(windows["window_start"].dt.epoch("ms").min())  # type: ignore[arg-type]
    assert first == wl.origin_ms - wl.origin_ms % 300_000, "the run did not start at the stream's start"
    assert last_window_end_ms(windows) <= START_MS + 3 * H, "windows were made for a lying time"
    assert windows["status"].unique().to_list() == ["ok"]
    assert windows["tasks"].sum() == wl.tasks.height
    assert windows["fragments"].sum() == wl.fragments.height
    assert wl.consumption is not None
    assert windows["power_samples"].sum() == wl.consumption.height
    cols = ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission")
    assert max_rel_diff(agg, one_shot(workload, last_window_end_ms(windows)), cols) <= 1e-6


async def test_lying_times_before_the_stream_are_quarantined(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """1. seven records whose times lie are produced before the stream (first on their partitions: a task
    dated 1970, one dated 2199, forged ends 36 h ahead, a heartbeat 36 h ahead, a fragment a year ahead, a
    power sample 20 h ahead); 2. the daemon replays a small workload over them and exits 0 at the real end:
    every lie is quarantined (counted in /api/status, logged with its reason), and the windows, their
    counts and the results equal a clean run's (no window before the stream, none after it)."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload)
    lies = _lies(settings, START_MS)
    await _produce(settings, lies)
    state = TwinState()
    with capture_logs() as logs:
        async with asyncio.timeout(90):
            assert await run_daemon(settings, exit_when_done=True, state=state) == 0
    windows = state.snapshot()["windows"]
    assert windows["quarantined"] == len(lies)
    assert windows["dead_lettered"] == len(lies)
    reasons = [e["reason"] for e in logs if e["event"] == "message_quarantined"]
    assert len(reasons) == len(lies)
    assert any("first message" in r for r in reasons)
    _check_results(settings, workload)


Lies = Callable[[Settings, int], list[tuple[str, bytes | None, bytes]]]


async def _lie_mid_stream(settings: Settings, lies_at: Lies) -> tuple[int, dict[str, Any]]:
    """Run the daemon over its replay at its speed; once three windows are simulated, produce ``lies_at``
    (dated from the stream's time) into the running stream; return how many lies and /api/status's windows
    view (asked over HTTP while the twin runs) once every window is durable."""
    state = TwinState()
    stop = asyncio.Event()
    async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        deadline = time.monotonic() + 60
        while state.loop is None or state.snapshot()["simulation"]["windows_simulated"] < 3:
            assert not daemon.done(), "the daemon stopped"
            assert time.monotonic() < deadline, "no window closed"
            await asyncio.sleep(0.05)
        lies = lies_at(settings, int(state.snapshot()["windows"]["watermark_ms"]))
        await _produce(settings, lies)
        while not state.snapshot()["simulation"]["done"]:
            assert not daemon.done(), "the daemon stopped"
            assert time.monotonic() < deadline + 30, f"not done: {state.snapshot()}"
            await asyncio.sleep(0.05)
        assert state.api_url is not None
        answer = await asyncio.to_thread(call, state.api_url, "GET", "/api/status")
        stop.set()
    assert daemon.result() == 0
    windows: dict[str, Any] = answer.json()["windows"]
    return len(lies), windows


async def test_lying_times_in_the_middle_of_the_stream_are_quarantined(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """1. the daemon replays a small workload at 600× (two trace hours in ~12 s); 2. once windows have
    closed, the same seven lies are produced into the running stream, dated from the stream's time; 3. the
    windows close as before (none for the lying times, the forged ends do not end the run), every lie is
    quarantined and visible in /api/status while the twin runs, and the results equal a clean run's."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload, speed=600.0)
    lies, windows = await _lie_mid_stream(settings, _lies)
    assert windows["quarantined"] == lies
    _check_results(settings, workload)


async def test_a_carbon_trace_reaching_back_months_is_not_an_outlier(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """SURF's carbon trace covers the whole year: its steps, months before the tasks, reach the consumer
    first. They are the intensity in effect, not outliers, and the physical topology dated at the trace's
    start is believed whatever carbon time was read before it (a SURF run stalled at its first window when
    the topology was judged against carbon times). Nothing is quarantined; results equal a clean run."""
    workload = write_small_workload(tmp_path / "wl", carbon_back_days=200)
    settings = daemon_settings(workload)
    state = TwinState()
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True, state=state) == 0
    windows = state.snapshot()["windows"]
    assert windows["quarantined"] == 0
    _check_results(settings, workload)


async def test_with_its_own_replay_the_twin_serves_only_measurements_it_received(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The twin knows only what the stream told it, also when the replay producer runs in the same process:
    while the replay goes on (600×), /api/power never returns a measured point at or after the end of the
    last durable window (the API read the workload's whole consumption.parquet before)."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload, speed=600.0)
    state = TwinState()
    stop = asyncio.Event()
    checks = 0
    async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        deadline = time.monotonic() + 90
        while state.loop is None or not state.snapshot()["simulation"]["done"]:
            assert not daemon.done(), "the daemon stopped"
            assert time.monotonic() < deadline, "not done"
            sim = state.snapshot()["simulation"] if state.loop is not None else None
            if sim is not None and sim["windows_durable"] >= 2 and state.api_url:
                power = (await asyncio.to_thread(call, state.api_url, "GET", "/api/power?step_s=30")).json()
                # read after the answer: windows only become durable, so this bounds what it could hold
                durable_end = state.snapshot()["simulation"]["last_window_end_ms"]
                assert power["measured"], power
                assert max(t for t, _ in power["measured"]) < durable_end
                checks += 1
            await asyncio.sleep(0.2)
        stop.set()
    assert daemon.result() == 0
    assert checks >= 3, checks


def _paired_lies(settings: Settings, now_ms: int) -> list[tuple[str, bytes | None, bytes]]:
    """Issue 29: lies that confirmed each other (two in a row on a partition): two heartbeats 36 h ahead on
    each watermark topic, two tasks 48 h ahead, two carbon steps a day ahead."""
    t = settings.kafka.topics
    beat = encode_heartbeat(now_ms + 36 * H)
    return [
        (t.tasks, b'{"id":"ghost-a"}', _task(now_ms + 48 * H)),
        (t.tasks, b'{"id":"ghost-b"}', _task(now_ms + 48 * H + 1000)),
        *((topic, None, beat) for topic in (t.tasks, t.fragments, t.power) for _ in range(2)),
        (t.carbon, DATACENTER_KEY, encode_carbon(now_ms + DAY, 999.0)),
        (t.carbon, DATACENTER_KEY, encode_carbon(now_ms + DAY + 900_000, 999.0)),
    ]


async def test_paired_lies_in_the_middle_of_the_stream_are_quarantined(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Two (or more) forged records in a row on a partition no longer confirm each other as a jump: the real
    stream going on at its own time rejects them (opendt/stream/timegate.py, ``windowing.jump_confirm``).
    Before, the paired heartbeats alone made windows for 36 h ahead (703 windows instead of 412 on the demo)."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload, speed=600.0)
    lies, windows = await _lie_mid_stream(settings, _paired_lies)
    assert windows["quarantined"] == lies
    _check_results(settings, workload)
