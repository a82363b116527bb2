"""Scoring outcomes against SLOs: the earlier design's formula, clamping, weights per side, keep/reject."""

from __future__ import annotations

import json

import pytest

from opendt.optimizer.scoring import (
    CLAMP,
    Verdict,
    Weights,
    WindowOutcome,
    clamp,
    compare,
    deltas,
    meets,
    pick_best,
    relative_delta,
    score,
    side_delta,
)
from opendt.optimizer.slo import ENERGY_FIELDS, PERFORMANCE_FIELDS, Slo
from opendt.settings import OptimizerSettings

ENERGY_RUNTIME = Slo(energy_kwh_per_window=1.0, task_runtime_mean_s=100.0)


def _out(energy: float = 1.0, peak: float = 1000.0, **kw: float | None) -> WindowOutcome:
    """An outcome of ``energy`` kWh and ``peak`` W; other fields by keyword (carbon_g, task_*)."""
    return WindowOutcome(energy_kwh=energy, peak_power_w=peak, **kw)


def test_relative_delta_is_value_minus_target_over_target() -> None:
    """+0.3 is 30 % over the target, −0.2 is 20 % under."""
    assert relative_delta(1.3, 1.0) == pytest.approx(0.3)
    assert relative_delta(80.0, 100.0) == pytest.approx(-0.2)


def test_earlier_design_formula_with_energy_and_runtime() -> None:
    """Energy and runtime targets only: score = 0.6 × energy Δ + 0.4 × runtime Δ."""
    b = score(_out(1.2, task_runtime_mean_s=90.0), ENERGY_RUNTIME)
    assert b.score == pytest.approx(0.6 * 0.2 + 0.4 * -0.1)
    e, r = b.term("energy_kwh_per_window"), b.term("task_runtime_mean_s")
    assert e is not None
    assert r is not None
    assert e.weight == pytest.approx(0.6)
    assert r.weight == pytest.approx(0.4)
    assert e.contribution == pytest.approx(0.12)
    assert r.contribution == pytest.approx(-0.04)
    assert e.met is False
    assert r.met is True


def test_each_delta_is_clamped_to_minus_one_five() -> None:
    """A runaway term counts at most +5 (and at least −1): 10× the energy target contributes 0.6 × 5."""
    assert CLAMP == (-1.0, 5.0)
    b = score(_out(10.0, task_runtime_mean_s=0.0), ENERGY_RUNTIME)
    e = b.term("energy_kwh_per_window")
    assert e is not None
    assert e.delta == pytest.approx(9.0)
    assert e.clamped == 5.0
    assert b.score == pytest.approx(0.6 * 5 + 0.4 * -1)
    assert clamp(-3.0) == -1.0
    assert clamp(7.0) == 5.0
    assert clamp(0.25) == 0.25


def test_sides_share_their_weight_equally() -> None:
    """Energy, peak power and wait p95: 0.3 / 0.3 / 0.4 (the energy side's 0.6 split in two)."""
    slo = Slo(energy_kwh_per_window=1.0, peak_power_w=1000.0, task_wait_p95_s=100.0)
    b = score(_out(1.1, peak=1200.0, task_wait_p95_s=50.0), slo)
    weights = {t.field: t.weight for t in b.terms}
    assert weights == {
        "energy_kwh_per_window": pytest.approx(0.3),
        "peak_power_w": pytest.approx(0.3),
        "task_wait_p95_s": pytest.approx(0.4),
    }
    assert b.score == pytest.approx(0.3 * 0.1 + 0.3 * 0.2 + 0.4 * -0.5)


def test_all_five_terms() -> None:
    """Three energy-side terms share 0.6 (0.2 each), two performance terms share 0.4 (0.2 each)."""
    slo = Slo(
        energy_kwh_per_window=1.0,
        peak_power_w=1000.0,
        carbon_g_per_window=100.0,
        task_wait_p95_s=100.0,
        task_runtime_mean_s=100.0,
    )
    out = _out(1.0, peak=1000.0, carbon_g=100.0, task_wait_p95_s=100.0, task_runtime_mean_s=100.0)
    b = score(out, slo)
    assert [t.weight for t in b.terms] == [pytest.approx(0.2)] * 5
    assert b.score == pytest.approx(0.0)


