"""The rule-based strategy, rule by rule and bound by bound, over multi-cluster, multi-group topologies; and the
bounds every proposal (the LLM's too) must respect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from opendt.models.patch import apply_patch
from opendt.models.topology import Host, Topology
from opendt.optimizer.rules import RULES, Proposal, RulesStrategy, bound_violations, decide
from opendt.optimizer.slo import Slo
from opendt.settings import OptimizerSettings

from .conftest import context, host, outcome, topology, two_clusters

S = OptimizerSettings(downscale="one_host")  # the earlier design, rule by rule


def _propose(
    energy: float = 1.0, wait: float | None = 100.0, topo: Topology | None = None, **kw: Any
) -> Proposal:
    """The proposal of the rules for that energy (kWh) and wait (s); settings= overrides the defaults."""
    settings = kw.pop("settings", S)
    p = decide(context(topo, outcome(energy, wait), **kw), settings).proposal
    assert p is not None
    return p


def _groups(t: Topology, attr: str) -> list[float]:
    get: dict[str, Callable[[Host], float]] = {
        "count": lambda h: h.count,
        "cores": lambda h: h.cpu.coreCount,
        "speed": lambda h: h.cpu.coreSpeed,
    }
    return [get[attr](h) for c in t.clusters for h in c.hosts]


def test_rule_order_is_the_issues() -> None:
    """The rules are tried in the issue's order."""
    assert [r.name for r in RULES] == [
        "massive_downscale",
        "reduce_frequency",
        "scale_up_large",
        "scale_up_small",
        "consolidate",
    ]


def test_on_target_maintains() -> None:
    """Energy and wait on their targets: no proposal, and the note says maintain with the deltas."""
    d = decide(context(), S)
    assert d.proposal is None
    assert d.note.startswith("maintain: energy_kwh_per_window +0.0 %, task_wait_p95_s +0.0 %")


# --- massive_downscale -------------------------------------------------------------------------------------


def test_massive_downscale_removes_one_host_per_group_in_every_cluster() -> None:
    """Energy +30 % (inclusive): A 4→3, B 2→1 (east), C 3→2 (west); nothing else changes."""
    p = _propose(1.3)
    assert p.rule == "massive_downscale"
    assert p.source == "rules"
    assert p.fallback_reason is None
    assert _groups(p.topology, "count") == [3, 1, 2]
    assert _groups(p.topology, "cores") == _groups(two_clusters(), "cores")
    assert p.patch == {
        "clusters[east].hosts[A].count": 3,
        "clusters[east].hosts[B].count": 1,
        "clusters[west].hosts[C].count": 2,
    }
    assert "energy +30.0 %" in p.reason


def test_massive_downscale_respects_min_host_count() -> None:
    """Groups at min_host_count keep their hosts (default 1; here 2 via settings)."""
    p = decide(context(out=outcome(1.5)), OptimizerSettings(min_host_count=2, downscale="one_host")).proposal
    assert p is not None
    assert _groups(p.topology, "count") == [3, 2, 2]
    t = topology(("c", [host("X", 1, 16, 2400), host("Y", 5, 16, 2400)]))
    assert _groups(_propose(1.5, topo=t).topology, "count") == [1, 4]


def test_massive_downscale_to_slo_cuts_hosts_by_the_energy_excess() -> None:
    """downscale to_slo (the default): count / (1 + delta) rounded down, at least one fewer, floor respected:
    +100 % halves the groups (A 4→2, B 2→1, C 3→1); +30 % takes one from each (4/1.3 = 3.08 → 3)."""
    s = OptimizerSettings()
    assert s.downscale == "to_slo"
    p = decide(context(out=outcome(2.0)), s).proposal
    assert p is not None
    assert p.rule == "massive_downscale"
    assert _groups(p.topology, "count") == [2, 1, 1]
    p = decide(context(out=outcome(1.3)), s).proposal
    assert p is not None
    assert _groups(p.topology, "count") == [3, 1, 2]
    p = decide(context(out=outcome(9.0)), OptimizerSettings(min_host_count=2)).proposal
    assert p is not None
    assert _groups(p.topology, "count") == [2, 2, 2]


def test_massive_downscale_at_bound_falls_through_to_reduce_frequency() -> None:
    """Every group at one host: the downscale is skipped (noted) and the frequency rule applies."""
    t = topology(("east", [host("A", 1, 16, 2400)]), ("west", [host("C", 1, 8, 3000)]))
    p = _propose(1.5, topo=t)
    assert p.rule == "reduce_frequency"
    assert _groups(p.topology, "speed") == [2160.0, 2700.0]
    assert "massive_downscale skipped: every host group is at its bound" in p.reason


