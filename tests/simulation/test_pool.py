"""SimulationPool against a real child process (tests/simulation/fake_sim.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from opendt.opendc.pool import PoolClosedError, Priority, SimulationError, SimulationPool

FAKE = Path(__file__).with_name("fake_sim.py")


def fake(*args: str) -> list[str]:
    return [sys.executable, str(FAKE), *args]


async def until(cond: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    """Poll a readiness condition (never a fixed sleep); fail with ``what`` if it never holds."""
    async with asyncio.timeout(limit_s):
        while not cond():  # noqa: ASYNC110 - the other side is a separate process, not a task
            await asyncio.sleep(0.01)
    assert cond(), what


def is_dead(pid: int) -> bool:
    """The process no longer runs: it is gone, or only a zombie that is not ours to reap."""
    try:
        p = psutil.Process(pid)
        return bool(p.status() == psutil.STATUS_ZOMBIE and p.ppid() != os.getpid())
    except psutil.NoSuchProcess:
        return True


def started(d: Path) -> int:
    return len(list(d.glob("started-*")))


def read_pids(pidfile: Path) -> list[int]:
    return [int(x) for x in pidfile.read_text().split()]


async def test_start_twice_fails_and_stop_is_idempotent() -> None:
    """start() raises when called twice, stop() can be repeated, and a stopped pool refuses runs."""
    pool = SimulationPool(max_parallel=1, timeout_s=30)
    await pool.start()
    with pytest.raises(RuntimeError):
        await pool.start()
    await pool.stop()
    await pool.stop()
    with pytest.raises(PoolClosedError):
        await pool.run(fake("exit", "0"))


async def test_run_before_start_is_refused() -> None:
    """A pool that was never started refuses to run anything."""
    pool = SimulationPool()
    with pytest.raises(PoolClosedError):
        await pool.run(fake("exit", "0"))


async def test_successful_run_records_timing() -> None:
    """A zero exit returns the stream tails and records one successful run in the history."""
    async with SimulationPool(max_parallel=1, timeout_s=30) as pool:
        res = await pool.run(fake("exit", "0", "--stderr-lines", "2"), label="ok-run")
    assert res.returncode == 0
    assert "stderr line 1" in res.stderr_tail
    assert res.record.ok
    assert res.record.attempts == 1
    assert res.record.label == "ok-run"
    assert res.record.run_s > 0
    assert list(pool.history) == [res.record]
    assert pool.load.completed == 1
    assert pool.load.failed == 0


async def test_nonzero_exit_raises_with_stderr_tail(tmp_path: Path) -> None:
    """A non-zero exit raises SimulationError carrying the exit code and only the tail of stderr."""
    async with SimulationPool(max_parallel=1, timeout_s=30, retries=0, tail_bytes=200) as pool:
        with pytest.raises(SimulationError) as ei:
            await pool.run(fake("exit", "3", "--stderr-lines", "500"))
    err = ei.value
    assert err.exit_code == 3
    assert not err.timed_out
    assert "stderr line 499" in err.stderr_tail
    assert "stderr line 0\n" not in err.stderr_tail
    assert len(err.stderr_tail.encode()) <= 200
    assert "stderr line 499" in str(err)
    assert pool.load.failed == 1


async def test_retry_once_then_fail(tmp_path: Path) -> None:
    """With retries=1 a failing command runs exactly twice, then the error reports two attempts."""
    count = tmp_path / "attempts"
    async with SimulationPool(max_parallel=1, timeout_s=30, retries=1) as pool:
        with pytest.raises(SimulationError) as ei:
            await pool.run(fake("exit", "1", "--count", str(count)))
    assert count.read_text().count("attempt") == 2
    assert ei.value.attempts == 2
    assert pool.history[-1].attempts == 2
    assert not pool.history[-1].ok


async def test_retry_succeeds_on_second_attempt(tmp_path: Path) -> None:
    """A command that fails once and then succeeds is returned as a success after two attempts."""
    marker = tmp_path / "failed-once"
    script = (
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(marker)!r})\n"
        "if p.exists(): sys.exit(0)\n"
        "p.touch(); sys.exit(7)\n"
    )
    async with SimulationPool(max_parallel=1, timeout_s=30, retries=1) as pool:
        res = await pool.run([sys.executable, "-c", script])
    assert res.record.attempts == 2
    assert res.record.ok


async def test_missing_binary_is_a_simulation_error(tmp_path: Path) -> None:
    """A command that cannot be started raises SimulationError instead of an OSError."""
    async with SimulationPool(max_parallel=1, timeout_s=30) as pool:
        with pytest.raises(SimulationError, match="cannot start"):
            await pool.run([str(tmp_path / "no-such-engine")])
    assert pool.load.running == 0


async def test_concurrency_bound_is_honoured(tmp_path: Path) -> None:
    """With max_parallel=2 never more than two children run at once, and two do run together."""
    n = 6
    async with SimulationPool(max_parallel=2, timeout_s=60) as pool:
        runs = [
            asyncio.create_task(pool.run(fake("gate", "--id", str(i), "--dir", str(tmp_path))))
            for i in range(n)
        ]
        await until(lambda: started(tmp_path) == 2, "two runs started")
        await until(lambda: pool.load.queued == n - 2, "the rest queued")
        assert pool.load.running == 2
        assert started(tmp_path) == 2
        (tmp_path / "go-all").touch()
        results = await asyncio.gather(*runs)
    assert all(r.returncode == 0 for r in results)
    assert (tmp_path / "max").read_text() == "2"
    assert pool.load.running == 0
    assert pool.load.completed == n


async def test_timeout_kills_child_and_its_children(tmp_path: Path) -> None:
    """A timed-out run kills the child (which ignores SIGTERM) and its grandchild; the child is reaped."""
    pidfile = tmp_path / "pids"
    async with SimulationPool(max_parallel=1, timeout_s=3, kill_grace_s=0.2) as pool:
        with pytest.raises(SimulationError) as ei:
            await pool.run(fake("hang", "--pidfile", str(pidfile), "--grandchild", "--ignore-term"))
    assert ei.value.timed_out
    assert ei.value.exit_code == -9  # SIGTERM was ignored, so the kill did it
    child, grandchild = read_pids(pidfile)
    assert not psutil.pid_exists(child)  # reaped by us: not even a zombie
    await until(lambda: is_dead(grandchild), "grandchild killed")
    assert pool.load.running == 0


async def test_cancellation_kills_child(tmp_path: Path) -> None:
    """Cancelling a run terminates and reaps the child and its group, and CancelledError propagates."""
    pidfile = tmp_path / "pids"
    async with SimulationPool(max_parallel=1, timeout_s=60, kill_grace_s=5) as pool:
        task = asyncio.create_task(pool.run(fake("hang", "--pidfile", str(pidfile), "--grandchild")))
        await until(pidfile.exists, "child ready")
        child, grandchild = read_pids(pidfile)
        assert psutil.pid_exists(child)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not psutil.pid_exists(child)
        await until(lambda: is_dead(grandchild), "grandchild killed")
        assert pool.load.running == 0
        assert pool.history[-1].cancelled
        # The slot came back: the pool still runs work.
        res = await pool.run(fake("exit", "0"))
        assert res.returncode == 0


async def test_cancelling_a_queued_run_frees_nothing_twice(tmp_path: Path) -> None:
    """A run cancelled while queued leaves the queue, and the slot count stays right."""
    async with SimulationPool(max_parallel=1, timeout_s=60) as pool:
        blocker = asyncio.create_task(pool.run(fake("gate", "--id", "0", "--dir", str(tmp_path))))
        await until(lambda: (tmp_path / "started-0").exists(), "blocker running")
        queued = asyncio.create_task(pool.run(fake("exit", "0")))
        await until(lambda: pool.load.queued == 1, "second run queued")
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert pool.load.queued == 0
        (tmp_path / "go-0").touch()
        await blocker
        a = asyncio.create_task(pool.run(fake("gate", "--id", "1", "--dir", str(tmp_path))))
        b = asyncio.create_task(pool.run(fake("gate", "--id", "2", "--dir", str(tmp_path))))
        await until(lambda: pool.load.running == 1 and pool.load.queued == 1, "one runs, one waits")
        (tmp_path / "go-all").touch()
        await asyncio.gather(a, b)
    assert (tmp_path / "max").read_text() == "1"


async def test_high_priority_not_starved_by_low_priority_flood(tmp_path: Path) -> None:
    """A window run submitted after many calibration runs is the next one to get the slot."""
    order = tmp_path / "order"

    def gate(i: str) -> list[str]:
        return fake("gate", "--id", i, "--dir", str(tmp_path), "--order", str(order))

    async with SimulationPool(max_parallel=1, timeout_s=60) as pool:
        blocker = asyncio.create_task(pool.run(gate("blocker"), priority=Priority.HIGH))
        await until(lambda: (tmp_path / "started-blocker").exists(), "blocker running")
        low = [asyncio.create_task(pool.run(gate(f"low{i}"), priority=Priority.LOW)) for i in range(8)]
        await until(lambda: pool.load.queued == 8, "low runs queued")
        normal = asyncio.create_task(pool.run(gate("normal"), priority=Priority.NORMAL))
        high = asyncio.create_task(pool.run(gate("window"), priority=Priority.HIGH))
        await until(lambda: pool.load.queued == 10, "all queued")
        assert pool.load.queued_by_priority == {"high": 1, "normal": 1, "low": 8}
        (tmp_path / "go-all").touch()
        await asyncio.gather(blocker, high, normal, *low)
    assert order.read_text().split() == ["blocker", "window", "normal", *(f"low{i}" for i in range(8))]


async def test_stop_kills_running_and_fails_queued(tmp_path: Path) -> None:
    """stop() fails queued runs, kills the running child and returns only when both have ended."""
    pidfile = tmp_path / "pids"
    pool = SimulationPool(max_parallel=1, timeout_s=60, kill_grace_s=5)
    await pool.start()
    running = asyncio.create_task(pool.run(fake("hang", "--pidfile", str(pidfile)), retries=2))
    await until(pidfile.exists, "child ready")
    queued = asyncio.create_task(pool.run(fake("exit", "0")))
    await until(lambda: pool.load.queued == 1, "second run queued")
    await pool.stop()
    (child,) = read_pids(pidfile)
    assert not psutil.pid_exists(child)
    with pytest.raises(PoolClosedError):
        await running
    with pytest.raises(PoolClosedError):
        await queued
    assert pool.load.running == 0


async def test_read_parquet_off_loop(tmp_path: Path) -> None:
    """read_parquet returns the frame written to disk."""
    import polars as pl

    pl.DataFrame({"a": [1, 2]}).write_parquet(tmp_path / "x.parquet")
    df = await SimulationPool.read_parquet(tmp_path / "x.parquet")
    assert df["a"].to_list() == [1, 2]


async def test_unclosed_pool_warns() -> None:
    """A started pool that is dropped without stop() emits a ResourceWarning."""
    pool = SimulationPool()
    await pool.start()
    holder = [pool]
    del pool
    with pytest.warns(ResourceWarning, match="Unclosed SimulationPool"):
        holder.clear()  # drops the last reference: CPython finalizes it here
