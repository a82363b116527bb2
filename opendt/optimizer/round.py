"""An optimizer round and its candidates: the outcome of a scenario run in SLO units, each simulated
candidate judged against the round's baseline (:class:`Trial`), the choice among them, and the round record
as ``GET /api/optimizer`` shows it and the journal keeps it (:class:`Round`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from opendt.models.patch import PatchError, PatchValue, leaf_value, parse_path, targets
from opendt.models.topology import Topology
from opendt.optimizer.rules import Proposal
from opendt.optimizer.scoring import Verdict, WindowOutcome
from opendt.twin.scenarios import ScenarioResult


def outcome_of(res: ScenarioResult, n_windows: int) -> WindowOutcome:
    """A scenario run in SLO units (per window: energy and carbon divided by ``n_windows``)."""
    rows = res.rows if res.rows is not None else pl.DataFrame()
    tasks = res.tasks or {}
    if rows.is_empty():
        return WindowOutcome(0.0, 0.0, None, tasks.get("wait_p95_s"), tasks.get("runtime_mean_s"))
    carbon = rows["carbon_emission"]
    return WindowOutcome(
        energy_kwh=float(rows["energy_usage"].sum()) / 3.6e6 / n_windows,
        peak_power_w=float(rows["power_draw"].max()),  # type: ignore[arg-type]
        carbon_g=float(carbon.sum()) / n_windows if carbon.is_not_null().any() else None,
        task_wait_p95_s=tasks.get("wait_p95_s"),
        task_runtime_mean_s=tasks.get("runtime_mean_s"),
    )


@dataclass(frozen=True)
class PendingChange:
    """One value a proposal changes, against the topology in effect now: ``before`` (now), ``after`` (the
    proposal's), ``proposed_from`` (the value the proposal was made on); ``conflict`` when those two
    differ."""

    path: str
    before: PatchValue | None
    after: PatchValue
    proposed_from: PatchValue
    conflict: bool


def same_value(a: PatchValue | None, b: PatchValue) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def proposal_changes(proposal: Proposal, current: Topology) -> list[PendingChange]:
    """The proposal as a change (patch) of ``current``: each of its paths with the value now, the value the
    proposal was made on and its new one. A path that names no host spec of ``current`` (one since removed)
    is a conflict."""
    out = []
    for c in proposal.changes:
        try:
            p = parse_path(c.path)
            hosts = [current.clusters[ci].hosts[hi] for ci, hi in targets(current, p)]
            now: PatchValue | None = leaf_value(hosts[0], p.leaf)
        except (PatchError, IndexError):
            now = None
        out.append(
            PendingChange(c.path, now, c.after, c.before, now is None or not same_value(now, c.before))
        )
    return out


@dataclass
class Trial:
    """One simulated candidate of a round: the proposal, its outcome, which SLOs it meets, its verdict."""

    proposal: Proposal
    outcome: WindowOutcome
    meets: dict[str, bool]
    verdict: Verdict
    compute_s: float | None
    stage: str
    """``rule`` (the strategy's proposal), ``coarse`` or ``refine`` (the search's ladders)."""

    @property
    def feasible(self) -> bool:
        """Kept over the baseline and meeting every SLO that is measured."""
        return self.verdict.kept and all(self.meets.values())

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "rule": self.proposal.rule,
            "changes": [
                {"path": c.path, "before": c.before, "after": c.after} for c in self.proposal.changes
            ],
            "outcome": self.outcome.to_json_dict(),
            "meets": self.meets,
            "score": self.verdict.candidate.score,
            "kept": self.verdict.kept,
            "feasible": self.feasible,
            "reason": self.verdict.reason,
            "compute_s": self.compute_s,
        }


def choose(trials: list[Trial]) -> Trial | None:
    """The best trial: the lowest score among those meeting every SLO, else among the kept ones (the first on
    a tie: milder changes come first); None when none is kept."""
    for pool in ([t for t in trials if t.feasible], [t for t in trials if t.verdict.kept]):
        if pool:
            return min(pool, key=lambda t: t.verdict.candidate.score)
    return None


@dataclass
class Round:
    index: int
    start_ms: int
    end_ms: int
    base_version: int
    status: str = "queued"
    """queued, maintain (no proposal), kept, rejected, failed, skipped, superseded."""
    note: str = ""
    baseline: WindowOutcome | None = None
    candidate: WindowOutcome | None = None
    proposal: Proposal | None = None
    verdict: Verdict | None = None
    baseline_meets: dict[str, bool] = field(default_factory=dict)
    candidate_meets: dict[str, bool] = field(default_factory=dict)
    baseline_score: dict[str, Any] | None = None
    tasks: dict[str, Any] | None = None
    proposal_compute_s: float | None = None
    trials: list[Trial] = field(default_factory=list)
    """Every candidate simulated in the round (the rule's proposal first, then the search's)."""
    duration_s: float = 0.0
    accepted_version: int | None = None
    recorded_candidates: list[dict[str, Any]] | None = None
    """A round read back from the journal: its candidates as recorded (``trials`` is empty then)."""
    rerun: bool = False
    """Queued by a replayed window (after a restart) because no earlier process recorded it."""

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "round": self.index,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "base_version": self.base_version,
            "status": self.status,
            "note": self.note,
            "baseline": None if self.baseline is None else self.baseline.to_json_dict(),
            "baseline_score": self.baseline_score,
            "baseline_meets": self.baseline_meets,
            "proposal": None if self.proposal is None else self.proposal.to_json_dict(),
            "candidate": None if self.candidate is None else self.candidate.to_json_dict(),
            "candidate_meets": self.candidate_meets,
            "verdict": None if self.verdict is None else self.verdict.to_json_dict(),
            "tasks": self.tasks,
            "proposal_compute_s": self.proposal_compute_s,
            "candidates": self.recorded_candidates
            if self.recorded_candidates is not None
            else [t.to_json_dict() for t in self.trials],
            "duration_s": round(self.duration_s, 4),
            "accepted_version": self.accepted_version,
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> Round:
        """The inverse of :meth:`to_json_dict` (a round of the journal)."""

        def outcome(x: dict[str, Any] | None) -> WindowOutcome | None:
            return None if x is None else WindowOutcome.from_json_dict(x)

        return cls(
            index=int(d["round"]),
            start_ms=int(d["start_ms"]),
            end_ms=int(d["end_ms"]),
            base_version=int(d["base_version"]),
            status=d["status"],
            note=d["note"],
            baseline=outcome(d["baseline"]),
            candidate=outcome(d["candidate"]),
            proposal=None if d["proposal"] is None else Proposal.from_json_dict(d["proposal"]),
            verdict=None if d["verdict"] is None else Verdict.from_json_dict(d["verdict"]),
            baseline_meets=d["baseline_meets"],
            candidate_meets=d["candidate_meets"],
            baseline_score=d["baseline_score"],
            tasks=d["tasks"],
            proposal_compute_s=d["proposal_compute_s"],
            duration_s=float(d["duration_s"]),
            accepted_version=d["accepted_version"],
            recorded_candidates=list(d["candidates"]),
        )
