"""Issue 20, item 1: a topology that fails to apply killed the daemon, and every restart re-applied the saved
``topologies/vN.json`` and died again. Now a version the engine refuses is refused in the window loop (logged,
counted in /api/status, never saved, the version before kept), and a saved version that no longer parses is
set aside at resume (``vN.refused.json``) instead of being retried forever."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from opendt.daemon import run_daemon
from opendt.models.topology import parse_topology
from opendt.settings import Settings
from opendt.twin.results import ResultStore
from opendt.twin.status import TwinState
from opendt.twin.topology import TopologyBox
from opendt.worker.client import TwinEngine, WorkerError
from opendt.workload import load_workload

from ..pipeline.conftest import (
    assert_windows_contiguous,
    last_window_end_ms,
    max_rel_diff,
    one_shot,
    read_results,
    run_dir,
    write_small_workload,
)
from .conftest import call

REFUSED_IDLE = 123.0  # the engine double refuses a topology with this idle power


async def test_a_topology_the_engine_refuses_is_refused_and_the_twin_goes_on(
    daemon_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. the daemon replays a small workload at 600×; its engine worker (real) raises for a topology with
    idle power 123 W (a stand-in for any engine failure the model's bounds do not foresee); 2. PUT
    /api/topology with that topology is accepted (202), then refused by the window loop: logged as
    ``topology_refused``, counted in /api/status, not saved under topologies/, the box back on version 0
    (source "kept"); 3. the daemon runs to the end and exits 0, every window ok on version 0, and the
    results equal the one-shot engine's."""
    real = TwinEngine.set_topology

    async def refusing(self: TwinEngine, doc: dict[str, Any]) -> None:
        if doc["clusters"][0]["hosts"][0]["cpuPowerModel"].get("idlePower") == REFUSED_IDLE:
            raise WorkerError("ValueError: the engine refuses this topology (test)")
        await real(self, doc)

    monkeypatch.setattr(TwinEngine, "set_topology", refusing)
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload, speed=600.0)
    doc = load_workload(workload).topology.to_json_dict()
    doc["clusters"][0]["hosts"][0]["cpuPowerModel"]["idlePower"] = REFUSED_IDLE
    state = TwinState()
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
            daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
            deadline = time.monotonic() + 90
            while state.loop is None or state.snapshot()["simulation"]["windows_simulated"] < 2:
                assert not daemon.done(), "the daemon stopped"
                assert time.monotonic() < deadline, "no window closed"
                await asyncio.sleep(0.05)
            assert state.api_url is not None
            put = await asyncio.to_thread(
                call,
                state.api_url,
                "PUT",
                "/api/topology",
                json.dumps({"topology": doc}).encode(),
                {"Content-Type": "application/json"},
            )
            assert put.status == 202, put.body
            while not state.snapshot()["simulation"]["done"]:
                assert not daemon.done(), "the daemon stopped"
                assert time.monotonic() < deadline, f"not done: {state.snapshot()}"
                await asyncio.sleep(0.05)
            status = (await asyncio.to_thread(call, state.api_url, "GET", "/api/status")).json()
            stop.set()
    assert daemon.result() == 0
    assert status["simulation"]["topologies_refused"] == 1
    assert status["topology"]["version"] == 0
    assert status["topology"]["source"] == "kept"
    [refused] = [e for e in logs if e["event"] == "topology_refused"]
    assert refused["version"] == put.json()["version"]
    assert "refuses this topology" in refused["error"]
    saved = sorted(p.name for p in (run_dir(settings.data_dir) / "topologies").iterdir())
    assert saved == ["v0.json"]
    agg, windows = read_results(settings.data_dir)
    assert_windows_contiguous(windows)
    assert windows["status"].unique().to_list() == ["ok"]
    assert windows["topology_version"].unique().to_list() == [0]
    assert max_rel_diff(agg, one_shot(workload, last_window_end_ms(windows))) <= 1e-6


def test_a_saved_version_that_no_longer_parses_is_set_aside_at_resume(tmp_path: Path) -> None:
    """A run directory whose newest saved version is out of the model's bounds (saved by an older OpenDT, or
    edited): resuming sets it aside as ``v2.refused.json`` with an error naming it, and the version before
    (v1) is current; a second resume finds nothing to refuse."""
    workload = write_small_workload(tmp_path / "wl")
    topo = load_workload(workload).topology
    store = ResultStore(tmp_path / "run")
    store.load()
    store.save_topology(0, topo, {"source": "initial", "reason": "physical topology", "timestamp_ms": 0})
    changed = topo.to_json_dict()
    changed["clusters"][0]["hosts"][0]["cpuPowerModel"]["idlePower"] = 150.0
    store.save_topology(1, parse_topology(changed), {"source": "api", "reason": "r", "timestamp_ms": 5})
    bad = json.loads((store.run_dir / "topologies" / "v1.json").read_text())
    bad["version"] = 2
    bad["topology"]["clusters"][0]["hosts"][0]["cpu"]["coreCount"] = 2**62
    (store.run_dir / "topologies" / "v2.json").write_text(json.dumps(bad))

    box = TopologyBox(topo)
    with capture_logs() as logs:
        assert box.resume(store)
    assert box.current.version == 1
    assert box.current.topology == parse_topology(changed)
    [skipped] = [e for e in logs if e["event"] == "topology_skipped"]
    assert skipped["version"] == 2
    assert "coreCount" in skipped["error"]
    names = sorted(p.name for p in (store.run_dir / "topologies").iterdir())
    assert names == ["v0.json", "v1.json", "v2.refused.json"]
    assert store.latest_version() == 1
    with capture_logs() as logs:
        assert TopologyBox(topo).resume(store)
    assert not [e for e in logs if e["event"] == "topology_skipped"]
