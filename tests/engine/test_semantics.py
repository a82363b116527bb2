"""Engine behaviour derived from OPENDC_SEMANTICS.md on small hand-built cases (not fitted to files)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from opendt.engine import simulate
from opendt.engine.power import PowerParams
from opendt.models.topology import PowerModel

from .conftest import frames, host_spec, linear, topo

MSE = {"modelType": "mse", "idlePower": 25.0, "maxPower": 174.0, "calibrationFactor": 4}


def _tasks(result_task: pl.DataFrame) -> dict[str, tuple[int | None, int | None, str, str]]:
    last = (
        result_task.sort("timestamp", maintain_order=True)
        .group_by("task_id")
        .agg(
            pl.col("schedule_time").max(),
            pl.col("finish_time").max(),
            pl.col("host_name").filter(pl.col("host_name") != "").first(),
            pl.col("task_state").last(),
        )
    )
    return {str(r[0]): (r[1], r[2], r[3] or "", r[4]) for r in last.iter_rows()}


@pytest.mark.parametrize(
    ("model", "u", "expected"),
    [
        ({"modelType": "constant", "power": 300.0}, 0.3, 300.0),
        ({"modelType": "linear"}, 0.3, 130.0),
        ({"modelType": "square"}, 0.3, 109.0),
        ({"modelType": "cubic"}, 0.3, 102.7),
        ({"modelType": "sqrt"}, 0.3, 100.0 + 100.0 * math.sqrt(0.3)),
        ({"modelType": "mse", "calibrationFactor": 4}, 0.3, 100.0 + 100.0 * (0.6 - 0.3**4)),
        (
            {"modelType": "asymptotic", "asymUtil": 0.3, "dvfs": False},
            1.0,
            100 + 50 * (2 - math.exp(-1 / 0.3)),
        ),
        ({"modelType": "asymptotic", "asymUtil": 0.3}, 0.3, 100 + 50 * (1 + 0.027 - math.exp(-0.027 / 0.3))),
    ],
)
def test_power_model_formulas(model: dict[str, object], u: float, expected: float) -> None:
    """Each power model follows OpenDC's formula (idle 100 W, max 200 W)."""
    params = PowerParams.from_models(
        [PowerModel.model_validate({"idlePower": 100.0, "maxPower": 200.0, **model})]
    )
    got = params.evaluate(np.array([0]), np.array([u]))[0]
    assert got == pytest.approx(expected, rel=1e-12)


def test_mse_overshoots_max_power() -> None:
    """mse with r = 4 is not clamped: it peaks at u* = (2/r)^(1/(r−1)) with 202.4 W for SURF's model."""
    params = PowerParams.from_models([PowerModel.model_validate(MSE)])
    u_star = (2 / 4) ** (1 / 3)
    assert params.evaluate(np.array([0]), np.array([u_star]))[0] == pytest.approx(202.39, abs=0.01)


def test_energy_is_the_exact_integral_and_power_the_left_limit() -> None:
    """Probe e1: 30 s at 8-core demand then 30 s at full demand on an mse host integrate exactly."""
    t = topo(("C", [host_spec("H", 1, 16, 2100.0, MSE)]))
    tasks, frags = frames([("a", 1_000_000, 16, [(30_000, 16_800.0), (30_000, 33_600.0)])])
    r = simulate(t, tasks, frags, export_interval_ms=60_000).power_source
    p_half = 25 + 149 * (1.0 - 0.5**4)
    assert r["energy_usage"][0] == pytest.approx(30 * p_half + 30 * 174.0, rel=1e-12)
    assert r["power_draw"][0] == pytest.approx(174.0)
    assert r["timestamp"].to_list() == [60_000, 60_000]
    assert r["energy_usage"][1] == 0.0


def test_off_grid_end_gives_one_partial_flush_row() -> None:
    """The run ends at the last completion; an off-grid end adds one row with the partial energy."""
    t = topo(("C", [host_spec("H", 1, 8, 2000.0, linear())]))
    tasks, frags = frames([("a", 0, 8, [(70_000, 16_000.0)])])
    r = simulate(t, tasks, frags, export_interval_ms=30_000).power_source
    assert r["timestamp"].to_list() == [30_000, 60_000, 70_000]
    assert r["energy_usage"][2] == pytest.approx(200.0 * 10.0)
    assert r["energy_usage"].sum() == pytest.approx(200.0 * 70.0)


