"""The trust-region search space: numeric host parameters searched around the values in effect.

A point of the region is one factor per axis: every host spec the axis matches gets its value in effect
times that factor (heterogeneous hosts stay heterogeneous; the values are physical, in the topology's units).
A step evaluates the ``3^n`` points ``centre × (1 + {−r, 0, +r})`` per axis (``r`` = the axis radius); the
best point becomes the centre; an axis whose best value sits on the region's edge doubles its radius (up to
``max_radius``), any other axis halves it (down to ``min_radius``). The radii carry from round to round, so
a region that kept narrowing around a settled value widens again, step by step, when the datacenter moves.

Bounds come from physics, never from the initial topology: every value finite, ``0 ≤ idlePower <
maxPower``, ``power ≥ 0``, ``calibrationFactor ≥ 1`` (below 1 the mse model draws less than idle at low
load), ``asymUtil > 0``, ``coreSpeed > 0``. A point outside them is rejected with the reason (never run).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opendt.calibration.settings import TrustAxis
from opendt.calibration.space import Axis, Candidate, SearchSpaceError, current_values
from opendt.models.bounds import out_of_bounds
from opendt.models.patch import (
    LEAVES,
    STRUCTURAL,
    PatchError,
    document_value,
    missing_parameters,
    parse_path,
    set_leaf,
    targets,
)
from opendt.models.topology import Topology, TopologyError, parse_topology

Factors = tuple[float, ...]
LOWER: dict[str, tuple[float, bool]] = {
    "cpuPowerModel.idlePower": (0.0, True),
    "cpuPowerModel.maxPower": (0.0, False),
    "cpuPowerModel.power": (0.0, True),
    "cpuPowerModel.calibrationFactor": (1.0, True),
    "cpuPowerModel.asymUtil": (0.0, False),
    "cpu.coreSpeed": (0.0, False),
}
"""Physical lower bound of each numeric leaf and whether it is included."""


@dataclass(frozen=True)
class Region:
    axes: tuple[Axis, ...]
    radius0: tuple[float, ...]
    min_radius: tuple[float, ...]
    max_radius: tuple[float, ...]


def parse_region(specs: Sequence[TrustAxis], topology: Topology) -> Region:
    """Parse and check the trust-region axes against ``topology`` (numeric, non-structural, matching)."""
    if not specs:
        raise SearchSpaceError("the trust region has no axis")
    axes: list[Axis] = []
    seen: set[tuple[str, str | None, str | None]] = set()
    for spec in specs:
        try:
            path = parse_path(spec.parameter, noun="host parameter")
        except PatchError as e:
            raise SearchSpaceError(str(e)) from None
        if path.leaf in STRUCTURAL or LEAVES.get(path.leaf) is not float:
            raise SearchSpaceError(
                f"{spec.parameter!r}: a trust-region axis must be a numeric power/speed leaf"
            )
        key = (path.leaf, path.cluster, path.host)
        if key in seen:
            raise SearchSpaceError(f"{spec.parameter!r}: the same parameter appears on two axes")
        seen.add(key)
        try:
            targets(topology, path)
        except PatchError as e:
            raise SearchSpaceError(f"{spec.parameter!r}: matches no host in the topology ({e})") from None
        axes.append(Axis(spec.parameter, path.leaf, path.cluster, path.host, (), False, True))
    return Region(
        tuple(axes),
        tuple(s.radius for s in specs),
        tuple(s.min_radius for s in specs),
        tuple(s.max_radius for s in specs),
    )


def physical_reason(leaf: str, value: float) -> str:
    """Why ``value`` is impossible for ``leaf`` ("" when it is possible)."""
    if not math.isfinite(value):
        return f"{leaf} must be finite"
    lo, inclusive = LOWER.get(leaf, (-math.inf, True))
    if value < lo or (value == lo and not inclusive):
        return f"{leaf} must be {'>=' if inclusive else '>'} {lo:g}, not {value:.6g}"
    return out_of_bounds(leaf, value)  # the model's bounds (opendt.models.bounds)


def scaled(current: Topology, axes: Sequence[Axis], factors: Sequence[float]) -> Candidate:
    """``current`` with every matched host value times its axis factor, checked against physics; the
    candidate's ``values`` are the first matched host's new values (physical units)."""
    doc: dict[str, Any] = copy.deepcopy(current.to_json_dict())
    for axis, f in zip(axes, factors, strict=True):
        have = [(ci, hi) for ci, hi in targets(current, axis.parsed)
                if document_value(doc["clusters"][ci]["hosts"][hi], axis.leaf) is not None]  # fmt: skip
        if not have:  # hosts whose model does not use the parameter (linear: no factor) are left alone
            return Candidate(tuple(factors), None, f"{axis.path}: no value in effect to search around")
        for ci, hi in have:
            host = doc["clusters"][ci]["hosts"][hi]
            v = document_value(host, axis.leaf)
            new = float(v) * float(f)
            reason = physical_reason(axis.leaf, new)
            if reason:
                return Candidate(tuple(factors), None, reason)
            set_leaf(host, current.clusters[ci].hosts[hi], axis.leaf, new)
    for cl in doc["clusters"]:
        for host in cl["hosts"]:
            pm = host.get("cpuPowerModel") or {}
            idle, mx = pm.get("idlePower"), pm.get("maxPower")
            if idle is not None and mx is not None and not float(idle) < float(mx):
                return Candidate(tuple(factors), None, f"idlePower {idle:.6g} must be < maxPower {mx:.6g}")
    try:
        topo = parse_topology(doc, source="candidate")
    except TopologyError as e:
        return Candidate(tuple(factors), None, str(e))
    reason = missing_parameters(topo)
    if reason:
        return Candidate(tuple(factors), None, reason)
    vals = current_values(topo, topo, axes)
    return Candidate(tuple(factors) if vals is None else vals, topo)


def step_points(centre: Factors, radius: Sequence[float]) -> list[Factors]:
    """The ``3^n`` points of one step (the centre first), factors rounded to 12 digits (stable keys)."""
    per_axis = [[c * (1.0 - r), c, c * (1.0 + r)] for c, r in zip(centre, radius, strict=True)]
    pts = [tuple(round(v, 12) for v in p) for p in itertools.product(*per_axis)]
    mid = tuple(round(c, 12) for c in centre)
    return [mid, *[p for p in pts if p != mid]]


def resize(region: Region, centre: Factors, best: Factors, radius: Sequence[float]) -> tuple[float, ...]:
    """The radii after a step from ``centre`` whose best point is ``best``: double on the edge, else halve."""
    out = []
    for c, b, r, lo, hi in zip(centre, best, radius, region.min_radius, region.max_radius, strict=True):
        on_edge = c != 0 and abs(abs(b / c - 1.0) - r) <= 1e-9 * max(1.0, r)
        out.append(min(hi, r * 2.0) if on_edge else max(lo, r / 2.0))
    return tuple(out)


def describe_region(
    axes: Sequence[Axis], values: Sequence[Any], radius: Sequence[float]
) -> dict[str, dict[str, float]]:
    """The region around ``values`` in physical units: per axis ``radius``, ``lo`` and ``hi``."""
    out: dict[str, dict[str, float]] = {}
    for a, v, r in zip(axes, values, radius, strict=True):
        if not isinstance(v, int | float):
            continue
        lo = float(v) * (1.0 - r)
        floor, _ = LOWER.get(a.leaf, (-math.inf, True))
        out[a.path] = {
            "radius": round(r, 6),
            "lo": round(max(lo, floor), 6),
            "hi": round(float(v) * (1 + r), 6),
        }
    return out
