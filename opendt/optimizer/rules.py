"""The rule-based strategy, the context every strategy gets, proposals, and the bounds a proposal respects.

**Deltas.** The *energy delta* of a window is the worst (largest) relative delta ``(value − target) / target``
of the energy-side SLOs that are set and measured (energy per window, peak power, carbon); the *performance
delta* the worst of the performance side (mean task runtime, task wait p95). A side with no such SLO has no
delta, and rules that need it do not match.

**Rules**, in order; the first one that matches *and changes something* wins:

1. ``massive_downscale``: energy delta ≥ +30 % → fewer hosts per host group, floor ``min_host_count``: with
   ``downscale: one_host`` one fewer (the earlier design); with ``to_slo`` (default) ``floor(count / (1 +
   delta))``, at least one fewer — one host of a 100-host group saves ~1 % of idle power, far from a 30 %
   excess;
2. ``reduce_frequency``: energy delta ≥ +15 % → coreSpeed × ``core_speed_factor``, floor
   ``min_core_speed_mhz``;
3. ``scale_up_large``: performance delta ≥ +25 % → +4 cores per host, cap ``max_core_count``;
4. ``scale_up_small``: performance delta ≥ +10 % → +2 cores per host, cap ``small_step_core_cap``;
5. ``consolidate``: energy delta ≤ −20 % and performance delta ≤ −10 % → −2 cores per host, floor
   ``min_core_count``.

Otherwise: maintain (no proposal). A host group is one host spec of one cluster; every rule applies to every
host group of every cluster. A bound never reverses a rule: a group already past a floor (cap) is left as it
is, never raised (lowered) to it. Consolidation also keeps a group that can run the window's largest task
(``OptimizerContext.max_task_cores``) able to.

**Bounds fall through**: a rule that matches but changes no group because every group is at its bound is
skipped (noted in the proposal's reason and in :attr:`Decision.note`) and the next rule is tried, so an energy
overshoot with every group at one host still lowers the frequency. Deterministic: same context, same answer.

**Search** (``search_steps`` > 0; the optimizer component runs it, :func:`downscale_ladder` builds it): when
an energy-side rule matches (energy delta ≥ +15 %), the rule's proposal is simulated together with a ladder
of host-count cuts (``downscale_search``: every group × f for ``search_steps`` fractions from ``1 / (1 +
delta)`` down to ``search_floor``), then with finer ladders between the last cut that misses the energy SLO
and the first that meets it, up to ``search_refinements`` times or until a cut meets every SLO. Under
OpenDC's utilization-based power models a slower clock barely saves energy (the same work at a higher
utilization), and how deep a cut can go before tasks queue past the wait SLO depends on the window's load,
which only a simulation tells; the component keeps the best-scoring candidate that meets every SLO (else
the best kept one).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from opendt.models.patch import Change, PatchValue, leaf_value, topology_diff
from opendt.models.topology import Host, Topology, parse_topology
from opendt.optimizer.scoring import WindowOutcome, deltas, side_delta
from opendt.optimizer.slo import ENERGY_FIELDS, PERFORMANCE_FIELDS, Slo
from opendt.settings import OptimizerSettings

KNOBS = ("count", "cpu.coreCount", "cpu.coreSpeed")
"""The leaves a strategy changes (the hardware description, power models included, is the calibrator's)."""

MASSIVE_DOWNSCALE_AT = 0.30
REDUCE_FREQUENCY_AT = 0.15
SCALE_UP_LARGE_AT = 0.25
SCALE_UP_SMALL_AT = 0.10
CONSOLIDATE_ENERGY_AT = -0.20
CONSOLIDATE_PERFORMANCE_AT = -0.10
_EPS = 1e-9  # thresholds are inclusive: 1.15 kWh against 1.0 is +15 % whatever the float rounding


@dataclass(frozen=True)
class OptimizerContext:
    """What a strategy decides from: one optimizer round."""

    topology: Topology
    """The twin's current simulated topology: what a proposal changes."""
    outcome: WindowOutcome
    """The baseline: the window (or trailing windows, per window) simulated with ``topology``."""
    slo: Slo
    window_start_ms: int
    window_end_ms: int
    physical: Topology | None = None
    """The measured datacenter's topology, when known: host counts and core speeds are never raised above it
    (above the current topology's when unknown or of another shape)."""
    max_task_cores: int | None = None
    """The largest ``cpu_count`` among the window's tasks: no proposal leaves no host able to run it."""
    stats: Mapping[str, Any] = field(default_factory=dict)
    """Free-form statistics of the window (tasks, fragments, utilization…), shown to the LLM."""


@dataclass(frozen=True)
class Proposal:
    """A proposed topology, the changes that make it from the context's topology, and why."""

    topology: Topology
    changes: tuple[Change, ...]
    reason: str
    rule: str
    """The rule's name, or ``"llm"``."""
    source: Literal["rules", "llm"]
    fallback_reason: str | None = None
    """Why the LLM was not used (``"llm: timeout after 2.0 s"``) when the rules stood in for it."""

    @property
    def patch(self) -> dict[str, PatchValue]:
        """The changes as a patch (fully prefixed paths) for :func:`~opendt.models.patch.apply_patch`.
        Exact unless two host specs of one cluster share a name and got different values."""
        return {c.path: c.after for c in self.changes}

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "source": self.source,
            "reason": self.reason,
            "fallback_reason": self.fallback_reason,
            "changes": [{"path": c.path, "before": c.before, "after": c.after} for c in self.changes],
            "topology": self.topology.to_json_dict(),
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> Proposal:
        """The inverse of :meth:`to_json_dict` (a change's ``leaf``: its path after the host spec's)."""
        cs = d["changes"]
        changes = (Change(c["path"], c["path"].split("].")[-1], c["before"], c["after"]) for c in cs)
        return cls(
            topology=parse_topology(d["topology"], source="proposal"),
            changes=tuple(changes),
            reason=d["reason"],
            rule=d["rule"],
            source=d["source"],
            fallback_reason=d.get("fallback_reason"),
        )


class Strategy(Protocol):
    """What the optimizer component calls: ``await strategy.propose(ctx)``; None means maintain."""

    name: str

    async def propose(self, ctx: OptimizerContext) -> Proposal | None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Decision:
    """The rules' answer: a proposal or None (maintain), and a note on what matched or was skipped."""

    proposal: Proposal | None
    note: str


Step = Callable[[Host, OptimizerSettings, int | None], PatchValue | None]
"""A rule's change to one host group: the new value of the rule's leaf, or None when at its bound."""


def _fewer_hosts(h: Host, s: OptimizerSettings, _: int | None) -> PatchValue | None:
    return h.count - 1 if h.count > s.min_host_count else None


def _slower(h: Host, s: OptimizerSettings, _: int | None) -> PatchValue | None:
    if h.cpu.coreSpeed <= s.min_core_speed_mhz:
        return None
    return max(round(h.cpu.coreSpeed * s.core_speed_factor, 3), s.min_core_speed_mhz)


def _more_cores(step: int, cap_of: Callable[[OptimizerSettings], int]) -> Step:
    def more(h: Host, s: OptimizerSettings, _: int | None) -> PatchValue | None:
        cap = cap_of(s)
        return min(h.cpu.coreCount + step, cap) if h.cpu.coreCount < cap else None

    return more


def _fewer_cores(h: Host, s: OptimizerSettings, max_task_cores: int | None) -> PatchValue | None:
    floor = s.min_core_count
    if max_task_cores is not None and h.cpu.cores >= max_task_cores:  # keep it able to run the largest task
        floor = max(floor, -(-max_task_cores // h.cpu.count))
    return max(h.cpu.coreCount - 2, floor) if h.cpu.coreCount > floor else None


def _pct(d: float) -> str:
    return f"{d * 100:+.1f} %"


Match = Callable[[float | None, float | None], str | None]
"""When a rule matches: (energy delta, performance delta) → why, or None."""


def _energy_at(at: float) -> Match:
    def match(energy: float | None, perf: float | None) -> str | None:
        if energy is not None and energy >= at - _EPS:
            return f"energy {_pct(energy)} vs SLO (≥ {_pct(at)})"
        return None

    return match


def _performance_at(at: float) -> Match:
    def match(energy: float | None, perf: float | None) -> str | None:
        if perf is not None and perf >= at - _EPS:
            return f"performance {_pct(perf)} vs SLO (≥ {_pct(at)})"
        return None

    return match


def _both_under(energy: float | None, perf: float | None) -> str | None:
    if energy is None or perf is None:
        return None
    if energy <= CONSOLIDATE_ENERGY_AT + _EPS and perf <= CONSOLIDATE_PERFORMANCE_AT + _EPS:
        return (
            f"energy {_pct(energy)} (≤ {_pct(CONSOLIDATE_ENERGY_AT)}) and performance {_pct(perf)} "
            f"(≤ {_pct(CONSOLIDATE_PERFORMANCE_AT)}) vs SLO"
        )
    return None


@dataclass(frozen=True)
class Rule:
    """A rule: when it matches, and the change it makes to each host group's ``leaf``."""

    name: str
    matches: Match
    leaf: str
    step: Step
    action: str
    """What the rule does, formatted with the settings as ``s``."""


RULES = (
    Rule(
        "massive_downscale",
        _energy_at(MASSIVE_DOWNSCALE_AT),
        "count",
        _fewer_hosts,
        "fewer hosts per group ({s.downscale}, floor {s.min_host_count})",
    ),
    Rule(
        "reduce_frequency",
        _energy_at(REDUCE_FREQUENCY_AT),
        "cpu.coreSpeed",
        _slower,
        "coreSpeed × {s.core_speed_factor:g} (floor {s.min_core_speed_mhz:g} MHz)",
    ),
    Rule(
        "scale_up_large",
        _performance_at(SCALE_UP_LARGE_AT),
        "cpu.coreCount",
        _more_cores(4, lambda s: s.max_core_count),
        "+4 cores per host (cap {s.max_core_count})",
    ),
    Rule(
        "scale_up_small",
        _performance_at(SCALE_UP_SMALL_AT),
        "cpu.coreCount",
        _more_cores(2, lambda s: s.small_step_core_cap),
        "+2 cores per host (cap {s.small_step_core_cap})",
    ),
    Rule(
        "consolidate",
        _both_under,
        "cpu.coreCount",
        _fewer_cores,
        "−2 cores per host (floor {s.min_core_count})",
    ),
)
"""The rules in priority order (see the module docstring)."""


def with_values(topology: Topology, values: Mapping[tuple[int, int], Mapping[str, PatchValue]]) -> Topology:
    """``topology`` with, per (cluster index, host index), leaves set (by position, so host specs sharing a
    name are told apart); validated."""
    doc = copy.deepcopy(topology.to_json_dict())
    for (ci, hi), leaves in values.items():
        host_doc = doc["clusters"][ci]["hosts"][hi]
        for leaf, v in leaves.items():
            if "." in leaf:
                section, key = leaf.split(".")
                host_doc.setdefault(section, {})[key] = v
            else:
                host_doc[leaf] = v
    return parse_topology(doc, source="proposal")


def decide(ctx: OptimizerContext, settings: OptimizerSettings) -> Decision:
    """Apply the rules to ``ctx`` (see the module docstring)."""
    d = deltas(ctx.outcome, ctx.slo)
    energy, perf = side_delta(d, ENERGY_FIELDS), side_delta(d, PERFORMANCE_FIELDS)
    skipped: list[str] = []
    for rule in RULES:
        why = rule.matches(energy, perf)
        if why is None:
            continue
        values: dict[tuple[int, int], dict[str, PatchValue]] = {}
        for ci, cluster in enumerate(ctx.topology.clusters):
            for hi, host in enumerate(cluster.hosts):
                v = rule.step(host, settings, ctx.max_task_cores)
                if v is not None and rule.name == "massive_downscale" and settings.downscale == "to_slo":
                    assert energy is not None  # the rule matched on it
                    v = max(settings.min_host_count, min(int(v), math.floor(host.count / (1 + energy))))
                if v is not None and v != leaf_value(host, rule.leaf):
                    values[(ci, hi)] = {rule.leaf: v}
        if not values:
            skipped.append(f"{rule.name} skipped: every host group is at its bound")
            continue
        topology = with_values(ctx.topology, values)
        action = rule.action.format(s=settings)
        reason = f"{rule.name}: {why} → {action}"
        if skipped:
            reason += f" ({'; '.join(skipped)})"
        changes = tuple(topology_diff(ctx.topology, topology))
        proposal = Proposal(topology, changes, reason, rule.name, "rules")
        return Decision(proposal, reason)
    shown = ", ".join(f"{k} {_pct(v)}" for k, v in d.items()) or "no SLO measured"
    note = f"maintain: {shown}"
    if skipped:
        note += f" ({'; '.join(skipped)})"
    return Decision(None, note)


def energy_rule_matched(ctx: OptimizerContext) -> str | None:
    """Why an energy-side rule (``massive_downscale`` or ``reduce_frequency``) matches ``ctx``, else None."""
    d = deltas(ctx.outcome, ctx.slo)
    energy = side_delta(d, ENERGY_FIELDS)
    return _energy_at(REDUCE_FREQUENCY_AT)(energy, None)


def ladder_fractions(top: float, bottom: float, steps: int) -> list[float]:
    """``steps`` fractions from ``top`` down to ``bottom``, evenly spaced, both ends included (one step:
    ``top``)."""
    if steps <= 0:
        return []
    if steps == 1:
        return [top]
    return [top - (top - bottom) * k / (steps - 1) for k in range(steps)]


def downscale_ladder(
    ctx: OptimizerContext, settings: OptimizerSettings, fractions: list[float], why: str
) -> list[tuple[float, Proposal]]:
    """The search's energy-side candidates (the ``downscale_search`` rule), each with its fraction: for each
    fraction ``f`` (in the given order), every host group scaled to ``floor(count × f)``, floor
    ``min_host_count``. Candidates that change nothing or repeat an earlier one are left out."""
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[float, Proposal]] = []
    for f in fractions:
        values: dict[tuple[int, int], dict[str, PatchValue]] = {}
        counts = []
        for ci, cluster in enumerate(ctx.topology.clusters):
            for hi, host in enumerate(cluster.hosts):
                n = min(host.count, max(settings.min_host_count, math.floor(host.count * f + _EPS)))
                counts.append(n)
                if n != host.count:
                    values[(ci, hi)] = {"count": n}
        key = tuple(counts)
        if not values or key in seen:
            continue
        seen.add(key)
        topology = with_values(ctx.topology, values)
        reason = f"downscale_search: {why} → hosts × {f:.3f} per group (floor {settings.min_host_count})"
        changes = tuple(topology_diff(ctx.topology, topology))
        out.append((f, Proposal(topology, changes, reason, "downscale_search", "rules")))
    return out


def _reference(ctx: OptimizerContext) -> Topology:
    phys = ctx.physical
    if phys is None:
        return ctx.topology
    shape = [(c.name, [h.name for h in c.hosts]) for c in ctx.topology.clusters]
    if [(c.name, [h.name for h in c.hosts]) for c in phys.clusters] != shape:
        return ctx.topology
    return phys


def bound_violations(ctx: OptimizerContext, proposed: Topology, settings: OptimizerSettings) -> list[str]:
    """What in ``proposed`` (same shape as ``ctx.topology``) breaks the optimizer's bounds: a changed leaf
    other than :data:`KNOBS`; a knob raised above its cap (``max_core_count``; host count and core speed:
    the physical topology's, see :attr:`OptimizerContext.physical`) or lowered below its floor
    (``min_host_count``, ``min_core_count``, ``min_core_speed_mhz``); no host spec left able to run the
    window's largest task when one could. Empty when the proposal is within bounds."""
    ref = _reference(ctx)
    out = [
        f"{c.path}: not an optimizer knob (knobs: {', '.join(KNOBS)})"
        for c in topology_diff(ctx.topology, proposed)
        if c.leaf not in KNOBS
    ]
    for ci, (cur_c, new_c) in enumerate(zip(ctx.topology.clusters, proposed.clusters, strict=True)):
        for hi, (cur, new) in enumerate(zip(cur_c.hosts, new_c.hosts, strict=True)):
            r = ref.clusters[ci].hosts[hi]
            where = f"clusters[{cur_c.name}].hosts[{cur.name}]"
            limits: dict[str, tuple[float, float]] = {
                "count": (settings.min_host_count, max(r.count, cur.count)),
                "cpu.coreCount": (settings.min_core_count, settings.max_core_count),
                "cpu.coreSpeed": (settings.min_core_speed_mhz, max(r.cpu.coreSpeed, cur.cpu.coreSpeed)),
            }
            for leaf, (lo, hi_) in limits.items():
                a, b = float(leaf_value(cur, leaf)), float(leaf_value(new, leaf))
                if b > a and b > hi_:
                    out.append(f"{where}.{leaf}: {b:g} is above the cap {hi_:g}")
                if b < a and b < lo:
                    out.append(f"{where}.{leaf}: {b:g} is below the floor {lo:g}")
    need = ctx.max_task_cores
    if need is not None:
        before = any(h.cpu.cores >= need for c in ctx.topology.clusters for h in c.hosts)
        after = any(h.cpu.cores >= need for c in proposed.clusters for h in c.hosts)
        if before and not after:
            out.append(f"no host spec left with {need} cores for the window's largest task")
    return out


class RulesStrategy:
    """The deterministic strategy: :func:`decide` with the settings' bounds."""

    name = "rules"

    def __init__(self, settings: OptimizerSettings) -> None:
        self.settings = settings

    def decide(self, ctx: OptimizerContext) -> Decision:
        return decide(ctx, self.settings)

    async def propose(self, ctx: OptimizerContext) -> Proposal | None:
        return decide(ctx, self.settings).proposal

    async def aclose(self) -> None:
        """Nothing to release (the protocol's counterpart of the LLM client's session)."""
