"""The optimizer's search (issue 7): the ladders it builds and how a round picks among the candidates.

The round logic runs against a stand-in for the scenario runner whose energy and wait are simple functions of
the host count, so every choice can be checked by hand; the real runner is exercised by test_component.py
(real broker) and bench/optimizer.py (SURF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from opendt.models.topology import Topology
from opendt.optimizer.round import Round, Trial, choose
from opendt.optimizer.rules import (
    decide,
    downscale_ladder,
    energy_rule_matched,
    ladder_fractions,
)
from opendt.optimizer.scoring import compare
from opendt.optimizer.slo import Slo
from opendt.settings import OptimizerSettings

from .conftest import SLO, FakeScenarios, context, make_optimizer, outcome, two_clusters

HOUR = 3_600_000


def _counts(t: Topology) -> list[int]:
    return [h.count for c in t.clusters for h in c.hosts]


# --- ladders ------------------------------------------------------------------------------------------------


def test_ladder_fractions_are_evenly_spaced_from_top_to_bottom() -> None:
    assert ladder_fractions(0.7, 0.25, 6) == pytest.approx([0.7, 0.61, 0.52, 0.43, 0.34, 0.25])
    assert ladder_fractions(0.8, 0.25, 1) == [0.8]
    assert ladder_fractions(0.8, 0.25, 0) == []


def test_downscale_ladder_scales_every_group_with_floor_and_no_repeats() -> None:
    """east A 4, B 2; west C 3: × 1.0 changes nothing; × 0.99 → 3, 1, 2; × 0.5 → 2, 1, 1; × 0.45 → 1, 1
    (floor), 1; × 0.4 repeats that."""
    ctx = context(out=outcome(2.0))
    got = downscale_ladder(ctx, OptimizerSettings(), [1.0, 0.99, 0.5, 0.45, 0.4], "energy +100.0 %")
    assert [(f, _counts(p.topology)) for f, p in got] == [
        (0.99, [3, 1, 2]),
        (0.5, [2, 1, 1]),
        (0.45, [1, 1, 1]),
    ]
    _, p = got[1]
    assert (p.rule, p.source) == ("downscale_search", "rules")
    assert [c.path for c in p.changes] == [
        f"clusters[{c}].hosts[{h}].count" for c, h in (("east", "A"), ("east", "B"), ("west", "C"))
    ]
    assert "hosts × 0.500" in p.reason
    floor2 = downscale_ladder(ctx, OptimizerSettings(min_host_count=2), [0.25], "why")
    assert [_counts(p.topology) for _, p in floor2] == [[2, 2, 2]]  # B stays at 2, never raised


def test_energy_rule_matched_only_at_plus_15_percent() -> None:
    assert energy_rule_matched(context(out=outcome(1.15))) is not None
    assert energy_rule_matched(context(out=outcome(1.149))) is None
    assert energy_rule_matched(context(out=outcome(1.0, wait=500.0))) is None  # performance side only


def test_choose_prefers_trials_meeting_every_slo_then_kept_ones() -> None:
    base = outcome(2.0, wait=0.0)
    p = decide(context(out=base), OptimizerSettings()).proposal
    assert p is not None

    def trial(energy: float, wait: float) -> Trial:
        o = outcome(energy, wait=wait)
        return Trial(p, o, {"energy_kwh_per_window": energy <= 1.0, "task_wait_p95_s": wait <= 100.0},
                     compare(base, o, SLO), 0.01, "coarse")  # fmt: skip

    miss, deep, mild = trial(1.2, 0.0), trial(0.5, 10.0), trial(0.9, 0.0)
    assert choose([miss, mild, deep]) is deep  # both meet every SLO; deep scores lower (−0.66 vs −0.46)
    slow = trial(0.5, 99.0)  # 0.6 × −0.5 + 0.4 × −0.01: the wait it costs outweighs the energy
    assert choose([miss, mild, slow]) is mild
    broken = trial(0.3, 150.0)  # breaks the wait SLO the baseline meets: not kept
    assert not broken.verdict.kept
    assert choose([miss, broken]) is miss  # kept (energy better) though it misses the energy SLO
    assert choose([broken]) is None


# --- a round against a stand-in scenario runner ---------------------------------------------------------------


async def test_round_stops_at_the_coarse_ladder_when_a_cut_meets_every_slo(tmp_path: Path) -> None:
    """100 hosts, 1 kWh, SLO 0.6 kWh (+66.7 %): the rule cuts to 60 (meets both SLOs); the coarse ladder
    (0.6 → 0.25) also tries 53, 46, 39, 32, 25 (energy fine, waits 3000 s > 1800 s: not kept). A cut meets
    every SLO, so nothing is refined; the 60-host cut is chosen."""
    scen = FakeScenarios(busy=60)
    opt = make_optimizer(tmp_path, {"energy_kwh_per_window": 0.6 / 12, "task_wait_p95_s": 1800}, scen)
    r = Round(1, 0, HOUR, 0)
    await opt.run_round(r)
    assert scen.calls == [("optimizer-baseline", [100]), ("optimizer-proposals", [60, 53, 46, 39, 32, 25])]
    assert r.status == "kept"
    assert r.proposal is not None
    assert (r.proposal.rule, _counts(r.proposal.topology)) == ("massive_downscale", [60])
    assert [t.stage for t in r.trials] == ["rule"] + ["coarse"] * 5
    assert "6 candidates, 1 meeting every SLO" in r.note
    view = r.to_json_dict()
    assert [c["feasible"] for c in view["candidates"]] == [True] + [False] * 5


async def test_round_refines_between_the_last_miss_and_the_first_hit(tmp_path: Path) -> None:
    """Energy 0.3 + 0.005 kWh per host (0.8 at 100 hosts), SLO 0.661 (+21 %): the rule lowers the frequency
    (no change in the stand-in); the coarse cuts 82, 71, 59, 48, 36, 25: 71 is the first to meet the energy
    SLO but breaks the wait (busy at 72). Refined between 82 and 71: 80, 79, 77, 76, 74, 72, of which 72 meets
    both (energy 0.66) and is chosen; no further refinement."""
    scen = FakeScenarios(per_host=0.005, base=0.3, busy=72)
    opt = make_optimizer(tmp_path, {"energy_kwh_per_window": 0.661 / 12, "task_wait_p95_s": 1800}, scen)
    r = Round(1, 0, HOUR, 0)
    await opt.run_round(r)
    assert scen.calls[1] == ("optimizer-proposals", [100, 82, 71, 59, 48, 36, 25])
    assert scen.calls[2:] == [("optimizer-search", [80, 79, 77, 76, 74, 72])]
    assert r.proposal is not None
    assert (r.proposal.rule, _counts(r.proposal.topology)) == ("downscale_search", [72])
    assert r.status == "kept"
    assert r.trials[0].proposal.rule == "reduce_frequency"
    assert [t.stage for t in r.trials].count("refine") == 6


async def test_refinement_narrows_until_no_count_is_left(tmp_path: Path) -> None:
    """No cut meets both SLOs (energy needs ≤ 75 hosts, the wait ≥ 76): the coarse ladder (75 … 25), then
    96 … 78 between 100 and 75, then 77 and 76 between 78 and 75; then no count is left to try. The best kept
    cut (by score) is reported, meeting not every SLO."""
    scen = FakeScenarios(busy=76)
    opt = make_optimizer(tmp_path, {"energy_kwh_per_window": 0.75 / 12, "task_wait_p95_s": 1800}, scen)
    r = Round(1, 0, HOUR, 0)
    await opt.run_round(r)
    assert [n for _, n in scen.calls] == [[100], [75, 65, 55, 45, 35, 25], [96, 92, 89, 85, 82, 78], [77, 76]]
    assert not any(t.feasible for t in r.trials)
    assert r.status == "kept"
    assert r.candidate_meets == {"energy_kwh_per_window": False, "task_wait_p95_s": True}


async def test_search_steps_zero_is_the_earlier_one_proposal_design(tmp_path: Path) -> None:
    scen = FakeScenarios(busy=70)
    opt = make_optimizer(tmp_path, {"energy_kwh_per_window": 0.8 / 12, "task_wait_p95_s": 1800}, scen,
                     search_steps=0)  # fmt: skip
    r = Round(1, 0, HOUR, 0)
    await opt.run_round(r)
    assert [n for _, n in scen.calls] == [[100], [100]]
    assert r.proposal is not None
    assert r.proposal.rule == "reduce_frequency"
    assert r.status == "rejected"
    assert len(r.trials) == 1


async def test_no_search_on_the_performance_side(tmp_path: Path) -> None:
    """Wait p95 over its SLO, energy fine: the scale-up rule's proposal is simulated alone."""
    scen = FakeScenarios(busy=200)  # every count waits 3000 s
    opt = make_optimizer(tmp_path, {"energy_kwh_per_window": 5.0, "task_wait_p95_s": 1800}, scen)
    r = Round(1, 0, HOUR, 0)
    await opt.run_round(r)
    assert r.proposal is not None
    assert r.proposal.rule == "scale_up_large"
    assert [len(n) for _, n in scen.calls] == [1, 1]


def test_slo_fixture_is_what_the_choose_test_assumes() -> None:
    assert Slo(energy_kwh_per_window=1.0, task_wait_p95_s=100.0) == SLO
    assert _counts(two_clusters()) == [4, 2, 3]


@pytest.mark.parametrize("bad", [{"search_steps": -1}, {"search_refinements": -1}, {"search_floor": 0.0},
                                 {"search_floor": 1.0}])  # fmt: skip
def test_search_settings_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(bad))):
        OptimizerSettings(**bad)