# --- reduce_frequency --------------------------------------------------------------------------------------


def test_reduce_frequency_scales_core_speed() -> None:
    """Energy +15 % (inclusive, below +30 %): coreSpeed × 0.9 in every group: 2400→2160, 2000→1800, 3000→2700."""
    p = _propose(1.15)
    assert p.rule == "reduce_frequency"
    assert _groups(p.topology, "speed") == [2160.0, 1800.0, 2700.0]
    assert _groups(p.topology, "count") == [4, 2, 3]
    p = _propose(1.2999)
    assert p.rule == "reduce_frequency"


def test_reduce_frequency_floor_is_never_crossed_nor_forced_upward() -> None:
    """1900 → 1800 (floor, not 1710); 1800 and 1700 (already below) stay as they are."""
    t = topology(
        ("c", [host("P", 1, 8, 1900), host("Q", 1, 8, 1800), host("R", 1, 8, 1700), host("S", 1, 8, 2500)])
    )
    p = _propose(1.2, topo=t)
    assert _groups(p.topology, "speed") == [1800.0, 1800.0, 1700.0, 2250.0]
    assert [c.path for c in p.changes] == [
        "clusters[c].hosts[P].cpu.coreSpeed",
        "clusters[c].hosts[S].cpu.coreSpeed",
    ]


def test_reduce_frequency_settings() -> None:
    """core_speed_factor and min_core_speed_mhz come from the settings."""
    s = OptimizerSettings(core_speed_factor=0.8, min_core_speed_mhz=2000)
    p = decide(context(out=outcome(1.2)), s).proposal
    assert p is not None
    assert _groups(p.topology, "speed") == [2000.0, 2000.0, 2400.0]
    assert "coreSpeed × 0.8 (floor 2000 MHz)" in p.reason


def test_energy_rules_all_at_bound_fall_through_to_maintain() -> None:
    """One host per group at the speed floor and wait on target: maintain, both skips noted."""
    t = topology(("c", [host("A", 1, 16, 1800)]))
    d = decide(context(t, outcome(2.0)), S)
    assert d.proposal is None
    assert "massive_downscale skipped" in d.note
    assert "reduce_frequency skipped" in d.note


def test_energy_below_fifteen_percent_maintains() -> None:
    """Energy +14.9 % with the wait on target: maintain."""
    assert decide(context(out=outcome(1.149)), S).proposal is None


# --- scale_up_large / scale_up_small -----------------------------------------------------------------------


def test_scale_up_large_adds_four_cores_capped_at_48() -> None:
    """Wait +25 % (inclusive): 16→20, 46→48 (cap), 48 and 64 stay (the cap never lowers)."""
    t = topology(
        ("east", [host("A", 2, 16, 2400), host("B", 2, 46, 2400)]),
        ("west", [host("C", 2, 48, 2400), host("D", 2, 64, 2400)]),
    )
    p = _propose(1.0, 125.0, topo=t)
    assert p.rule == "scale_up_large"
    assert _groups(p.topology, "cores") == [20, 48, 48, 64]
    assert "+4 cores per host (cap 48)" in p.reason


def test_scale_up_small_adds_two_cores_capped_at_32() -> None:
    """Wait +10 % (inclusive, below +25 %): 16→18, 31→32, 32 stays, 8→10."""
    t = topology(
        ("east", [host("A", 2, 16, 2400), host("B", 2, 31, 2400), host("E", 1, 32, 2000)]),
        ("west", [host("C", 3, 8, 3000)]),
    )
    p = _propose(1.0, 110.0, topo=t)
    assert p.rule == "scale_up_small"
    assert _groups(p.topology, "cores") == [18, 32, 32, 10]
    p = _propose(1.0, 124.9, topo=t)
    assert p.rule == "scale_up_small"


def test_scale_up_caps_from_settings() -> None:
    """max_core_count and small_step_core_cap come from the settings."""
    s = OptimizerSettings(max_core_count=18, small_step_core_cap=17)
    assert _groups(_propose(1.0, 200.0, settings=s).topology, "cores") == [18, 32, 12]
    assert _groups(_propose(1.0, 115.0, settings=s).topology, "cores") == [17, 32, 10]