@pytest.mark.parametrize(
    "slo",
    [
        Slo(energy_kwh_per_window=1.0, carbon_g_per_window=10.0),
        Slo(task_wait_p95_s=10.0, task_runtime_mean_s=10.0),
    ],
)
def test_a_lone_side_gets_the_whole_weight(slo: Slo) -> None:
    """With only one side set, its terms' weights sum to 1 (the score is their mean clamped delta)."""
    out = _out(2.0, carbon_g=20.0, task_wait_p95_s=20.0, task_runtime_mean_s=20.0)
    b = score(out, slo)
    assert sum(t.weight for t in b.terms) == pytest.approx(1.0)
    assert b.score == pytest.approx(1.0)


def test_unmeasured_terms_are_missing_and_weights_renormalize() -> None:
    """A target whose value is None is listed as missing; the other side takes the whole weight."""
    b = score(_out(1.5, task_runtime_mean_s=None), ENERGY_RUNTIME)
    assert b.missing == ("task_runtime_mean_s",)
    assert [t.field for t in b.terms] == ["energy_kwh_per_window"]
    assert b.score == pytest.approx(0.5)


def test_custom_weights_and_from_settings() -> None:
    """Weights(0.5, 0.5) weigh both sides equally; Weights.from_settings reads the settings; bad ones fail."""
    b = score(_out(1.2, task_runtime_mean_s=90.0), ENERGY_RUNTIME, Weights(0.5, 0.5))
    assert b.score == pytest.approx(0.5 * 0.2 - 0.5 * 0.1)
    assert Weights.from_settings(OptimizerSettings(energy_weight=0.7, performance_weight=0.3)) == Weights(
        0.7, 0.3
    )
    assert Weights.from_settings(OptimizerSettings()) == Weights()
    with pytest.raises(ValueError, match="weights"):
        Weights(-0.1, 1.0)
    with pytest.raises(ValueError, match="weights"):
        Weights(0.0, 0.0)


def test_zero_weight_side_contributes_nothing() -> None:
    """performance weight 0: the runtime term is shown with weight 0, the score is the energy delta."""
    b = score(_out(1.2, task_runtime_mean_s=500.0), ENERGY_RUNTIME, Weights(1.0, 0.0))
    assert b.score == pytest.approx(0.2)
    r = b.term("task_runtime_mean_s")
    assert r is not None
    assert r.weight == 0.0


def test_fields_restricts_the_terms_and_no_term_scores_zero() -> None:
    """fields= keeps only the named terms; with none left the score is 0.0 with no terms."""
    b = score(_out(1.2, task_runtime_mean_s=90.0), ENERGY_RUNTIME, fields=["task_runtime_mean_s"])
    assert [t.field for t in b.terms] == ["task_runtime_mean_s"]
    assert b.score == pytest.approx(-0.1)
    empty = score(_out(1.2), ENERGY_RUNTIME, fields=[])
    assert (empty.score, empty.terms) == (0.0, ())


def test_breakdown_serializes_for_the_api() -> None:
    """to_json_dict is plain JSON with per-term contributions and met flags."""
    b = score(_out(1.2, task_runtime_mean_s=None), ENERGY_RUNTIME)
    doc = json.loads(json.dumps(b.to_json_dict()))
    assert doc["missing"] == ["task_runtime_mean_s"]
    assert doc["terms"][0]["field"] == "energy_kwh_per_window"
    assert doc["terms"][0]["met"] is False
    assert doc["terms"][0]["contribution"] == pytest.approx(doc["score"])


def test_meets_per_field() -> None:
    """meets: value ≤ target per set and measured field (equality meets); unmeasured fields are left out."""
    slo = Slo(energy_kwh_per_window=1.0, peak_power_w=1000.0, task_wait_p95_s=10.0, carbon_g_per_window=5.0)
    out = _out(1.0, peak=1000.1, task_wait_p95_s=3.0, carbon_g=None)
    assert meets(out, slo) == {"energy_kwh_per_window": True, "peak_power_w": False, "task_wait_p95_s": True}


def test_deltas_and_side_delta() -> None:
    """deltas gives unclamped relative deltas; side_delta the worst of a side (None when the side is unset)."""
    slo = Slo(energy_kwh_per_window=1.0, peak_power_w=1000.0, task_wait_p95_s=10.0)
    d = deltas(_out(1.1, peak=1500.0, task_wait_p95_s=80.0), slo)
    assert d == {
        "energy_kwh_per_window": pytest.approx(0.1),
        "peak_power_w": pytest.approx(0.5),
        "task_wait_p95_s": pytest.approx(7.0),
    }
    assert side_delta(d, ENERGY_FIELDS) == pytest.approx(0.5)
    assert side_delta(d, PERFORMANCE_FIELDS) == pytest.approx(7.0)
    assert side_delta({"energy_kwh_per_window": 0.1}, PERFORMANCE_FIELDS) is None


