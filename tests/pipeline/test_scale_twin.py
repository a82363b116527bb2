"""A datacenter beyond the old 4,096-host cap, streamed: K copies of a workload on K × the hosts (issue 25)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import polars as pl

from opendt.daemon import run_daemon, wait_until
from opendt.settings import Settings
from opendt.twin.status import TwinState

from .conftest import last_window_end_ms, max_rel_diff, one_shot, read_results, write_small_workload

K = 3
HOSTS = 5_000


def k_copies(src: Path, k: int, hosts: int) -> Path:
    """The workload at ``src`` with every task (and its fragments) copied ``k`` times under new ids, the
    measured power ``k`` times, and one host group of ``hosts`` hosts, named to collide with OpenDC's unique
    names (a second group ``H-0``)."""
    tasks = pl.read_parquet(src / "tasks.parquet")
    frags = pl.read_parquet(src / "fragments.parquet")
    pl.concat([tasks.with_columns(pl.col("id") + f"-k{i}") for i in range(k)]).write_parquet(
        src / "tasks.parquet"
    )
    pl.concat([frags.with_columns(pl.col("id") + f"-k{i}") for i in range(k)]).write_parquet(
        src / "fragments.parquet"
    )
    cons = pl.read_parquet(src / "consumption.parquet")
    cons.with_columns(pl.col("power_draw") * k).write_parquet(src / "consumption.parquet")
    topo = json.loads((src / "topology.json").read_text())
    group = topo["clusters"][0]["hosts"][0]
    topo["clusters"][0]["hosts"] = [{**group, "count": hosts - 2}, {**group, "name": "H-0", "count": 2}]
    (src / "topology.json").write_text(json.dumps(topo))
    return src


async def test_a_topology_over_4096_hosts_streams_equal_to_the_one_shot_engine(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """1. A workload of K = 3 copies on 5,000 hosts (refused before: 4,096 was the cap) is accepted and
    every window simulated; 2. /api/topology serves it by host group (a few hundred bytes, not a row per
    host) and /api/power answers; 3. the twin's energy per export interval equals the one-shot engine's over
    the same inputs within 1e-9 relative."""
    workload = k_copies(write_small_workload(tmp_path / "wl", tasks=8, hours=1.0), K, HOSTS)
    settings = daemon_settings(workload)
    state = TwinState()
    stop = asyncio.Event()
    async with asyncio.timeout(90), asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        await wait_until(state.ready, daemon, "serving")
        assert state.loop is not None
        await wait_until(state.loop.done, daemon, "the replay was simulated")
        async with aiohttp.ClientSession() as http:
            async with http.get(state.api_url + "/api/topology") as resp:
                assert resp.status == 200
                body = await resp.read()
            async with http.get(state.api_url + "/api/power") as resp:
                assert resp.status == 200
                power = await resp.json()
        stop.set()
    assert daemon.result() == 0
    doc = json.loads(body)
    for topology in (doc["physical"], doc["simulated"]["topology"]):
        assert sum(h["count"] for h in topology["clusters"][0]["hosts"]) == HOSTS
    assert len(body) < 4096
    assert power["simulated"]
    agg, windows = read_results(settings.data_dir)
    assert windows["status"].to_list() == ["ok"] * windows.height
    ref = one_shot(workload, last_window_end_ms(windows))
    assert agg.height > 10
    assert max_rel_diff(agg, ref, ("energy_usage",)) <= 1e-9