def test_scale_up_small_at_cap_maintains() -> None:
    """Every group at or over 32 cores with the wait +15 %: the +2 rule is skipped, nothing else matches."""
    t = topology(("c", [host("A", 2, 32, 2400), host("B", 2, 40, 2400)]))
    d = decide(context(t, outcome(1.0, 115.0)), S)
    assert d.proposal is None
    assert "scale_up_small skipped" in d.note


def test_wait_below_ten_percent_maintains() -> None:
    """Wait +9.9 %: maintain."""
    assert decide(context(out=outcome(1.0, 109.9)), S).proposal is None


def test_runtime_target_drives_the_performance_rules() -> None:
    """Without a wait target, the mean runtime target is the performance side: +30 % → +4 cores."""
    slo = Slo(energy_kwh_per_window=1.0, task_runtime_mean_s=100.0)
    ctx = context(out=outcome(1.0, None, task_runtime_mean_s=130.0), slo=slo)
    p = decide(ctx, S).proposal
    assert p is not None
    assert p.rule == "scale_up_large"


# --- consolidate -------------------------------------------------------------------------------------------


def test_consolidate_removes_two_cores_floor_8() -> None:
    """Energy −20 % and wait −10 % (both inclusive): 16→14, 32→30, 8 stays, 9→8."""
    t = topology(
        ("east", [host("A", 2, 16, 2400), host("B", 2, 32, 2000)]),
        ("west", [host("C", 3, 8, 3000), host("D", 1, 9, 3000)]),
    )
    p = _propose(0.8, 90.0, topo=t)
    assert p.rule == "consolidate"
    assert _groups(p.topology, "cores") == [14, 30, 8, 8]
    assert "−2 cores per host (floor 8)" in p.reason


def test_consolidate_needs_both_sides_under() -> None:
    """Energy −50 % but wait only −5 %, or no performance SLO at all: maintain."""
    assert decide(context(out=outcome(0.5, 95.0)), S).proposal is None
    d = decide(context(out=outcome(0.5, None), slo=Slo(energy_kwh_per_window=1.0)), S)
    assert d.proposal is None
    d = decide(context(out=outcome(0.79, 89.0)), S)
    assert d.proposal is not None


def test_consolidate_keeps_a_group_able_to_run_the_largest_task() -> None:
    """max_task_cores 32: B (32 cores) stays, D (2 CPUs × 17 = 34 cores) goes to 16 (32 cores), A 16→14."""
    t = topology(("c", [host("A", 2, 16, 2400), host("B", 2, 32, 2000), host("D", 1, 17, 2000, cpus=2)]))
    p = _propose(0.5, 10.0, topo=t, max_task_cores=32)
    assert _groups(p.topology, "cores") == [14, 32, 16]
    assert p.topology.clusters[0].hosts[2].cpu.cores == 32


def test_consolidate_floor_from_settings() -> None:
    """min_core_count=15: 16→15 (not 14), 32→30."""
    s = OptimizerSettings(min_core_count=15, small_step_core_cap=32)
    assert _groups(_propose(0.5, 10.0, settings=s).topology, "cores") == [15, 30, 8]


# --- order, sides, determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("energy", "wait", "rule"),
    [
        (1.4, 130.0, "massive_downscale"),
        (1.2, 130.0, "reduce_frequency"),
        (1.1, 130.0, "scale_up_large"),
        (1.1, 112.0, "scale_up_small"),
        (0.7, 50.0, "consolidate"),
    ],
)
def test_first_match_wins(energy: float, wait: float, rule: str) -> None:
    """When several rules match, the earliest in RULES applies."""
    assert _propose(energy, wait).rule == rule


def test_energy_side_uses_the_worst_of_energy_peak_and_carbon() -> None:
    """Energy −30 % but peak power +35 %: the energy side is +35 % → massive downscale."""
    slo = Slo(energy_kwh_per_window=1.0, peak_power_w=1000.0, task_wait_p95_s=100.0)
    p = decide(context(out=outcome(0.7, 50.0, peak=1350.0), slo=slo), S).proposal
    assert p is not None
    assert p.rule == "massive_downscale"
    carbon = Slo(carbon_g_per_window=100.0)
    p = decide(context(out=outcome(0.1, None, carbon_g=120.0), slo=carbon), S).proposal
    assert p is not None
    assert p.rule == "reduce_frequency"


