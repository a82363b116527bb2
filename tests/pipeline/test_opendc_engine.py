"""Issue 16: the twin on the OpenDC binary (``simulation.engine: opendc``) and the engines' cross-check, in
process (``run_daemon``) on the session broker, with stand-in binaries that honour OpenDC's CLI contract
(tests/opendc_standin.py): results equal the builtin twin's, runs go through the subprocess pool, a hung
binary's process group is killed, the cross-check reports 0 for the honest stand-in and warns, naming the
interval, for the perturbing one."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import polars as pl
import pytest
from aiokafka import AIOKafkaConsumer

from opendt.daemon import run_daemon, wait_until
from opendt.settings import Settings
from opendt.twin.status import TwinState

from .. import runfiles
from ..opendc_standin import alive, write_standin, zombies_of
from .conftest import late_carbon, read_results, run_dir

COLUMNS = ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission")


def _opendc(settings: Settings, binary: Path, **sim: Any) -> Settings:
    """``settings`` on the OpenDC ``binary`` (and ``sim``), with a data dir of its own."""
    return settings.model_copy(
        update={
            "simulation": settings.simulation.model_copy(
                update={"engine": "opendc", "opendc_bin": binary, **sim}
            ),
            "data_dir": binary.parent.parent / "data-opendc",
        }
    )


def assert_equal_results(got: pl.DataFrame, ref: pl.DataFrame, tol: float = 1e-9) -> None:
    """Same instants; every power, energy and carbon value within ``tol`` relative; tasks completed exact."""
    assert got["timestamp"].to_list() == ref["timestamp"].to_list()
    for c in COLUMNS:
        a, b = got[c].to_numpy(), ref[c].to_numpy()
        for x, y in zip(a, b, strict=True):
            assert math.isclose(x, y, rel_tol=tol, abs_tol=1e-12), (c, x, y)
    assert got["tasks_completed"].to_list() == ref["tasks_completed"].to_list()
    assert got["topology_version"].to_list() == ref["topology_version"].to_list()


async def _sim_results_engines(bootstrap: str, topic: str) -> set[str]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
        return {orjson.loads(m.value)["engine"] for msgs in batches.values() for m in msgs if m.value}
    finally:
        await consumer.stop()


async def test_opendc_twin_equals_the_builtin_twin_batched_through_the_pool(
    daemon_settings: Callable[..., Settings], small_workload: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    """1. The builtin twin and the twin on the honest stand-in (5 windows per OpenDC run) give the same
    results (1e-9; tasks completed exactly); 2. every window is stamped opendc in windows.arrowlog and in
    sim.results; 3. /api/status counts the runs, and the pool ran each of them: one per batch of 5."""
    ref_settings = daemon_settings(small_workload)
    async with asyncio.timeout(60):
        assert await run_daemon(ref_settings, exit_when_done=True) == 0
    ref, ref_windows = read_results(ref_settings.data_dir)

    standin = write_standin(tmp_path / "bin")
    settings = _opendc(daemon_settings(small_workload), standin, opendc_every_windows=5)
    state = TwinState()
    async with asyncio.timeout(120):
        assert await run_daemon(settings, exit_when_done=True, state=state) == 0
    agg, windows = read_results(settings.data_dir)
    assert_equal_results(agg, ref)
    assert agg["cpu_work"].null_count() == agg.height  # OpenDC exports no delivered work
    assert windows["engine"].unique().to_list() == ["opendc"]
    assert set(ref_windows["engine"].to_list()) == {"builtin"}
    assert windows["status"].unique().to_list() == ["ok"]
    sim = state.snapshot()["simulation"]
    assert sim["engine"] == "opendc"
    od = sim["opendc"]
    batches = math.ceil(windows.height / 5)
    assert batches - 1 <= od["runs"] <= batches  # a batch before the first task needs no run
    assert od["pool"]["completed"] == od["runs"]
    assert od["pool"]["failed"] == 0
    assert od["windows"] == windows.height
    assert od["wall_s_per_simulated_hour"] > 0
    engines = await _sim_results_engines(kafka_bootstrap, settings.kafka.topics.sim_results)
    assert engines == {"opendc"}


async def test_opendc_twin_keeps_the_emissions_unknown_before_the_first_carbon_step(
    daemon_settings: Callable[..., Settings], small_workload: Path, tmp_path: Path
) -> None:
    """A carbon feed that starts 37 min into the trace: OpenDC, given the steps received so far, extends the
    first one backwards (and reads 0 before any); the twin on it keeps the builtin twin's unknowns (null) and
    equals it elsewhere."""
    first_step = late_carbon(small_workload, 37)
    ref_settings = daemon_settings(small_workload)
    async with asyncio.timeout(60):
        assert await run_daemon(ref_settings, exit_when_done=True) == 0
    ref, _ = read_results(ref_settings.data_dir)
    settings = _opendc(
        daemon_settings(small_workload), write_standin(tmp_path / "bin"), opendc_every_windows=5
    )
    async with asyncio.timeout(120):
        assert await run_daemon(settings, exit_when_done=True) == 0
    agg, windows = read_results(settings.data_dir)
    assert windows["status"].unique().to_list() == ["ok"]
    unknown = (agg["timestamp"].dt.epoch("ms") - 150_000 < first_step).to_list()
    assert any(unknown)
    assert not all(unknown)
    for c in ("carbon_intensity", "carbon_emission"):
        assert agg[c].is_null().to_list() == ref[c].is_null().to_list(), c
    assert agg["carbon_emission"].is_null().to_list() == unknown
    unknown_as = [pl.col(c).fill_null(-1.0) for c in ("carbon_intensity", "carbon_emission")]
    assert_equal_results(agg.with_columns(unknown_as), ref.with_columns(unknown_as))


async def test_a_hung_binary_is_killed_with_its_group_and_only_its_windows_fail(
    daemon_settings: Callable[..., Settings], small_workload: Path, tmp_path: Path
) -> None:
    """A binary that never ends (and started a grandchild): each run is stopped at simulation.timeout_s,
    its whole process group killed, no zombie left; the batch's windows are failed with the timeout named,
    the daemon goes on and exits 0."""
    standin = write_standin(tmp_path / "bin", "hang")
    settings = _opendc(
        daemon_settings(small_workload), standin, opendc_every_windows=288, timeout_s=1.5, retries=0
    )
    state = TwinState()
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True, state=state) == 0
    windows = runfiles.journal(run_dir(settings.data_dir))
    failed = windows.filter(pl.col("status") == "failed")
    assert failed.height == windows.height > 0  # one batch: every window
    assert all("timed out after 1.5 s" in e for e in failed["error"].to_list())
    assert state.snapshot()["simulation"]["opendc"]["pool"]["failed"] == 1  # the batch ran once
    pids = [
        int(p) for line in (standin.parent / "pids").read_text().split("\n") if line for p in line.split()
    ]
    assert pids
    for _ in range(50):
        if not any(alive(p) for p in pids):
            break
        await asyncio.sleep(0.1)
    assert not [p for p in pids if alive(p)], "a stand-in or its grandchild survived"
    assert zombies_of(os.getpid()) == []


async def test_shutdown_during_a_run_kills_the_binary(
    daemon_settings: Callable[..., Settings], small_workload: Path, tmp_path: Path
) -> None:
    """A shutdown while an OpenDC run is in flight: the daemon stops in seconds (not at the 120 s timeout)
    and the stand-in's process group is gone, no zombie."""
    standin = write_standin(tmp_path / "bin", "hang")
    settings = _opendc(daemon_settings(small_workload), standin, opendc_every_windows=3)
    state = TwinState()
    stop = asyncio.Event()
    pids_file = standin.parent / "pids"
    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        await wait_until(state.ready, daemon, "serving")
        while not pids_file.exists():
            assert not daemon.done()
            await asyncio.sleep(0.05)
        stop.set()
        t0 = asyncio.get_running_loop().time()
        assert await daemon == 0
        assert asyncio.get_running_loop().time() - t0 < 15
    pids = [int(p) for p in pids_file.read_text().split()]
    await asyncio.sleep(0.2)
    assert not [p for p in pids if alive(p)]
    assert zombies_of(os.getpid()) == []


