"""An accepted proposal is a plan (issue 26 item 4): it never changes the simulated topology; it is done when a
physical topology with its values arrives (a window that brings it), journaled so a restarted twin serves it
with its status; forecasts fall due each ``forecast_every_s`` of trace time, not for replayed windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from opendt.models.patch import apply_patch
from opendt.optimizer.journal import OptimizerJournal
from opendt.optimizer.plan import realised
from opendt.optimizer.round import Round
from opendt.stream.windowing import Window

from .conftest import FakeScenarios, make_optimizer

HOUR = 3_600_000
WIN = 300_000
SLO = {"energy_kwh_per_window": 0.6 / 12, "task_wait_p95_s": 1800}
NO_TASKS = pl.DataFrame({"cpu_count": []}, schema={"cpu_count": pl.Int64})


async def _planned(tmp_path: Path) -> tuple[Any, Round]:
    journal = OptimizerJournal(tmp_path / "optimizer.jsonl")
    opt = make_optimizer(tmp_path, SLO, FakeScenarios(busy=60), journal)
    r = Round(1, 0, HOUR, 0)
    await opt.run_round(r)
    await journal.round(r.to_json_dict())
    assert r.status == "kept"
    await opt.after_window(Window(HOUR - WIN, HOUR), NO_TASKS, NO_TASKS)
    await opt.accept()
    return opt, r


async def test_a_plan_changes_nothing_and_is_done_when_the_datacenter_has_it(tmp_path: Path) -> None:
    opt, r = await _planned(tmp_path)
    assert r.proposal is not None
    plan = opt.planner.plan
    assert plan is not None
    assert (plan.round, plan.status, plan.accepted_at_ms) == (1, "planned", HOUR)
    assert plan.patch == r.proposal.patch
    assert opt.box.current.version == 0  # nothing written: the twin twins the physical datacenter
    assert r.accepted_version is None
    assert opt.view()["plan"]["status"] == "planned"
    assert opt.planner.due is None  # accepted after the hour's window: the next hour forecasts it
    # another physical change (not the plan's): still planned
    other = apply_patch(opt.box.physical, {"cpuPowerModel.idlePower": 33.0})
    opt.box.set_physical(other, HOUR)
    await opt.after_window(Window(HOUR, HOUR + WIN, topology=other), NO_TASKS, NO_TASKS)
    assert plan.status == "planned"
    # the planned hardware arrives on dc.topology
    built = apply_patch(other, plan.patch)
    assert realised(plan.patch, built)
    assert not realised(plan.patch, other)
    opt.box.set_physical(built, HOUR + WIN)
    await opt.after_window(Window(HOUR + WIN, HOUR + 2 * WIN, topology=built), NO_TASKS, NO_TASKS)
    assert (plan.status, plan.done_at_ms) == ("done", HOUR + WIN)
    # a restarted twin reads the plan and its status back
    again = make_optimizer(tmp_path, SLO, FakeScenarios(), OptimizerJournal(tmp_path / "optimizer.jsonl"))
    again.resume()
    assert again.planner.view() == {**plan.to_json_dict(), "forecast": None}


async def test_forecasts_fall_due_each_hour_of_fresh_windows(tmp_path: Path) -> None:
    opt, _ = await _planned(tmp_path)
    opt.planner.due = None
    for i in range(12, 24):  # the second hour
        await opt.after_window(Window(i * WIN, (i + 1) * WIN), NO_TASKS, NO_TASKS, replayed=i < 23)
    assert opt.planner.due == (HOUR, 2 * HOUR)
    opt.planner.due = None
    for i in range(24, 36):  # the third hour, replayed after a restart: no forecast
        await opt.after_window(Window(i * WIN, (i + 1) * WIN), NO_TASKS, NO_TASKS, replayed=True)
    assert opt.planner.due is None
