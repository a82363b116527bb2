"""An accepted proposal is a plan, not a change of the twin (issue 26 item 4).

Accepting the optimizer's kept proposal (``optimizer.accept: plan``, the default) does not make the twin
simulate hardware the datacenter does not have: the twin goes on twinning (and calibrating against) the
physical datacenter, and the plan is served beside it as a **forecast**: every ``optimizer.forecast_every_s``
of trace time (3600 s) the trailing ``forecast_every_s`` are simulated again, from the twin's state at their
start, with the topology in effect now and with the plan's change applied to it (the same run as
``POST /api/whatif`` with that topology over that range). When a physical topology (``dc.topology``) arrives
whose values are those the plan sets, the plan is **done**: the datacenter has the planned hardware, and the
twin twins it from then on as any physical change.

``optimizer.accept: apply`` keeps the earlier behaviour (the proposal becomes the simulated topology, for
studies of a changed twin).

The plan is recorded in the optimizer's journal (``planned`` and ``plan_done`` records), so a restarted twin
serves it again; the forecast is recomputed at the next hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import structlog

from opendt.metrics import bucket
from opendt.models.patch import PatchError, apply_patch, leaf_value, parse_path, targets
from opendt.models.topology import Topology
from opendt.optimizer.journal import OptimizerJournal
from opendt.optimizer.round import same_value
from opendt.twin.history import HistoryGap
from opendt.twin.scenarios import ScenarioBusy, ScenarioResult, ScenarioRunner
from opendt.twin.topology import TopologyBox

log = structlog.get_logger(component="optimizer")

PlanPatch = dict[str, Any]


@dataclass
class Plan:
    round: int
    patch: PlanPatch
    """The proposal's change (dotted path → value), applied to the topology in effect when forecast."""
    reason: str
    accepted_at_ms: int | None
    """Trace time: the end of the newest window simulated when it was accepted."""
    status: str = "planned"
    """``planned``, ``done`` (the physical topology has it) or ``replaced`` (another plan was accepted)."""
    done_at_ms: int | None = None
    forecast: dict[str, Any] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "patch": self.patch,
            "reason": self.reason,
            "accepted_at_ms": self.accepted_at_ms,
            "status": self.status,
            "done_at_ms": self.done_at_ms,
            "forecast": self.forecast,
        }


def realised(patch: PlanPatch, physical: Topology) -> bool:
    """Whether every value the plan sets is that of ``physical`` (every host spec a path names)."""
    for path, value in patch.items():
        try:
            p = parse_path(path)
            hosts = [physical.clusters[ci].hosts[hi] for ci, hi in targets(physical, p)]
        except (PatchError, IndexError):
            return False
        if not hosts or not all(same_value(leaf_value(h, p.leaf), value) for h in hosts):
            return False
    return True


def _points(res: ScenarioResult, start: int, end: int, step_ms: int) -> list[tuple[int, float]]:
    """The run's power at its rows in ``[start, end)``, mean per ``step_ms`` (as ``POST /api/whatif``)."""
    rows = res.rows
    if rows is None or rows.is_empty():
        return []
    t, v = bucket(
        rows["timestamp_ms"].to_numpy(), rows["power_draw"].cast(pl.Float64).to_numpy(), start, end, step_ms
    )
    return list(zip(t.tolist(), v.tolist(), strict=True))


def _energy_kwh(res: ScenarioResult) -> float | None:
    energy = (res.tasks or {}).get("range_energy_j")
    return None if energy is None else round(float(energy) / 3.6e6, 6)


