"""Long-lived engine workers: rows over pipes equal the in-process engine; crashes and hangs are survived."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import polars as pl
import pytest

from opendt.engine import Engine
from opendt.worker.client import TwinEngine, WorkerDied, WorkerError
from opendt.workload import Workload, load_workload

W = 300_000


def _carbon(wl: Workload) -> pl.DataFrame:
    assert wl.carbon is not None
    return wl.carbon.rename({"timestamp_ms": "timestamp"})


def _windows(wl_dir: Path) -> tuple[Workload, list[tuple[int, pl.DataFrame, pl.DataFrame]]]:
    wl = load_workload(wl_dir)
    start = (wl.origin_ms // W) * W
    end = wl.end_ms + W
    out = []
    for lo in range(start, end, W):
        t = wl.tasks.filter((pl.col("submission_ms") >= lo) & (pl.col("submission_ms") < lo + W))
        f = wl.fragments.filter((pl.col("submission_ms") >= lo) & (pl.col("submission_ms") < lo + W))
        out.append((lo + W, t, f))
    return wl, out


async def test_worker_rows_equal_in_process_engine(small_workload: Path) -> None:
    """Advancing window by window through the worker gives exactly the rows of the in-process engine."""
    wl, windows = _windows(small_workload)
    ref = Engine(wl.topology, export_interval_ms=150_000, carbon=_carbon(wl))
    twin = TwinEngine(timeout_s=60)
    try:
        await twin.init(wl.topology.to_json_dict(), 150_000, _carbon(wl))
        for until, t, f in windows:
            got = await twin.advance(until, t, f)
            expect = ref.advance(until, t, f)
            assert got.equals(expect)
        assert (await twin.finish()).equals(ref.finish())
    finally:
        await twin.close()


async def test_crashed_worker_is_restarted_with_its_state_rebuilt(small_workload: Path) -> None:
    """SIGKILL of the worker mid-run: one call fails; before the next, the new worker gets its state back
    through the owner's rebuild (a snapshot taken earlier, then the calls since, as the twin does from its
    checkpoint and input store); results are unchanged and nothing of the calls is kept by the client."""
    wl, windows = _windows(small_workload)
    ref = Engine(wl.topology, export_interval_ms=150_000, carbon=_carbon(wl))
    twin = TwinEngine(timeout_s=60)
    checkpoint: list[bytes] = []
    since: list[tuple[int, pl.DataFrame, pl.DataFrame]] = []

    async def rebuild() -> None:
        await twin.restore(checkpoint[0])
        for until, t, f in since:
            await twin.advance(until, t, f)

    twin.rebuild = rebuild
    try:
        await twin.init(wl.topology.to_json_dict(), 150_000, _carbon(wl))
        for i, (until, t, f) in enumerate(windows):
            if i == len(windows) // 4:
                checkpoint.append(await twin.snapshot(archive="running"))
            if i == len(windows) // 2:
                assert twin.pid is not None
                os.kill(twin.pid, signal.SIGKILL)
                with pytest.raises(WorkerDied):
                    await twin.advance(until, t, f)
            got = await twin.advance(until, t, f)
            assert got.equals(ref.advance(until, t, f))
            if checkpoint:
                since.append((until, t, f))
        assert (twin.stats.restarts, twin.stats.rebuilds) == (1, 1)
        assert not hasattr(twin.stats, "history")
    finally:
        await twin.close()


async def test_hanging_worker_times_out_and_is_replaced(tmp_path: Path, small_workload: Path) -> None:
    """A worker that stops answering is killed at the timeout and the next call uses a fresh one."""
    hang = tmp_path / "hang_worker.py"
    marker = tmp_path / "hung-once"
    hang.write_text(  # the first worker hangs in its first init; the next ones are healthy
        "import os, time\n"
        "from opendt.engine import Engine\n"
        "from opendt.worker.child import main\n"
        "init = Engine.__init__\n"
        "def hang_once(self, *a, **k):\n"
        f"    if not os.path.exists({str(marker)!r}):\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "        time.sleep(3600)\n"
        "    init(self, *a, **k)\n"
        "Engine.__init__ = hang_once\n"
        "raise SystemExit(main())\n"
    )
    wl, _ = _windows(small_workload)
    twin = TwinEngine([sys.executable, str(hang)], timeout_s=2)
    try:
        with pytest.raises(WorkerDied, match="timed out"):
            await twin.init(wl.topology.to_json_dict(), 150_000, None)
        await twin.init(wl.topology.to_json_dict(), 150_000, None)
        assert twin.stats.restarts == 1
    finally:
        await twin.close()


async def test_slow_worker_startup_is_not_a_hang(tmp_path: Path, small_workload: Path) -> None:
    """A worker whose interpreter takes longer to start than the call timeout still serves: the timeout
    covers the calls, not the start (which has its own, longer one)."""
    slow = tmp_path / "slow_worker.py"
    slow.write_text(
        "import time\ntime.sleep(2)\nfrom opendt.worker.child import main\nraise SystemExit(main())\n"
    )
    wl, _ = _windows(small_workload)
    twin = TwinEngine([sys.executable, str(slow)], timeout_s=1)
    try:
        await twin.init(wl.topology.to_json_dict(), 150_000, None)
        assert twin.stats.restarts == 0
    finally:
        await twin.close()
    twin = TwinEngine([sys.executable, str(slow)], timeout_s=1, startup_timeout_s=0.5)
    try:
        with pytest.raises(WorkerDied, match=r"timed out after 0\.5 s on ping"):
            await twin.init(wl.topology.to_json_dict(), 150_000, None)
    finally:
        await twin.close()


async def test_engine_errors_are_reported_not_fatal(small_workload: Path) -> None:
    """An engine exception comes back as WorkerError; the worker keeps serving."""
    twin = TwinEngine(timeout_s=30)
    try:
        with pytest.raises(WorkerError, match="not initialised"):
            await twin.finish()
        wl, _ = _windows(small_workload)
        await twin.init(wl.topology.to_json_dict(), 150_000, None)
        assert twin.stats.restarts == 0
    finally:
        await twin.close()
