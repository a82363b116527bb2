"""What the data can tell apart, and the physical prior inside it.

From one site-level power series the power-model axes are not identifiable one by one (a higher idle power and
a lower maximum fit as well as the reverse), so among the candidates of a round:

* the **indistinguishable set** is every scored candidate whose score is within the noise threshold of the
  best one's: its gain over it would not have been applied (the acceptance rule of
  :mod:`~opendt.calibration.rounds`: ``significance`` paired standard errors of what the meter noise
  explains, at least ``hysteresis`` × the noise estimate, and the relative ``margin``);
* per numeric axis, the **interval** of its values over that set is what the round reports: a narrow one is a
  parameter the data pins down, a wide one a parameter it leaves free;
* inside the set the calibrator picks the candidate minimising ``score + prior_weight × τ × d``: ``τ`` the
  round's noise threshold (the gain the best needs over the values in effect: the score unit the data
  resolves), ``d`` the distance from the physical topology's
  values, ``Σ |ln(value / physical value)|`` over the numeric axes. So a parameter leaves the physical
  topology's value only as far as the data demands, and goes back toward it when the data stops demanding it
  (``prior_weight`` 0: the best score, the behaviour before the prior). A power model of another type than
  the physical topology's (``calibration.model_types``: the trust region's rounds also score the current
  topology with each of them, as multi-model work on OpenDC does, M3SA) counts :data:`TYPE_DISTANCE` more:
  the type changes when the data shows the believed type's shape cannot follow the meter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opendt.calibration.space import Axis, Value
from opendt.models.topology import Topology


@dataclass(frozen=True)
class Member:
    """A candidate of the indistinguishable set: its key, values (physical units), score and distance."""

    key: Any
    values: tuple[Value, ...]
    score: float
    distance: float


def distance(values: Sequence[Value], physical: Sequence[Value] | None) -> float:
    """``Σ |ln(v / p)|`` over the numeric axes where both are positive (0 without physical values)."""
    if physical is None:
        return 0.0
    d = 0.0
    for v, p in zip(values, physical, strict=True):
        if isinstance(v, int | float) and isinstance(p, int | float) and v > 0 and p > 0:
            d += abs(math.log(float(v) / float(p)))
    return d


TYPE_DISTANCE = 1.0
"""The distance of a power model of another type than the physical topology's (as far as a parameter × e)."""


def type_distance(topology: Topology, physical: Topology) -> float:
    """:data:`TYPE_DISTANCE` when a host spec's model type differs from the physical one's (by index)."""
    for c, pc in zip(topology.clusters, physical.clusters, strict=False):
        for h, ph in zip(c.hosts, pc.hosts, strict=False):
            if h.cpuPowerModel.modelType != ph.cpuPowerModel.modelType:
                return TYPE_DISTANCE
    return 0.0


def objective(m: Member, weight: float, tau: float) -> float:
    return m.score + weight * tau * m.distance


def preferred(members: Sequence[Member], weight: float, tau: float) -> Member:
    """The member with the lowest objective (the first of equals: members come in evaluation order)."""
    best = members[0]
    for m in members[1:]:
        if objective(m, weight, tau) < objective(best, weight, tau):
            best = m
    return best


def intervals(
    axes: Sequence[Axis],
    members: Sequence[Member],
    best: Member,
    chosen: Member,
    physical: Sequence[Value] | None,
) -> dict[str, dict[str, float]]:
    """Per numeric axis: ``lo`` / ``hi`` over the set, the ``best`` and ``chosen`` values and the physical
    topology's (all in the axis's unit; a scale axis's are factors of the physical value)."""
    out: dict[str, dict[str, float]] = {}
    for i, a in enumerate(axes):
        vals = [float(m.values[i]) for m in members if isinstance(m.values[i], int | float)]
        if not a.numeric or not vals:
            continue
        doc = {"lo": min(vals), "hi": max(vals)}
        for name, src in (("best", best.values), ("chosen", chosen.values), ("physical", physical)):
            if src is not None and isinstance(src[i], int | float):
                doc[name] = float(src[i])
        out[a.path] = {k: round(v, 6) for k, v in doc.items()}
    return out
