"""Scoring a window's outcome against the SLOs: pure functions, lower is better.

**Relative delta** of a target: ``(value − target) / target``; +0.30 means 30 % over the SLO, −0.20 means 20 %
under it. Each delta is clamped to ``[−1, 5]`` (:data:`CLAMP`) before weighting, so one runaway term cannot
swamp the others and being far under a target earns at most −1.

**Score** = Σ weight × clamped delta over the SLO terms that are set and measured. The weights come from two
sides (:class:`Weights`, defaults 0.6 / 0.4 as in the earlier design):

* the *energy side* (``energy_kwh_per_window``, ``peak_power_w``, ``carbon_g_per_window``) shares
  ``Weights.energy`` equally among its terms present;
* the *performance side* (``task_runtime_mean_s``, ``task_wait_p95_s``) shares ``Weights.performance``
  equally among its terms present;
* the weights of the sides present are then normalized to sum to 1 (a side with no term gives its weight to
  the other), so the score is a weighted mean of clamped deltas and stays in ``[−1, 5]``.

With only an energy and a runtime target this is exactly the earlier ``0.6 × energy Δ + 0.4 × runtime Δ``.
With energy, peak power and wait p95 set: 0.3 × energy Δ + 0.3 × peak Δ + 0.4 × wait Δ.

**Kept**: a proposal replaces the baseline only if, with ``protect_met`` (default), it breaks no SLO that the
baseline meets (an energy saving must not push the task wait p95 over its target), and either it meets an SLO
the baseline misses (SLO attainment first) or its score is lower by at least ``min_improvement`` (default
0.05). The first clause departs from the earlier design's score-only rule: a score rewards doing better than
a target as much as it penalizes missing one, so a baseline 26 % over its energy SLO with no waiting
(0.6 × 0.26 + 0.4 × −1 = −0.24) outscores a proposal that meets both SLOs with waits near their target
(0.6 × −0.03 + 0.4 × −0.23 = −0.11). Both are scored over the same terms: those measured in both outcomes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from opendt.optimizer.slo import ENERGY_FIELDS, PERFORMANCE_FIELDS, Slo
from opendt.settings import OptimizerSettings

CLAMP = (-1.0, 5.0)
_EPS = 1e-9  # a gain of exactly min_improvement counts, whatever the float rounding


@dataclass(frozen=True)
class WindowOutcome:
    """What one simulation of a window (or of the trailing windows, per window) gives, in SLO units.

    * ``energy_kwh``: Σ ``energy_usage`` of the window's export rows (J) / 3.6e6;
    * ``peak_power_w``: the largest total ``power_draw`` (summed over power sources) at an export instant;
    * ``carbon_g``: Σ ``carbon_emission`` (g) of the known intervals; None when no carbon intensity was
      received for the range;
    * ``task_wait_p95_s``: 95th percentile of ``schedule_time − submission_time`` over the tasks submitted in
      the window, and of ``restart − re-queue`` over the tasks a topology change re-queued in it (their host
      was removed and no other had room). A task still waiting at the window's end gets its exact wait: the
      scenario's scheduler runs on with no further input until it starts (FIFO: later tasks cannot overtake
      it; :func:`~opendt.worker.warm.task_stats`). 0.0 when every task started at once, None when no
      task was submitted;
    * ``task_runtime_mean_s``: mean ``finish_time − schedule_time`` of the tasks that finished in the window;
      None when none did.

    None means "not measured": the term is left out of the score (and of :func:`meets`).
    """

    energy_kwh: float
    peak_power_w: float
    carbon_g: float | None = None
    task_wait_p95_s: float | None = None
    task_runtime_mean_s: float | None = None

    def value(self, slo_field: str) -> float | None:
        """The measured value that the SLO field ``slo_field`` targets."""
        v: float | None = getattr(self, OUTCOME_FIELD[slo_field])
        return v

    def to_json_dict(self) -> dict[str, float | None]:
        return {
            "energy_kwh": self.energy_kwh,
            "peak_power_w": self.peak_power_w,
            "carbon_g": self.carbon_g,
            "task_wait_p95_s": self.task_wait_p95_s,
            "task_runtime_mean_s": self.task_runtime_mean_s,
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> WindowOutcome:
        return cls(**d)


OUTCOME_FIELD = {
    "energy_kwh_per_window": "energy_kwh",
    "peak_power_w": "peak_power_w",
    "carbon_g_per_window": "carbon_g",
    "task_wait_p95_s": "task_wait_p95_s",
    "task_runtime_mean_s": "task_runtime_mean_s",
}
"""SLO field → :class:`WindowOutcome` field."""


@dataclass(frozen=True)
class Weights:
    """Weights of the energy side and the performance side (see the module docstring)."""

    energy: float = 0.6
    performance: float = 0.4

    def __post_init__(self) -> None:
        if self.energy < 0 or self.performance < 0 or self.energy + self.performance <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum: {self}")

    @classmethod
    def from_settings(cls, settings: OptimizerSettings) -> Weights:
        return cls(settings.energy_weight, settings.performance_weight)


@dataclass(frozen=True)
class Term:
    """One SLO's part of a score: ``contribution = weight × clamped``."""

    field: str
    value: float
    target: float
    delta: float
    clamped: float
    weight: float
    contribution: float

    @property
    def met(self) -> bool:
        return self.value <= self.target

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "value": self.value,
            "target": self.target,
            "delta": self.delta,
            "clamped": self.clamped,
            "weight": self.weight,
            "contribution": self.contribution,
            "met": self.met,
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> Term:
        return cls(**{k: v for k, v in d.items() if k != "met"})


