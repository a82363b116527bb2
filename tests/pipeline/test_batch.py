"""Windows queued behind one another are simulated in batches (opendt/twin/batch.py): one engine round trip,
one input-store write and one results append per batch; the same results, journal, stored inputs and
checkpoints as window by window, with a real engine worker and real files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl
import pytest

from opendt.settings import Settings, SimulationSettings
from opendt.stream.resume import ClosedWindow
from opendt.stream.windowing import Window
from opendt.twin.appendlog import AppendLog
from opendt.twin.batch import MAX_WINDOWS
from opendt.twin.loop import WindowLoop
from opendt.twin.recovery import Recovery, durability_of
from opendt.twin.results import ResultStore
from opendt.twin.tables import JOURNAL
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


async def test_a_crash_in_the_middle_of_a_batch_resumes_to_the_results_of_an_uninterrupted_run(
    tmp_path: Path, small_workload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. the third journal append fails (the process would die there): in the first batch, after its first
    window is journaled and the second's rows are appended; 2. the batch's inputs are all stored, one window
    of it is durable; 3. a restart on the run directory (the frames after the journal cut off, the durable
    windows replayed from the store, the rest simulated) gives the results and journal of an uninterrupted
    run."""
    wl = load_workload(small_workload)
    await _simulate(wl, workload_windows(wl), tmp_path / "ref", queued=True)
    real = AppendLog.append
    journaled = 0

    def crashing(self: AppendLog, window_start_ms: int, df: pl.DataFrame) -> None:
        nonlocal journaled
        if self.path.name == JOURNAL.file:
            journaled += 1
            if journaled == 3:
                raise OSError("injected crash")
        real(self, window_start_ms, df)

    monkeypatch.setattr(AppendLog, "append", crashing)
    with pytest.raises(OSError, match="injected crash"):
        await _simulate(wl, workload_windows(wl), tmp_path / "run", queued=True)
    monkeypatch.undo()
    assert runfiles.journal(tmp_path / "run").height == 2  # the first window (alone), one of the batch
    assert len(list((tmp_path / "run" / "inputs").iterdir())) > 3

    again = await _simulate(wl, workload_windows(wl), tmp_path / "run", queued=True)
    assert again.stats.windows_replayed == 2
    assert runfiles.agg(tmp_path / "run").equals(runfiles.agg(tmp_path / "ref"))
    j_run, j_ref = runfiles.journal(tmp_path / "run"), runfiles.journal(tmp_path / "ref")
    assert j_run.drop(TIMING).equals(j_ref.drop(TIMING))
