"""Windows queued behind one another are simulated in batches (opendt/twin/batch.py): one engine round trip,
one input-store write and one results append per batch; the same results, journal, stored inputs and
checkpoints as window by window, with a real engine worker and real files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl

from opendt.settings import Settings, SimulationSettings
from opendt.stream.resume import ClosedWindow
from opendt.stream.windowing import Window
from opendt.twin.batch import MAX_WINDOWS
from opendt.twin.loop import WindowLoop
from opendt.twin.recovery import Recovery, durability_of
from opendt.twin.results import ResultStore
from opendt.twin.topology import TopologyBox
from opendt.worker.client import TwinEngine
from opendt.workload import Workload, load_workload

from .. import runfiles
from .conftest import windowed_reference, workload_windows

TIMING = ("latency_s", "compute_s")


async def _simulate(wl: Workload, windows: list[Window], run_dir: Path, *, queued: bool) -> WindowLoop:
    """The loop over ``windows``: all queued before it starts (``queued``: the twin is behind), or each put
    only once the one before is durable (the twin keeps up)."""
    store = ResultStore(run_dir)
    store.load()
    queue: asyncio.Queue[ClosedWindow | None] = asyncio.Queue()
    twin = TwinEngine(timeout_s=60)
    box = TopologyBox(wl.topology)
    recovery = Recovery(durability_of(Settings(), run_dir), store, box, twin, export_interval_ms=150_000)
    recovery.load()
    durable = asyncio.Event()

    async def committed(cw: ClosedWindow) -> None:  # the loop commits once the window is durable
        durable.set()

    sim = WindowLoop(queue, twin, store, box, SimulationSettings(), recovery=recovery, commit=committed)

    async def feed() -> None:
        for w in windows:
            durable.clear()
            queue.put_nowait(ClosedWindow(w))
            if not queued:
                await durable.wait()
                assert store.is_durable(w.start_ms)
        queue.put_nowait(None)

    async with asyncio.timeout(120):
        await asyncio.gather(feed(), sim.run())
    return sim


def _checkpoints(run_dir: Path) -> dict[int, bytes]:
    ckpts = run_dir / "checkpoints"
    return {int(p.name): (p / "engine.bin").read_bytes() for p in ckpts.iterdir() if p.name.isdigit()}


async def test_queued_windows_go_in_batches_with_the_results_of_one_by_one(
    tmp_path: Path, small_workload: Path
) -> None:
    """1. queued windows are simulated in batches (fewer engine calls than windows), none longer than the
    bound, none across a checkpoint instant; 2. the results equal window by window exactly, and the
    engine advanced window by window in process; 3. the journal is the same but for the timings; 4. the
    same windows' inputs are stored; 5. the checkpoints are at the same instants with the same engine
    state, byte for byte (the snapshot that came back with a batch is the engine at that instant)."""
    wl = load_workload(small_workload)
    windows = workload_windows(wl)
    batched = await _simulate(wl, windows, tmp_path / "batched", queued=True)
    single = await _simulate(wl, workload_windows(wl), tmp_path / "single", queued=False)

    assert single.stats.batches == 0
    assert batched.stats.batches >= 2
    assert batched.twin.stats.calls < single.twin.stats.calls - len(windows) // 2
    assert batched.stats.windows_simulated == single.stats.windows_simulated == len(windows)

    agg_b, agg_s = runfiles.agg(tmp_path / "batched"), runfiles.agg(tmp_path / "single")
    assert agg_b.height > 0
    assert agg_b.equals(agg_s)
    assert agg_b.select("timestamp", "power_draw", "energy_usage").equals(windowed_reference(wl, windows))

    j_b, j_s = runfiles.journal(tmp_path / "batched"), runfiles.journal(tmp_path / "single")
    assert j_b.drop(TIMING).equals(j_s.drop(TIMING))
    assert (j_b["status"] == "ok").all()
    # a batch's windows share its latency: runs of equal latencies are the batches
    runs = j_b.with_columns(pl.col("latency_s").rle_id().alias("batch")).group_by("batch").len()
    assert max(runs["len"].to_list()) <= MAX_WINDOWS
    assert runs.height < len(windows)

    stored_b = sorted(p.name for p in (tmp_path / "batched" / "inputs").iterdir())
    assert stored_b == sorted(p.name for p in (tmp_path / "single" / "inputs").iterdir())

    ckpt_b, ckpt_s = _checkpoints(tmp_path / "batched"), _checkpoints(tmp_path / "single")
    assert ckpt_b.keys() == ckpt_s.keys()
    assert len(ckpt_b) >= 1
    assert ckpt_b == ckpt_s