@dataclass(frozen=True)
class ScoreBreakdown:
    """A score (lower is better), its terms, and the SLO fields that are set but were not measured."""

    score: float
    terms: tuple[Term, ...]
    missing: tuple[str, ...] = ()

    def term(self, field: str) -> Term | None:
        return next((t for t in self.terms if t.field == field), None)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "terms": [t.to_json_dict() for t in self.terms],
            "missing": list(self.missing),
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> ScoreBreakdown:
        return cls(d["score"], tuple(Term.from_json_dict(t) for t in d["terms"]), tuple(d["missing"]))


def relative_delta(value: float, target: float) -> float:
    """``(value − target) / target``: + over the target, − under it (``target`` > 0)."""
    return (value - target) / target


def clamp(delta: float) -> float:
    lo, hi = CLAMP
    return min(hi, max(lo, delta))


def deltas(outcome: WindowOutcome, slo: Slo) -> dict[str, float]:
    """Unclamped relative delta of every SLO that is set and measured, by SLO field."""
    out = {}
    for field, target in slo.targets().items():
        v = outcome.value(field)
        if v is not None:
            out[field] = relative_delta(v, target)
    return out


def side_delta(d: dict[str, float], side: Sequence[str]) -> float | None:
    """The worst (largest) delta among the fields of one side (:data:`ENERGY_FIELDS` or
    :data:`PERFORMANCE_FIELDS`); None when none of them is set and measured."""
    vals = [d[f] for f in side if f in d]
    return max(vals) if vals else None


def score(
    outcome: WindowOutcome,
    slo: Slo,
    weights: Weights | None = None,
    *,
    fields: Collection[str] | None = None,
) -> ScoreBreakdown:
    """Score ``outcome`` against ``slo`` (lower is better), over the SLO fields that are set, measured and,
    when ``fields`` is given, in ``fields``. No term at all gives score 0.0 with no terms."""
    w = weights or Weights()
    targets = slo.targets()
    present: list[tuple[str, float, float]] = []
    missing = []
    for f, target in targets.items():
        if fields is not None and f not in fields:
            continue
        v = outcome.value(f)
        if v is None:
            missing.append(f)
        else:
            present.append((f, float(v), target))
    n_energy = sum(1 for f, _, _ in present if f in ENERGY_FIELDS)
    n_perf = sum(1 for f, _, _ in present if f in PERFORMANCE_FIELDS)
    total = (w.energy if n_energy else 0.0) + (w.performance if n_perf else 0.0)
    terms = []
    for f, v, target in present:
        side_w, n = (w.energy, n_energy) if f in ENERGY_FIELDS else (w.performance, n_perf)
        weight = side_w / n / total if total > 0 else 0.0
        d = relative_delta(v, target)
        c = clamp(d)
        terms.append(Term(f, v, target, d, c, weight, weight * c))
    return ScoreBreakdown(sum(t.contribution for t in terms), tuple(terms), tuple(missing))