def test_same_named_host_specs_are_told_apart_by_position() -> None:
    """Two host specs named X in one cluster (3 and 1 hosts): the first loses a host, the second keeps its one."""
    t = topology(("c", [host("X", 3, 16, 2400), host("X", 1, 16, 2400)]))
    p = _propose(1.5, topo=t)
    assert _groups(p.topology, "count") == [2, 1]


def test_decisions_are_deterministic_and_patch_reproduces_topology() -> None:
    """Same context → equal proposals; apply_patch(topology, proposal.patch) gives the proposed topology."""
    ctx = context(out=outcome(1.2))
    a, b = decide(ctx, S), decide(ctx, S)
    assert a == b
    assert a.proposal is not None
    assert apply_patch(ctx.topology, a.proposal.patch) == a.proposal.topology
    doc = a.proposal.to_json_dict()
    assert doc["rule"] == "reduce_frequency"
    assert doc["changes"][0] == {
        "path": "clusters[east].hosts[A].cpu.coreSpeed",
        "before": 2400.0,
        "after": 2160.0,
    }


async def test_rules_strategy_propose() -> None:
    """RulesStrategy.propose returns decide's proposal (None when maintaining)."""
    strategy = RulesStrategy(S)
    assert strategy.name == "rules"
    p = await strategy.propose(context(out=outcome(1.3)))
    assert p == decide(context(out=outcome(1.3)), S).proposal
    assert await strategy.propose(context()) is None
    await strategy.aclose()


# --- bounds for any proposal -------------------------------------------------------------------------------


def test_rule_proposals_are_within_bounds() -> None:
    """Every rule's proposal passes bound_violations."""
    for energy, wait in [(1.4, 100.0), (1.2, 100.0), (1.0, 130.0), (1.0, 112.0), (0.7, 50.0)]:
        ctx = context(out=outcome(energy, wait), max_task_cores=32)
        p = decide(ctx, S).proposal
        assert p is not None
        assert bound_violations(ctx, p.topology, S) == []


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"clusters[east].hosts[A].count": 5}, "hosts[A].count: 5 is above the cap 4"),
        (
            {"clusters[east].hosts[A].cpu.coreSpeed": 2500},
            "hosts[A].cpu.coreSpeed: 2500 is above the cap 2400",
        ),
        ({"cpu.coreCount": 50}, "hosts[A].cpu.coreCount: 50 is above the cap 48"),
        ({"clusters[west].hosts[C].cpu.coreCount": 6}, "hosts[C].cpu.coreCount: 6 is below the floor 8"),
        ({"clusters[east].hosts[A].cpu.coreSpeed": 1700}, "coreSpeed: 1700 is below the floor 1800"),
        ({"cpuPowerModel.calibrationFactor": 2}, "cpuPowerModel.calibrationFactor: not an optimizer knob"),
        ({"clusters[east].hosts[B].cpu.coreCount": 24}, "no host spec left with 32 cores"),
    ],
)
def test_bound_violations(patch: dict[str, float], fragment: str) -> None:
    """Raising above a cap, lowering below a floor, a non-knob leaf, stranding the largest task: reported."""
    ctx = context(max_task_cores=32)
    bad = bound_violations(ctx, apply_patch(ctx.topology, patch), S)
    assert any(fragment in b for b in bad), bad


def test_bounds_use_the_physical_topology_and_judge_only_the_direction_of_change() -> None:
    """With a physical topology of 6 A hosts, 4→6 is fine and 4→7 is not; a 64-core group lowered to 56 is
    fine (a decrease, above the floor) though above the cap; a physical topology of another shape is ignored."""
    physical = topology(
        ("east", [host("A", 6, 16, 2600), host("B", 2, 32, 2000)]), ("west", [host("C", 3, 8, 3000)])
    )
    ctx = context(physical=physical)
    ok = apply_patch(
        ctx.topology, {"clusters[east].hosts[A].count": 6, "clusters[east].hosts[A].cpu.coreSpeed": 2600}
    )
    assert bound_violations(ctx, ok, S) == []
    assert bound_violations(ctx, apply_patch(ctx.topology, {"clusters[east].hosts[A].count": 7}), S)
    big = topology(("c", [host("Z", 1, 64, 2400)]))
    assert bound_violations(context(big), apply_patch(big, {"cpu.coreCount": 56}), S) == []
    other = context(physical=topology(("x", [host("A", 99, 16, 9999)])))
    assert bound_violations(other, apply_patch(other.topology, {"clusters[east].hosts[A].count": 5}), S)