ENERGY_ONLY = Slo(energy_kwh_per_window=1.0)


def test_compare_keeps_a_gain_of_at_least_min_improvement() -> None:
    """Exactly 0.05 better is kept (float rounding notwithstanding); 0.049 better is not."""
    kept = compare(_out(1.10), _out(1.05), ENERGY_ONLY)
    assert kept.kept
    assert kept.improvement == pytest.approx(0.05)
    short = compare(_out(1.10), _out(1.051), ENERGY_ONLY)
    assert not short.kept
    assert "gain 0.0490 < 0.05" in short.reason
    worse = compare(_out(1.10), _out(1.20), ENERGY_ONLY)
    assert not worse.kept
    assert worse.improvement == pytest.approx(-0.1)
    assert compare(_out(1.10), _out(1.08), ENERGY_ONLY, min_improvement=0.01).kept


def test_compare_rejects_a_proposal_that_breaks_a_met_slo() -> None:
    """Energy much better but the wait p95 pushed over its target (met by the baseline): not kept, unless
    protect_met=False."""
    slo = Slo(energy_kwh_per_window=1.0, task_wait_p95_s=100.0)
    base, cand = _out(1.5, task_wait_p95_s=50.0), _out(1.0, task_wait_p95_s=110.0)
    v = compare(base, cand, slo)
    assert v.improvement > 0.05
    assert not v.kept
    assert v.broken == ("task_wait_p95_s",)
    assert "task_wait_p95_s" in v.reason
    assert compare(base, cand, slo, protect_met=False).kept


def test_compare_keeps_a_proposal_that_meets_an_slo_the_baseline_misses() -> None:
    """Baseline: energy +26 %, no waiting (score 0.6 × 0.26 − 0.4 = −0.244). Proposal: both SLOs met, the
    wait near its target (0.6 × −0.035 + 0.4 × −0.226 = −0.111): a worse score, but it meets the energy SLO
    the baseline misses and breaks none, so it is kept; one that still misses energy is judged by score."""
    slo = Slo(energy_kwh_per_window=1.0, task_wait_p95_s=3600.0)
    base = _out(1.26, task_wait_p95_s=0.0)
    v = compare(base, _out(0.965, task_wait_p95_s=2787.0), slo)
    assert v.improvement < 0
    assert v.kept
    assert "meets SLO(s) the baseline misses: energy_kwh_per_window, breaks none" in v.reason
    near = compare(base, _out(1.01, task_wait_p95_s=2787.0), slo)
    assert not near.kept
    assert "<" in near.reason


def test_compare_uses_the_terms_measured_in_both() -> None:
    """A term measured in only one outcome is left out of both scores."""
    base = _out(1.2, task_runtime_mean_s=500.0)
    cand = _out(1.1, task_runtime_mean_s=None)
    v = compare(base, cand, ENERGY_RUNTIME)
    assert [t.field for t in v.baseline.terms] == ["energy_kwh_per_window"]
    assert [t.field for t in v.candidate.terms] == ["energy_kwh_per_window"]
    assert v.improvement == pytest.approx(0.1)
    assert v.kept
    none = compare(_out(1.0, task_wait_p95_s=None), _out(1.0), Slo(task_wait_p95_s=5.0))
    assert not none.kept
    assert none.reason == "no SLO is measured in both outcomes"


def test_pick_best_returns_the_lowest_kept_score() -> None:
    """pick_best: the kept verdict with the lowest proposal score, first on ties; None when none is kept."""
    base = _out(1.5)
    verdicts = [
        compare(base, _out(1.3), ENERGY_ONLY),
        compare(base, _out(1.49), ENERGY_ONLY),  # not kept
        compare(base, _out(1.1), ENERGY_ONLY),
        compare(base, _out(1.1), ENERGY_ONLY),
    ]
    assert [v.kept for v in verdicts] == [True, False, True, True]
    assert pick_best(verdicts) == 2
    assert pick_best([verdicts[1]]) is None
    assert pick_best([]) is None
    assert isinstance(verdicts[0], Verdict)
    assert json.loads(json.dumps(verdicts[0].to_json_dict()))["kept"] is True