def meets(outcome: WindowOutcome, slo: Slo) -> dict[str, bool]:
    """Per SLO field that is set and measured: is the value at or under its target?"""
    out = {}
    for f, target in slo.targets().items():
        v = outcome.value(f)
        if v is not None:
            out[f] = v <= target
    return out


@dataclass(frozen=True)
class Verdict:
    """The comparison of a proposal's outcome with the baseline's, over the same terms."""

    kept: bool
    improvement: float
    """Baseline score − proposal score (> 0: the proposal is better)."""
    baseline: ScoreBreakdown
    candidate: ScoreBreakdown
    broken: tuple[str, ...]
    """SLO fields the baseline meets and the proposal does not."""
    reason: str

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "improvement": self.improvement,
            "baseline": self.baseline.to_json_dict(),
            "candidate": self.candidate.to_json_dict(),
            "broken": list(self.broken),
            "reason": self.reason,
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(
            kept=d["kept"],
            improvement=d["improvement"],
            baseline=ScoreBreakdown.from_json_dict(d["baseline"]),
            candidate=ScoreBreakdown.from_json_dict(d["candidate"]),
            broken=tuple(d["broken"]),
            reason=d["reason"],
        )


def compare(
    baseline: WindowOutcome,
    candidate: WindowOutcome,
    slo: Slo,
    weights: Weights | None = None,
    *,
    min_improvement: float = 0.05,
    protect_met: bool = True,
) -> Verdict:
    """Is ``candidate`` (a proposal's outcome) worth keeping over ``baseline``? See the module docstring."""
    common = [f for f in slo.targets() if baseline.value(f) is not None and candidate.value(f) is not None]
    b = score(baseline, slo, weights, fields=common)
    c = score(candidate, slo, weights, fields=common)
    improvement = b.score - c.score
    mb, mc = meets(baseline, slo), meets(candidate, slo)
    broken = tuple(f for f in common if mb[f] and not mc[f])
    fixed = tuple(f for f in common if not mb[f] and mc[f])
    if not common:
        return Verdict(False, 0.0, b, c, (), "no SLO is measured in both outcomes")
    if protect_met and broken:
        reason = f"breaks SLO(s) the baseline meets: {', '.join(broken)}"
        return Verdict(False, improvement, b, c, broken, reason)
    if fixed and not broken:
        reason = (
            f"meets SLO(s) the baseline misses: {', '.join(fixed)}, breaks none "
            f"(score {c.score:.4f} vs baseline {b.score:.4f}: gain {improvement:.4f})"
        )
        return Verdict(True, improvement, b, c, broken, reason)
    if improvement + _EPS < min_improvement:
        reason = f"score {c.score:.4f} vs baseline {b.score:.4f}: gain {improvement:.4f} < {min_improvement}"
        return Verdict(False, improvement, b, c, broken, reason)
    reason = f"score {c.score:.4f} vs baseline {b.score:.4f}: gain {improvement:.4f}"
    return Verdict(True, improvement, b, c, broken, reason)


def pick_best(verdicts: Sequence[Verdict]) -> int | None:
    """Index of the kept verdict with the lowest proposal score (the first on a tie); None if none is kept."""
    best: int | None = None
    for i, v in enumerate(verdicts):
        if v.kept and (best is None or v.candidate.score < verdicts[best].candidate.score):
            best = i
    return best