async def _grafana_divergence(url: str) -> list[list[float | None]]:
    body = {
        "range": {"from": "2024-01-01T00:00:00Z", "to": "2024-12-31T00:00:00Z"},
        "intervalMs": 60_000,
        "targets": [{"refId": "A", "target": "engine_divergence"}],
    }
    async with aiohttp.ClientSession() as http, http.post(url + "/grafana/query", json=body) as resp:
        assert resp.status == 200, await resp.text()
        series = await resp.json()
    assert len(series) == 1
    points: list[list[float | None]] = series[0]["datapoints"]
    return points


@pytest.mark.parametrize("kind", ["honest", "perturb"])
async def test_crosscheck_reports_the_divergence(
    kind: str, daemon_settings: Callable[..., Settings], small_workload: Path, tmp_path: Path
) -> None:
    """simulation.verify_every_s=3600 over 3600 s (builtin twin, OpenDC only in the checks; the replay at
    1200× so that checks, about a second each, are not skipped): the honest
    stand-in's divergence is 0 in /api/status and in the Grafana metric engine_divergence; the perturbing
    one's is 1e-3, a warning names the interval, and the twin's results are untouched."""
    standin = write_standin(tmp_path / "bin", kind)  # type: ignore[arg-type]
    base = daemon_settings(small_workload, speed=1200)
    settings = base.model_copy(
        update={
            "simulation": base.simulation.model_copy(
                update={"opendc_bin": standin, "verify_every_s": 3600, "verify_range_s": 3600}
            )
        }
    )
    state = TwinState()
    stop = asyncio.Event()
    async with asyncio.timeout(90), asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        await wait_until(state.ready, daemon, "serving")
        assert state.loop is not None
        await wait_until(state.loop.done, daemon, "the replay was simulated")
        snap = state.snapshot()["simulation"]
        points = await _grafana_divergence(state.api_url)
        stop.set()
    cc = snap["crosscheck"]
    assert snap["engine"] == "builtin"
    compared = [p[0] for p in points if p[0] is not None]
    assert cc["done"] >= 2, cc
    assert compared
    last = cc["last"]
    if kind == "honest":
        assert cc["warnings"] == 0
        assert cc["worst"]["max_rel_error"] == 0.0
        assert all(v == 0.0 for v in compared)
        assert last["ok"] is True
        assert last["tasks_builtin"] == last["tasks_opendc"] > 0
    else:
        assert cc["warnings"] >= 1
        assert cc["worst"]["max_rel_error"] == pytest.approx(1e-3, rel=1e-3)
        assert max(compared) == pytest.approx(1e-3, rel=1e-3)
        worst = cc["worst"]
        assert worst["ok"] is False
        assert worst["interval_start"] < worst["interval_end"]
    _, windows = read_results(settings.data_dir)
    assert windows["engine"].unique().to_list() == ["builtin"]