def test_pass_grid_head_of_line_blocking_and_termination() -> None:
    """Probe e3 and friends: 1 s pass grid, FIFO without backfill, most-free-memory host, never-fit tasks."""
    t = topo(("C", [host_spec("H", 2, 16, 2000.0, linear())]))
    tasks, frags = frames(
        [
            ("a", 0, 12, [(60_000, 1000.0)]),
            ("b", 0, 12, [(90_000, 1000.0)]),
            ("c", 1_500, 8, [(30_000, 1000.0)]),
            ("d", 1_500, 2, [(30_000, 1000.0)]),
            ("e", 2_000, 2, [(30_000, 1000.0)]),
            ("big", 3_000, 64, [(30_000, 1000.0)]),
        ]
    )
    res = simulate(t, tasks, frags, export_interval_ms=10_000)
    got = _tasks(res.task)
    assert got["a"][:3] == (0, 60_000, "H")
    assert got["b"][:3] == (0, 90_000, "H-0")
    assert got["c"][:3] == (60_000, 90_000, "H")
    assert got["d"][0] == 60_000
    assert got["e"][0] == 60_000
    assert got["big"] == (None, 60_000, "", "TERMINATED")
    svc = res.service.row(-1, named=True)
    assert (svc["tasks_completed"], svc["tasks_terminated"]) == (5, 1)


def test_off_grid_submission_waits_for_the_next_whole_second() -> None:
    """A task submitted 1.5 s after T0 is placed at 2 s."""
    t = topo(("C", [host_spec("H", 2, 16, 2000.0, linear())]))
    tasks, frags = frames([("a", 0, 16, [(10_000, 100.0)]), ("b", 1_500, 8, [(10_000, 100.0)])])
    got = _tasks(simulate(t, tasks, frags, export_interval_ms=5_000).task)
    assert got["b"][:2] == (2_000, 12_000)
    assert got["b"][2] == "H-0"


def test_shared_host_sums_demand_before_the_power_model() -> None:
    """Two tasks on one host: power uses the summed demand, capped at capacity (u ≤ 1)."""
    t = topo(("C", [host_spec("H", 1, 16, 2000.0, MSE)]))
    tasks, frags = frames([("a", 0, 8, [(60_000, 8_000.0)]), ("b", 0, 8, [(60_000, 40_000.0)])])
    r = simulate(t, tasks, frags, export_interval_ms=60_000).power_source
    assert r["energy_usage"][0] == pytest.approx(174.0 * 60.0)
    tasks, frags = frames([("a", 0, 8, [(60_000, 8_000.0)]), ("b", 0, 8, [(60_000, 8_000.0)])])
    r = simulate(t, tasks, frags, export_interval_ms=60_000).power_source
    assert r["energy_usage"][0] == pytest.approx((25 + 149 * (1.0 - 0.5**4)) * 60.0)


def test_all_zero_task_completes_instantly_in_one_shot_mode() -> None:
    """A task whose fragments are all zero finishes at its placement; a zero fragment of another runs."""
    t = topo(("C", [host_spec("H", 1, 16, 2000.0, linear())]))
    tasks, frags = frames([("z", 0, 16, [(30_000, 0.0)]), ("a", 0, 16, [(30_000, 0.0), (30_000, 100.0)])])
    got = _tasks(simulate(t, tasks, frags, export_interval_ms=10_000).task)
    assert got["z"][:2] == (0, 0)
    assert got["a"][:2] == (0, 60_000)


def test_multi_cluster_rows_names_and_carbon() -> None:
    """One row per cluster per instant, globally unique host names, carbon as a step function."""
    t = topo(
        ("A", [host_spec("H", 2, 8, 2000.0, linear())]),
        ("A", [host_spec("H", 1, 16, 3000.0, {"modelType": "sqrt", "idlePower": 50.0, "maxPower": 300.0})]),
    )
    tasks, frags = frames([("x", 0, 16, [(60_000, 48_000.0)]), ("y", 0, 8, [(30_000, 8_000.0)])])
    carbon = pl.DataFrame({"timestamp": [-10_000, 45_000], "carbon_intensity": [100.0, 300.0]})
    res = simulate(t, tasks, frags, export_interval_ms=30_000, carbon=carbon)
    ps = res.power_source
    assert ps["cluster_name"].to_list() == ["A", "A-0"] * 3
    assert ps["source_name"].to_list() == ["PowerSource", "PowerSource-0"] * 3
    assert sorted(res.host["host_name"].unique().to_list()) == ["H", "H-0", "H-1"]
    big = ps.filter(pl.col("cluster_name") == "A-0")
    assert big["energy_usage"].to_list()[:2] == pytest.approx([300.0 * 30, 300.0 * 30])
    expected = 300.0 * 15 * 100 / 3.6e6 + 300.0 * 15 * 300 / 3.6e6
    assert big["carbon_emission"][1] == pytest.approx(expected)
    small = ps.filter(pl.col("cluster_name") == "A")
    assert small["energy_usage"][0] == pytest.approx((150.0 + 100.0) * 30)
