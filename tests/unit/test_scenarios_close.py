"""ScenarioRunner.close(): queued and running scenario runs are cancelled at once (shutdown does not wait for
them in turn), each caller gets ScenarioStopped, and later runs are refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from opendt.twin.checkpoint import Checkpoints
from opendt.twin.history import TwinHistory
from opendt.twin.inputs import InputStore
from opendt.twin.scenarios import ScenarioRunner, ScenarioStopped
from opendt.twin.topology import TopologyBox
from opendt.workload import load_workload

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


class _SlowPool:
    """A candidate pool whose runs never finish on their own (a stand-in for long what-ifs in a queue)."""

    size = 1

    def __init__(self) -> None:
        self.started = 0
        self.all_started = asyncio.Event()

    async def run(self, rin: Any, topologies: list[Any]) -> list[Any]:
        self.started += 1
        if self.started == 4:
            self.all_started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_close_cancels_every_queued_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topo = load_workload(DEMO).topology
    history = TwinHistory(InputStore(tmp_path), Checkpoints(tmp_path))
    monkeypatch.setattr(history, "base", lambda start, end: _Base())
    pool = _SlowPool()
    runner = ScenarioRunner(history, pool, export_interval_ms=150_000, box=TopologyBox(topo), max_queue=4)  # type: ignore[arg-type]
    runs = [asyncio.create_task(runner.run(0, 3_600_000, [topo], what="whatif")) for _ in range(4)]
    await asyncio.wait_for(pool.all_started.wait(), 10)
    assert runner.queued == 4
    t0 = asyncio.get_running_loop().time()
    await runner.close()
    assert asyncio.get_running_loop().time() - t0 < 1.0
    for r in runs:
        with pytest.raises(ScenarioStopped, match="shutting down"):
            await r
    assert runner.queued == 0
    assert runner.view()["cancelled"] == 4
    with pytest.raises(ScenarioStopped):
        await runner.run(0, 3_600_000, [topo], what="whatif")


class _Base:
    at_ms = 0
    blob = None

    def __init__(self) -> None:
        import polars as pl

        self.tasks = pl.DataFrame()
        self.fragments = pl.DataFrame()
        self.carbon = pl.DataFrame()
