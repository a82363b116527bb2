"""The simulator with a real engine worker that crashes, hangs or raises on one window: retried once (not for
an engine error), then recorded as failed, and the twin goes on with the next windows."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import polars as pl
import pytest

from opendt.settings import Settings, SimulationSettings
from opendt.stream.resume import ClosedWindow
from opendt.stream.windowing import Window
from opendt.twin.loop import WindowLoop
from opendt.twin.recovery import Recovery, durability_of
from opendt.twin.results import ResultStore
from opendt.twin.topology import TopologyBox
from opendt.worker.client import TwinEngine
from opendt.workload import Workload, load_workload

from .. import runfiles
from .conftest import windowed_reference, workload_windows

FAULTY_WORKER = """
import os, sys, time
from opendt.engine import Engine
from opendt.worker.child import main

MODE, BAD_UNTIL = sys.argv[1], int(sys.argv[2])
advance = Engine.advance


def faulty(self, until_ms, tasks, fragments, carbon=None):
    if until_ms == BAD_UNTIL:
        if MODE == "crash":
            os._exit(3)
        if MODE == "hang":
            time.sleep(3600)
        self.ingest_frames(tasks, fragments)  # change part of the state, then fail
        raise RuntimeError("injected engine failure")
    return advance(self, until_ms, tasks, fragments, carbon)


Engine.advance = faulty
raise SystemExit(main())
"""


async def _simulate(
    wl: Workload, windows: list[Window], run_dir: Path, command: list[str], timeout_s: float
) -> tuple[WindowLoop, ResultStore]:
    store = ResultStore(run_dir)
    store.load()
    queue: asyncio.Queue[ClosedWindow | None] = asyncio.Queue()
    for w in windows:
        queue.put_nowait(ClosedWindow(w))
    queue.put_nowait(None)
    twin = TwinEngine(command, timeout_s=timeout_s)
    box = TopologyBox(wl.topology)
    recovery = Recovery(durability_of(Settings(), run_dir), store, box, twin, export_interval_ms=150_000)
    recovery.load()
    sim = WindowLoop(
        queue, twin, store, box, SimulationSettings(retries=1, timeout_s=timeout_s), recovery=recovery
    )
    async with asyncio.timeout(60):
        await sim.run()
    return sim, store


@pytest.mark.parametrize(
    ("mode", "attempts", "error"),
    [("crash", 2, "worker exited during advance"), ("hang", 2, "timed out"), ("error", 1, "injected")],
)
async def test_faulty_window_is_recorded_failed_and_the_twin_goes_on(
    tmp_path: Path, small_workload: Path, mode: str, attempts: int, error: str
) -> None:
    """1. the worker fails on the busiest middle window every time; 2. that window is retried (a crash or
    hang once, an engine error not at all), then journaled as failed with the error; 3. every window after
    it is simulated with a healthy worker, and all rows equal the engine run without that window's input
    (no partial state left by the failure, nor by the failed batch that held it); 4. a restart on the same run replays the journal without
    calling the failing window again and rewrites nothing."""
    wl = load_workload(small_workload)
    windows = workload_windows(wl)
    third = len(windows) // 3
    bad = max(range(third, 2 * third), key=lambda i: len(windows[i].tasks))
    assert windows[bad].tasks, "the workload needs a busy middle window"
    script = tmp_path / "faulty_worker.py"
    script.write_text(FAULTY_WORKER)
    command = [sys.executable, str(script), mode, str(windows[bad].end_ms)]
    timeout_s = 2.0 if mode == "hang" else 60.0

    sim, _ = await _simulate(wl, windows, tmp_path / "run", command, timeout_s)
    journal = runfiles.journal(tmp_path / "run")
    assert journal.height == len(windows)
    failed = journal.filter(pl.col("status") == "failed")
    assert failed["window_start"].dt.epoch("ms").to_list() == [windows[bad].start_ms]
    assert failed["attempts"].to_list() == [attempts]
    assert error in failed["error"][0]
    assert journal["status"].to_list().count("ok") == len(windows) - 1
    assert sim.stats.windows_simulated == len(windows) - 1
    assert sim.stats.windows_failed == 1
    # the queued windows go in batches (opendt.twin.batch): the batch holding the bad window fails once, then
    # its windows go one by one, the bad one with its retries
    assert sim.stats.batches >= 1
    if mode == "error":
        assert (sim.twin.stats.restarts, sim.twin.stats.resets) == (0, 2)
    else:
        assert (sim.twin.stats.restarts, sim.twin.stats.resets) == (3, 0)

    agg = runfiles.agg(tmp_path / "run")
    after = agg.filter(pl.col("window_start").dt.epoch("ms") > windows[bad].start_ms)
    assert after["window_start"].n_unique() == len(windows) - 1 - bad
    expect = windowed_reference(wl, windows, skip=bad)
    assert agg.select("timestamp", "power_draw", "energy_usage").equals(expect)
    assert not expect.equals(windowed_reference(wl, windows)), "the failed window's input had no effect"

    again, store2 = await _simulate(wl, windows, tmp_path / "run", command, timeout_s)
    newest = max(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert newest > windows[bad].end_ms, "a checkpoint after the failed window"
    after_checkpoint = [w for w in windows if w.start_ms >= newest]
    assert again.stats.windows_replayed == len(after_checkpoint)  # from the checkpoint, not the start
    assert (again.twin.stats.restarts, again.twin.stats.resets) == (0, 0)
    assert store2.windows.equals(journal)
    assert runfiles.agg(tmp_path / "run").equals(agg)
