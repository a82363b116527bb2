"""The optimizer component: every ``optimizer.every_windows`` windows, re-simulate the trailing windows with
the twin's topology (baseline) and with the strategy's proposal, score both against the SLOs, keep the best.

It is a window hook (:class:`~opendt.twin.hooks.WindowHooks`) that only queues rounds; :meth:`Optimizer.run`
executes them through the shared :class:`~opendt.twin.scenarios.ScenarioRunner` (low-priority engine workers,
warm-started from the twin's state), so window simulations never wait for it. When rounds fall behind, a
queued round is replaced by the newer one (counted as superseded). Nothing changes the twin: a user accepts
the kept proposal (:meth:`Optimizer.accept`, ``POST /api/optimizer/accept``) as a plan, forecast beside the
twin until the physical topology has it (:mod:`opendt.optimizer.plan`); with ``optimizer.accept: apply`` it is
written through the :class:`~opendt.twin.topology.TopologyWriter` with source ``optimizer`` instead.

Per-window units: the baseline and the proposal are simulated over the trailing ``every_windows`` windows;
energy and carbon are divided by that count (the SLOs are per window), peak power is the maximum, task wait
p95 and mean run time are over the tasks of the whole range.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from typing import Any

import polars as pl
import structlog

from opendt.models.patch import PatchError, apply_patch
from opendt.models.topology import Topology
from opendt.optimizer.journal import OptimizerJournal
from opendt.optimizer.plan import Planner
from opendt.optimizer.round import Round, Trial, choose, outcome_of, proposal_changes
from opendt.optimizer.rules import (
    OptimizerContext,
    Proposal,
    RulesStrategy,
    Strategy,
    downscale_ladder,
    energy_rule_matched,
    ladder_fractions,
)
from opendt.optimizer.scoring import (
    Weights,
    compare,
    deltas,
    meets,
    score,
    side_delta,
)
from opendt.optimizer.slo import ENERGY_FIELDS, SloWatcher
from opendt.settings import OptimizerSettings
from opendt.stream.windowing import Window
from opendt.twin.history import HistoryGap
from opendt.twin.scenarios import ScenarioBusy, ScenarioResult, ScenarioRunner
from opendt.twin.topology import TopologyBox, TopologyWriter

log = structlog.get_logger(component="optimizer")

KEEP_ROUNDS = 1000


class OptimizerError(RuntimeError):
    """An accept that cannot be done (nothing kept, unknown round); the message says why."""


class Optimizer:
    def __init__(
        self,
        settings: OptimizerSettings,
        box: TopologyBox,
        scenarios: ScenarioRunner,
        slo: SloWatcher,
        strategy: Strategy,
        *,
        window_ms: int,
        writer: TopologyWriter | None = None,
        journal: OptimizerJournal | None = None,
    ) -> None:
        self.settings = settings
        self.box = box
        self.scenarios = scenarios
        self.slo = slo
        self.strategy = strategy
        self.window_ms = window_ms
        self.writer = writer
        self.journal = journal or OptimizerJournal(None)
        self.weights = Weights.from_settings(settings)
        self.rounds: deque[Round] = deque(maxlen=KEEP_ROUNDS)
        self.best: Round | None = None
        self._pending: Round | None = None
        self._wake = asyncio.Event()
        self._windows = 0
        self._max_task_cores: int | None = None
        self.superseded = 0
        self.accepted = 0
        self.busy = False
        self.planner = Planner(box, scenarios, self.journal, settings.forecast_every_s * 1000)
        self._last_end_ms: int | None = None

    # -- simulator hooks ---------------------------------------------------------------------------------

    async def before_window(self, w: Window) -> None:
        return None

    async def after_window(
        self, w: Window, tasks: pl.DataFrame, fragments: pl.DataFrame, *, replayed: bool = False
    ) -> None:
        if tasks.height:
            biggest = int(tasks["cpu_count"].max())  # type: ignore[arg-type]
            self._max_task_cores = max(biggest, self._max_task_cores or 0)
        self._last_end_ms = w.end_ms
        new_physical = w.topology is not None
        if await self.planner.after_window(
            w.start_ms, w.end_ms, new_physical=new_physical, replayed=replayed
        ):
            self._wake.set()
        self._windows += 1
        if w.final or self._windows % self.settings.every_windows:
            return
        # numbered by the windows since the run's start, replayed ones included: a restarted twin goes on with
        # the numbers of the rounds it recorded, runs again a round it never recorded (queued or running at
        # the kill), and a round over windows simulated again replaces its record
        index = self._windows // self.settings.every_windows
        old = next((x for x in self.rounds if x.index == index), None)
        if replayed and old is not None:
            return
        start = w.end_ms - self.settings.every_windows * self.window_ms
        r = Round(index, start, w.end_ms, self.box.current.version, rerun=replayed)
        if old is not None:
            self.rounds.remove(old)
            if self.best is old:
                self.best = None
        pending, self._pending = self._pending, r
        self.rounds.append(r)
        self._wake.set()
        if pending is not None and pending.rerun:  # only the last of the unrecorded rounds of a replay runs
            self.rounds.remove(pending)
        elif pending is not None:
            pending.status, pending.note = "superseded", f"round {r.index} came before it ran"
            self.superseded += 1
            await self.journal.round(pending.to_json_dict())

    checkpoint_key = "optimizer"

    def checkpoint_state(self) -> dict[str, Any]:  # what a restart numbers rounds on
        return {"windows": self._windows, "max_task_cores": self._max_task_cores}

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        self._windows = int(state.get("windows", 0))
        cores = state.get("max_task_cores")
        self._max_task_cores = None if cores is None else int(cores)

    def resume(self) -> int:
        """Read the journal's rounds back (a restarted twin): the history, the accepted count and the kept
        proposal still waiting for an operator. Returns the number of rounds read."""
        for d in self.journal.load():
            try:
                self.rounds.append(Round.from_json_dict(d))
            except (KeyError, TypeError, ValueError) as e:  # TopologyError is a ValueError
                self.journal.errors += 1
                log.warning("optimizer_journal_bad_round", round=d.get("round"), error=repr(e))
        self.planner.resume(self.journal.plans)
        self.accepted = sum(r.accepted_version is not None for r in self.rounds)
        self.superseded = sum(r.status == "superseded" for r in self.rounds)
        last = next((r for r in reversed(self.rounds) if r.status == "kept"), None)
        self.best = last if last is not None and last.accepted_version is None else None
        return len(self.rounds)

    # -- rounds ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run queued rounds until cancelled; the strategy is closed on the way out."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self.planner.forecast()
                r, self._pending = self._pending, None
                if r is None:
                    continue
                self.busy = True
                t0 = time.perf_counter()
                try:
                    await self.run_round(r)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.exception("optimizer_round_failed", round=r.index)
                    r.status, r.note = "failed", f"{type(e).__name__}: {e}"
                finally:
                    self.busy = False
                    r.duration_s = time.perf_counter() - t0
                log.info(
                    "optimizer_round",
                    round=r.index,
                    status=r.status,
                    note=r.note,
                    rule=None if r.proposal is None else r.proposal.rule,
                    duration_s=round(r.duration_s, 4),
                )
                await self.journal.round(r.to_json_dict())
        finally:
            await self.strategy.aclose()

    async def _simulate(self, r: Round, topologies: list[Topology], what: str) -> list[ScenarioResult] | None:
        try:
            return await self.scenarios.run(r.start_ms, r.end_ms, topologies, what=what)
        except (HistoryGap, ScenarioBusy) as e:
            r.status, r.note = "skipped", f"{what}: {e}"
            return None

    async def _trials(self, r: Round, proposals: list[Proposal], stage: str, what: str) -> list[Trial] | None:
        """Simulate ``proposals`` in one scenario run and judge each against the round's baseline; None when
        the run was skipped. A candidate whose simulation failed is logged and left out."""
        if not proposals:
            return []
        results = await self._simulate(r, [p.topology for p in proposals], what)
        if results is None:
            return None
        assert r.baseline is not None
        slo, n = self.slo.current, self.settings.every_windows
        out = []
        for p, res in zip(proposals, results, strict=True):
            if res.rows is None:
                log.warning("optimizer_candidate_failed", round=r.index, rule=p.rule, error=res.error)
                continue
            o = outcome_of(res, n)
            v = compare(r.baseline, o, slo, self.weights, min_improvement=self.settings.min_improvement)
            out.append(Trial(p, o, meets(o, slo), v, res.compute_s, stage))
        return out

    def _refine_fractions(self, coarse: list[tuple[float, Trial]]) -> list[float]:
        """Fractions strictly between the last cut tried (by falling fraction) that misses the energy-side
        SLOs and the first that meets them (the current topology, 1.0, when the first one already does):
        where the shallowest cut meeting them lies and, when that one breaks the wait SLO, any cut meeting
        both."""
        steps = self.settings.search_steps
        energy_ok = [all(v for f, v in t.meets.items() if f in ENERGY_FIELDS) for _, t in coarse]
        k = next((i for i, ok in enumerate(energy_ok) if ok), None)
        if k is None:
            return []
        top = coarse[k - 1][0] if k > 0 else 1.0
        bottom = coarse[k][0]
        return ladder_fractions(top, bottom, steps + 2)[1:-1]

    def _ladder(
        self, ctx: OptimizerContext, fractions: list[float], why: str, rule: Proposal
    ) -> list[tuple[float, Proposal]]:
        """The search's cuts with their fractions, carrying the rule's fallback reason; a cut equal to the
        rule's proposal is that proposal (simulated once)."""
        return [
            (
                f,
                rule
                if p.topology == rule.topology
                else dataclasses.replace(p, fallback_reason=rule.fallback_reason),
            )
            for f, p in downscale_ladder(ctx, self.settings, fractions, why)
        ]

    async def run_round(self, r: Round) -> None:
        topology = self.box.current.topology
        r.base_version = self.box.current.version
        slo = self.slo.current
        n = self.settings.every_windows
        base = await self._simulate(r, [topology], "optimizer-baseline")
        if base is None:
            return
        if base[0].rows is None:
            r.status, r.note = "failed", f"optimizer-baseline: {base[0].error}"
            return
        r.baseline = outcome_of(base[0], n)
        r.tasks = base[0].tasks
        r.baseline_meets = meets(r.baseline, slo)
        r.baseline_score = score(r.baseline, slo, self.weights).to_json_dict()
        ctx = OptimizerContext(
            topology=topology,
            outcome=r.baseline,
            slo=slo,
            window_start_ms=r.start_ms,
            window_end_ms=r.end_ms,
            physical=self.box.physical,
            max_task_cores=self._max_task_cores,
            stats={"windows": n, **(base[0].tasks or {})},
        )
        if isinstance(self.strategy, RulesStrategy):
            decision = self.strategy.decide(ctx)  # the same as propose(), with the note of a maintain
            proposal, note = decision.proposal, decision.note
        else:
            proposal = await self.strategy.propose(ctx)
            note = getattr(self.strategy, "last_fallback_reason", None) or "the strategy proposed no change"
        if proposal is None:
            r.status, r.note = "maintain", note
            return
        r.proposal = proposal
        ladder: list[tuple[float, Proposal]] = []
        # the search extends the rules (also when they stood in for the LLM); an LLM's answer is judged alone
        searching = self.settings.search_steps > 0 and proposal.source == "rules"
        why = energy_rule_matched(ctx) if searching else None
        if why is not None:
            energy = side_delta(deltas(r.baseline, slo), ENERGY_FIELDS)
            assert energy is not None  # an energy rule matched on it
            top = min(1.0, 1 / (1 + energy))
            ladder = self._ladder(
                ctx,
                ladder_fractions(top, self.settings.search_floor, self.settings.search_steps),
                why,
                proposal,
            )
        proposals = [proposal, *(p for _, p in ladder if p is not proposal)]
        trials = await self._trials(r, proposals, "coarse", "optimizer-proposals")
        if trials is None:
            return
        for t in trials:
            if t.proposal is proposal:
                t.stage = "rule"
        if why is not None:
            by_proposal = {id(t.proposal): t for t in trials}
            tried = [(f, by_proposal[id(p)]) for f, p in ladder if id(p) in by_proposal]
            for _ in range(self.settings.search_refinements):
                if any(t.feasible for _, t in tried):
                    break
                fine = self._refine_fractions(sorted(tried, key=lambda x: -x[0]))
                seen = [t.proposal.topology for t in trials]
                refine = [(f, p) for f, p in self._ladder(ctx, fine, why, proposal) if p.topology not in seen]
                if not refine:
                    break
                more = await self._trials(r, [p for _, p in refine], "refine", "optimizer-search")
                if not more:
                    break
                by_proposal = {id(t.proposal): t for t in more}
                tried += [(f, by_proposal[id(p)]) for f, p in refine if id(p) in by_proposal]
                trials += more
        r.trials = trials
        best = choose(trials)
        shown = best or min(trials, key=lambda t: t.verdict.candidate.score, default=None)
        if shown is None:
            r.status, r.note = "failed", "every candidate's simulation failed"
            return
        r.proposal = shown.proposal
        r.proposal_compute_s = shown.compute_s
        r.candidate = shown.outcome
        r.candidate_meets = shown.meets
        r.verdict = shown.verdict
        r.status = "kept" if best is not None else "rejected"
        r.note = shown.verdict.reason
        if len(trials) > 1:
            r.note += f" ({len(trials)} candidates, {sum(t.feasible for t in trials)} meeting every SLO)"
        if best is not None:
            self.best = r

    # -- accept and visibility ---------------------------------------------------------------------------

    async def accept(self, index: int | None = None) -> Round:
        """Apply the kept proposal of round ``index`` (default: the current best) as a change to the topology
        in effect now: only the values the proposal changes are set (what a calibration changed since stays).
        Refused (:class:`OptimizerError`, saying why) when one of those values changed since the proposal was
        made: the proposal no longer says what it was judged on."""
        if index is None:
            r = self.best
            if r is None:
                raise OptimizerError("no kept proposal to accept yet")
        else:
            r = next((x for x in self.rounds if x.index == index), None)
            if r is None:
                raise OptimizerError(f"round {index} is unknown (or too old)")
            if r.status != "kept":
                raise OptimizerError(f"round {index} kept no proposal (status {r.status})")
        if r.accepted_version is not None:
            raise OptimizerError(f"round {r.index} was already accepted (version {r.accepted_version})")
        plan = self.planner.plan
        if plan is not None and plan.round == r.index and plan.status != "replaced":
            raise OptimizerError(f"round {r.index} was already accepted as the plan (status {plan.status})")
        if self.writer is None and self.settings.accept == "apply":
            raise OptimizerError("no twin to apply a topology to")
        assert r.proposal is not None
        current = self.box.current
        conflicts = [c for c in proposal_changes(r.proposal, current.topology) if c.conflict]
        if conflicts:
            c = conflicts[0]
            more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
            raise OptimizerError(
                f"round {r.index}'s proposal was made on topology version {r.base_version}, where {c.path} "
                f"was {c.proposed_from}; it is {c.before} in version {current.version} (source "
                f"{current.source}) now{more}: the proposal was judged on values that changed since; wait "
                "for a round on the current topology"
            )
        try:
            topology = apply_patch(current.topology, r.proposal.patch)
        except PatchError as e:
            raise OptimizerError(
                f"round {r.index}'s proposal cannot apply to version {current.version}: {e}"
            ) from None
        reason = f"optimizer round {r.index}: {r.proposal.reason}"
        if self.best is r:
            self.best = None
        if self.settings.accept == "plan":
            await self.planner.accept(r.index, r.proposal.patch, reason, self._last_end_ms)
            return r
        assert self.writer is not None
        r.accepted_version = (await self.writer.write(topology, "optimizer", reason)).version
        await self.journal.accepted(r.index, r.accepted_version)
        self.accepted += 1
        log.info("optimizer_accepted", round=r.index, version=r.accepted_version, rule=r.proposal.rule)
        return r

    def _diff(self, r: Round | None) -> list[dict[str, Any]] | None:
        """What accepting ``r`` would change in the topology in effect now, with any conflict marked."""
        if r is None or r.proposal is None:
            return None
        return [vars(c) for c in proposal_changes(r.proposal, self.box.current.topology)]

    def summary(self) -> dict[str, Any]:
        """What ``/api/status`` shows (the rounds themselves are at ``/api/optimizer``)."""
        v = self.view(limit=0)
        return {
            k: v[k]
            for k in ("status", "strategy", "cycle_count", "counts", "topology_updates", "best_config")
        }

    def view(self, limit: int = 100) -> dict[str, Any]:
        done = [r for r in self.rounds if r.status not in ("queued",)]
        last = next((r for r in reversed(self.rounds) if r.baseline is not None), None)
        best = self.best
        return {
            "enabled": True,
            "status": "running" if self.busy else "idle",
            "strategy": self.settings.strategy,
            "every_windows": self.settings.every_windows,
            "cycle_count": len(done),
            "slo_targets": self.slo.current.targets(),
            "current_topology": {"version": self.box.current.version, "source": self.box.current.source},
            "window_baseline_score": None
            if last is None or last.baseline_score is None
            else last.baseline_score["score"],
            "window_best_score": None
            if best is None or best.verdict is None
            else best.verdict.candidate.score,
            "best_config": None if best is None or best.proposal is None else best.proposal.patch,
            "best": None if best is None else best.to_json_dict(),
            "diff_vs_current": self._diff(best),
            "topology_updates": self.accepted,
            "accept": self.settings.accept,
            "plan": self.planner.view(),
            "counts": {
                s: sum(r.status == s for r in self.rounds)
                for s in ("kept", "rejected", "maintain", "failed", "skipped", "superseded", "queued")
            },
            "history": [r.to_json_dict() for r in list(self.rounds)[-limit:]] if limit else [],
        }