class Planner:
    """The optimizer's plan: accepted, forecast every ``every_ms`` of trace time, marked done."""

    def __init__(
        self, box: TopologyBox, scenarios: ScenarioRunner, journal: OptimizerJournal, every_ms: int
    ) -> None:
        self.box = box
        self.scenarios = scenarios
        self.journal = journal
        self.every_ms = every_ms
        self.plan: Plan | None = None
        self.due: tuple[int, int] | None = None
        """The forecast range waiting for the optimizer's task."""

    def resume(self, records: list[dict[str, Any]]) -> None:
        """The journal's plan records, in order: the newest plan with its status."""
        for rec in records:
            if rec.get("record") == "planned":
                at = rec.get("at_ms")
                self.plan = Plan(
                    int(rec["round"]),
                    dict(rec["patch"]),
                    str(rec.get("reason", "")),
                    None if at is None else int(at),
                )
            elif (
                rec.get("record") == "plan_done" and self.plan is not None and self.plan.round == rec["round"]
            ):
                self.plan.status, self.plan.done_at_ms = "done", int(rec["at_ms"])

    async def accept(self, index: int, patch: PlanPatch, reason: str, at_ms: int | None) -> Plan:
        if self.plan is not None and self.plan.status == "planned":
            self.plan.status = "replaced"
        self.plan = Plan(index, patch, reason, at_ms)
        await self.journal.record(
            {"record": "planned", "round": index, "patch": patch, "reason": reason, "at_ms": at_ms}
        )
        log.info("optimizer_planned", round=index, patch=patch, at_ms=at_ms)
        if self.check_done(at_ms):  # the datacenter has it already
            await self.journal.record({"record": "plan_done", "round": index, "at_ms": at_ms})
        return self.plan

    def check_done(self, at_ms: int | None) -> bool:
        """Mark the plan done when the physical topology has its values (returns whether it just did)."""
        plan = self.plan
        if plan is None or plan.status != "planned" or not realised(plan.patch, self.box.physical):
            return False
        plan.status, plan.done_at_ms = "done", at_ms
        log.info("optimizer_plan_done", round=plan.round, at_ms=at_ms)
        return True

    async def after_window(self, start_ms: int, end_ms: int, *, new_physical: bool, replayed: bool) -> bool:
        """After a window: a physical topology it brought may realise the plan; at each ``every_ms`` of trace
        time a forecast of the trailing ``every_ms`` falls due (returns whether one did)."""
        plan = self.plan
        if plan is None or plan.status != "planned":
            return False
        if new_physical and self.check_done(start_ms):
            await self.journal.record({"record": "plan_done", "round": plan.round, "at_ms": start_ms})
            return False
        if replayed or end_ms % self.every_ms:
            return False
        self.due = (end_ms - self.every_ms, end_ms)
        return True

    async def forecast(self) -> None:
        """Run the due forecast: the trailing range with the topology in effect and with the plan applied."""
        due, self.due, plan = self.due, None, self.plan
        if due is None or plan is None or plan.status != "planned":
            return
        start, end = due
        current = self.box.current
        try:
            planned = apply_patch(current.topology, plan.patch)
        except PatchError as e:
            plan.forecast = {"start_ms": start, "end_ms": end, "error": f"the plan no longer applies: {e}"}
            return
        try:
            twin, res = await self.scenarios.run(
                start, end, [current.topology, planned], what="plan-forecast"
            )
        except (HistoryGap, ScenarioBusy) as e:
            log.info("optimizer_forecast_skipped", round=plan.round, reason=str(e))
            return
        errors = [r.error for r in (twin, res) if r.rows is None]
        if errors:
            plan.forecast = {"start_ms": start, "end_ms": end, "error": errors[0]}
            return
        e_twin, e_plan = _energy_kwh(twin), _energy_kwh(res)
        step_ms = max(60, -(-(end - start) // 1000 // 500)) * 1000  # POST /api/whatif's default
        plan.forecast = {
            "start_ms": start,
            "end_ms": end,
            "base_topology_version": current.version,
            "topology": planned.to_json_dict(),
            "energy_kwh": {"twin": e_twin, "plan": e_plan},
            "energy_pct": None
            if e_twin is None or e_plan is None or e_twin == 0
            else round((e_plan / e_twin - 1) * 100, 4),
            "step_s": step_ms // 1000,
            "series": {"twin": _points(twin, start, end, step_ms), "plan": _points(res, start, end, step_ms)},
        }
        log.info("optimizer_forecast", round=plan.round, start_ms=start, end_ms=end, energy_kwh=e_plan)

    def view(self) -> dict[str, Any] | None:
        return None if self.plan is None else self.plan.to_json_dict()
