"""Perfect scaling: fragments stretch under contention (work = demand × duration, max-min shares)."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from opendt.engine import simulate
from opendt.engine.perfect import max_min

from .conftest import REFERENCE, frames, host_spec, linear, topo


def _finish(task: pl.DataFrame) -> dict[str, int]:
    done = task.filter(pl.col("task_state") == "COMPLETED")
    return {str(k): int(v) for k, v in done.select("task_id", "finish_time").iter_rows()}


def test_max_min_water_filling() -> None:
    """Demands over capacity are shared max-min: 33,600 and 8,400 on 33,600 get 25,200 and 8,400."""
    assert max_min([33_600.0, 33_600.0], 33_600.0) == [16_800.0, 16_800.0]
    assert max_min([33_600.0, 8_400.0], 33_600.0) == [25_200.0, 8_400.0]
    assert max_min([0.0, 10.0, 20.0], 100.0) == [0.0, 10.0, 20.0]


def test_contention_stretches_by_work_conservation() -> None:
    """Two full-host demands share the host: the short one ends at 60 s, the long one at 90 s."""
    t = topo(("C", [host_spec("H", 1, 16, 2100.0, linear())]))
    tasks, frags = frames([("a", 0, 8, [(60_000, 33_600.0)]), ("b", 0, 8, [(30_000, 33_600.0)])])
    perfect = simulate(t, tasks, frags, export_interval_ms=30_000, scaling="Perfect")
    assert _finish(perfect.task) == {"a": 90_000, "b": 60_000}
    assert perfect.power_source["energy_usage"].sum() == pytest.approx(200.0 * 90)
    nodelay = simulate(t, tasks, frags, export_interval_ms=30_000)
    assert _finish(nodelay.task) == {"a": 60_000, "b": 30_000}


def test_zero_demand_fragments_take_no_time() -> None:
    """A fragment with no work (zero demand) ends at once under Perfect, unlike NoDelay."""
    t = topo(("C", [host_spec("H", 1, 16, 2000.0, linear())]))
    tasks, frags = frames([("a", 0, 16, [(30_000, 0.0), (30_000, 16_000.0)])])
    assert _finish(simulate(t, tasks, frags, export_interval_ms=10_000, scaling="Perfect").task) == {
        "a": 30_000
    }
    assert _finish(simulate(t, tasks, frags, export_interval_ms=10_000).task) == {"a": 60_000}


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference/opendc is not present")
def test_synthetic_overload_perfect_headline_numbers() -> None:
    """synthetic_overload with Perfect: 317 rows, end at 2.64 h, +24 % energy (reference README)."""
    from opendt.engine.experiment import read_experiment
    from opendt.engine.workload import load_workload

    old = Path.cwd()
    os.chdir(REFERENCE / "synthetic_overload")
    try:
        sc = read_experiment(Path("input/experiment.json")).scenarios[0]
        tasks, frags = load_workload(Path(sc.workload["pathToFile"]))
    finally:
        os.chdir(old)
    runs = {
        s: simulate(
            sc.topology,
            tasks,
            frags,
            export_interval_ms=sc.interval_ms,
            carbon_by_cluster=sc.carbon,
            scaling=s,
        ).power_source
        for s in ("NoDelay", "Perfect")
    }
    p = runs["Perfect"]
    assert p.height == 317
    assert p["timestamp"].to_numpy().max() / 3.6e6 == pytest.approx(2.64, abs=0.005)
    ratio = p["energy_usage"].to_numpy().sum() / runs["NoDelay"]["energy_usage"].to_numpy().sum()
    assert ratio == pytest.approx(1.24, abs=0.005)
