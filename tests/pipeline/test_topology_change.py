"""A simulated topology published on sim.topology takes effect at the twin's next window."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
from structlog.testing import capture_logs

from opendt.daemon import run_daemon
from opendt.kafka.client import make_producer
from opendt.models.messages import DATACENTER_KEY, encode_sim_topology
from opendt.models.topology import parse_topology
from opendt.settings import Settings
from opendt.twin.status import TwinState
from opendt.workload import load_workload

from .conftest import max_rel_diff, read_results, run_dir, windowed_reference, workload_windows


async def test_topology_from_sim_topology_applies_at_the_next_window(
    daemon_settings: Callable[..., Settings], small_workload: Path
) -> None:
    """1. the daemon replays at speed 3000; 2. once 4 windows are durable, version 1 (source "api": higher
    idle and max power) is published on sim.topology; 3. topology_version switches from 0 to 1 at one window
    boundary (journal and agg_results agree), never back; 4. the rows equal the engine advanced window by
    window with set_topology before that window (1e-9), so the power before the switch is v0's and after
    it v1's; 5. the run keeps v1 and the status reports it."""
    settings = daemon_settings(small_workload, speed=3000)
    wl = load_workload(small_workload)
    doc = wl.topology.to_json_dict()
    model = doc["clusters"][0]["hosts"][0]["cpuPowerModel"]
    model.update(idlePower=150, maxPower=320)
    v1 = parse_topology(doc)
    state = TwinState()
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))

            def sim(key: str) -> Any:
                return state.snapshot()["simulation"][key] if state.loop is not None else None

            deadline = time.monotonic() + 45
            while (sim("windows_durable") or 0) < 4:
                assert not daemon.done(), "the daemon stopped"
                assert time.monotonic() < deadline, "no durable window"
                await asyncio.sleep(0.02)
            producer = make_producer(state.bootstrap_servers, settings.kafka)
            await producer.start()
            try:
                await producer.send_and_wait(
                    settings.kafka.topics.sim_topology,
                    encode_sim_topology(1, "api", wl.origin_ms, "more power", v1),
                    key=DATACENTER_KEY,
                )
            finally:
                await producer.stop()
            while not sim("done"):
                assert not daemon.done(), "the daemon stopped"
                assert time.monotonic() < deadline, "the simulator did not finish"
                await asyncio.sleep(0.05)
            snap = state.snapshot()
            stop.set()
    assert daemon.result() == 0

    agg, windows = read_results(settings.data_dir)
    versions = windows["topology_version"].to_list()
    k = versions.index(1)
    assert versions == [0] * k + [1] * (len(versions) - k)
    assert 4 <= k < len(versions) - 1, "the change must land mid-run"
    switch_ms = int(windows["window_start"].dt.epoch("ms")[k])
    assert agg.filter(pl.col("topology_version") == 1)["window_start"].dt.epoch("ms").min() == switch_ms
    assert agg.filter(pl.col("window_start").dt.epoch("ms") < switch_ms)[
        "topology_version"
    ].unique().to_list() == [0]
    [applied] = [e for e in logs if e["event"] == "topology_applied"]
    assert (applied["version"], applied["window_start"]) == (1, switch_ms)

    cut = workload_windows(wl)
    assert [w.start_ms for w in cut] == windows["window_start"].dt.epoch("ms").to_list()
    changed = windowed_reference(wl, cut, topology_at=(k, v1))
    unchanged = windowed_reference(wl, cut)
    assert max_rel_diff(agg, changed) <= 1e-9
    before = agg.filter(pl.col("topology_version") == 0)
    after = agg.filter(pl.col("topology_version") == 1)
    assert max_rel_diff(before, unchanged) <= 1e-9
    assert after["power_draw"].to_numpy().min() >= 4 * 150  # every host idles at v1's 150 W at least
    assert (after.join(unchanged, on="timestamp")["power_draw_right"] < after["power_draw"]).all()

    assert snap["topology"] == {"version": 1, "source": "api", "reason": "more power"}
    saved = json.loads((run_dir(settings.data_dir) / "topologies" / "v1.json").read_text())
    assert saved["topology"]["clusters"][0]["hosts"][0]["cpuPowerModel"]["idlePower"] == 150
