"""The whole twin in process (``run_daemon``) on the session broker: results, journal and /api/status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from opendt.daemon import run_daemon, wait_until
from opendt.settings import Settings
from opendt.twin.status import TwinState

from .conftest import assert_windows_contiguous, last_window_end_ms, max_rel_diff, one_shot, read_results


async def _status(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url + "/api/status") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_exit_when_done_results_equal_one_shot_engine(
    daemon_settings: Callable[..., Settings], small_workload: Path
) -> None:
    """1. run_daemon(exit_when_done) replays the workload at max speed and returns 0 on its own; 2. the
    journal has one ok row per window, contiguous, the last one covering the trace end; 3. agg_results has
    the one-shot engine's timestamps and equals it within 1e-6 relative (its activity columns too:
    tasks_completed exactly); 4. the state's counters agree."""
    settings = daemon_settings(small_workload)
    state = TwinState()
    async with asyncio.timeout(60):
        assert await run_daemon(settings, exit_when_done=True, state=state) == 0
    agg, windows = read_results(settings.data_dir)
    assert_windows_contiguous(windows)
    assert windows["status"].to_list() == ["ok"] * windows.height
    assert windows["error"].to_list() == [""] * windows.height
    assert state.workload is not None
    assert last_window_end_ms(windows) >= state.workload.end_ms
    assert windows["fragments"].sum() == state.workload.fragments
    assert windows["tasks"].sum() == state.workload.tasks
    ref = one_shot(small_workload, last_window_end_ms(windows))
    assert agg["timestamp"].is_unique().all()
    assert agg["timestamp"].to_list() == ref["timestamp"].to_list()
    assert max_rel_diff(agg, ref) <= 1e-6
    assert agg["tasks_completed"].to_list() == ref["tasks_completed"].to_list()
    assert np.allclose(agg["cpu_work"], ref["cpu_work"], rtol=1e-9, atol=1e-6)
    assert agg["tasks_completed"].sum() > 0
    assert agg["topology_version"].unique().to_list() == [0]
    snap = state.snapshot()
    assert snap["status"] == "stopped"
    assert snap["counters"]["windows_simulated"] == windows.height
    assert snap["counters"]["windows_failed"] == 0
    assert snap["counters"]["malformed_messages"] == 0
    assert snap["simulation"]["done"] is True


async def test_status_api_shows_the_counts_while_serving(
    daemon_settings: Callable[..., Settings], small_workload: Path
) -> None:
    """1. run_daemon without exit_when_done keeps serving after the replay; 2. /api/status (real HTTP, port
    from the state) reports the replay done and every window simulated and durable, matching the journal;
    3. the shutdown trigger stops it with 0."""
    settings = daemon_settings(small_workload)
    state = TwinState()
    stop = asyncio.Event()
    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        await wait_until(state.ready, daemon, "serving")
        assert state.api_url.startswith("http://127.0.0.1:")
        assert state.loop is not None
        await wait_until(state.loop.done, daemon, "the replay was simulated")
        last = await _status(state.api_url)
        _, windows = read_results(settings.data_dir)
        assert last["status"] == "running"
        assert last["replay"]["done"] is True
        assert state.workload is not None
        assert last["replay"]["counts"]["fragments"] == state.workload.fragments
        assert last["simulation"]["windows_durable"] == windows.height
        assert last["counters"]["windows_simulated"] == windows.height
        assert last["counters"]["windows_failed"] == 0
        assert last["windows"]["events"] > 0
        assert last["watermark_ms"] is not None
        assert last["topology"]["version"] == 0
        stop.set()
    assert daemon.result() == 0
    assert state.status == "stopped"
