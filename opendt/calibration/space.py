"""The calibration search space: dotted host parameters, grids, successive refinement, up-front validation.

A parameter path is ``[clusters[NAME].][hosts[NAME].]<leaf>`` (the grammar of :mod:`opendt.models.patch`)
where ``<leaf>`` is one of :data:`~opendt.models.patch.LEAVES` (``cpuPowerModel.calibrationFactor``,
``cpuPowerModel.idlePower``, ``cpuPowerModel.maxPower``, ``cpuPowerModel.modelType``, ``cpu.coreSpeed``,
…). Without a prefix it applies to every host spec of every cluster. Structural parameters (host ``count``,
``cpu.coreCount``, ``memory.memorySize``) are refused: they change placement, which a warm start from the
twin's state cannot honour.

A candidate is the current topology with one value per axis substituted; it is validated before anything
runs: the pydantic :class:`~opendt.models.topology.Topology` rejects negative powers, maxPower < idlePower
and asymptotic without asymUtil > 0 (OpenDC hangs there);
:func:`~opendt.models.patch.missing_parameters` rejects a model type whose parameters the document does not
set (mse without calibrationFactor, constant without power).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opendt.calibration.settings import CalibrationAxis
from opendt.models.patch import (
    LEAVES,
    STRUCTURAL,
    PatchError,
    PatchPath,
    document_value,
    missing_parameters,
    parse_path,
    set_leaf,
    targets,
)
from opendt.models.topology import Topology, TopologyError, parse_topology

Value = float | str


class SearchSpaceError(ValueError):
    """The configured search space cannot be used; the message names the axis and the problem."""


@dataclass(frozen=True)
class Axis:
    path: str
    leaf: str
    cluster: str | None
    host: str | None
    points: tuple[Value, ...]
    scale: bool
    numeric: bool

    @property
    def parsed(self) -> PatchPath:
        return PatchPath(self.path, self.leaf, self.cluster, self.host)

    @property
    def bounds(self) -> tuple[float, float]:
        nums = [float(p) for p in self.points]
        return min(nums), max(nums)


@dataclass(frozen=True)
class Candidate:
    values: tuple[Value, ...]
    topology: Topology | None
    reason: str = ""
    """Why the candidate was rejected (``topology`` is None then)."""

    def params(self, axes: Sequence[Axis]) -> dict[str, Value]:
        return {a.path: v for a, v in zip(axes, self.values, strict=True)}


def parse_axis(spec: CalibrationAxis) -> Axis:
    try:
        path = parse_path(spec.parameter, noun="host parameter")
    except PatchError as e:
        raise SearchSpaceError(str(e)) from None
    leaf = path.leaf
    if leaf in STRUCTURAL:
        raise SearchSpaceError(
            f"{spec.parameter!r}: {leaf} is structural (changes placement); it cannot be calibrated from a "
            "warm start"
        )
    kind = LEAVES[leaf]
    points = spec.points()
    if kind is float:
        bad = [p for p in points if isinstance(p, str)]
        if bad:
            raise SearchSpaceError(f"{spec.parameter!r}: numeric parameter got non-numeric value(s) {bad}")
        if any(not math.isfinite(float(p)) for p in points):
            raise SearchSpaceError(f"{spec.parameter!r}: values must be finite")
        pts: tuple[Value, ...] = tuple(float(p) for p in points)
    else:
        if spec.linspace is not None or spec.scale:
            raise SearchSpaceError(
                f"{spec.parameter!r}: a categorical parameter takes values, not linspace/scale"
            )
        pts = tuple(str(p) for p in points)
    if len(set(pts)) != len(pts):
        raise SearchSpaceError(f"{spec.parameter!r}: duplicate values")
    return Axis(spec.parameter, leaf, path.cluster, path.host, pts, spec.scale, kind is float)


def parse_space(specs: Sequence[CalibrationAxis], topology: Topology) -> list[Axis]:
    """Parse and check every axis against ``topology`` (named clusters/hosts must exist)."""
    if not specs:
        raise SearchSpaceError("the search space has no axis")
    axes = [parse_axis(s) for s in specs]
    seen: set[tuple[str, str | None, str | None]] = set()
    for a in axes:
        key = (a.leaf, a.cluster, a.host)
        if key in seen:
            raise SearchSpaceError(f"{a.path!r}: the same parameter appears on two axes")
        seen.add(key)
        try:
            targets(topology, a.parsed)
        except PatchError as e:
            raise SearchSpaceError(f"{a.path!r}: matches no host in the topology ({e})") from None
    return axes


def _hosts(topology: Topology, doc: dict[str, Any], axis: Axis) -> list[tuple[int, int, dict[str, Any]]]:
    """(cluster index, host index, host document) of every host spec ``axis`` applies to."""
    return [(ci, hi, doc["clusters"][ci]["hosts"][hi]) for ci, hi in targets(topology, axis.parsed)]


def apply_values(
    current: Topology, physical: Topology, axes: Sequence[Axis], values: Sequence[Value]
) -> dict[str, Any]:
    """The topology document of ``current`` with ``values`` substituted (``scale`` axes × physical value)."""
    doc = copy.deepcopy(current.to_json_dict())
    phys = physical.to_json_dict()
    for axis, value in zip(axes, values, strict=True):
        for ci, hi, host in _hosts(current, doc, axis):
            v: Any = value
            if axis.scale:
                try:
                    base = document_value(phys["clusters"][ci]["hosts"][hi], axis.leaf)
                except (IndexError, KeyError):
                    base = None
                if base is None:
                    base = document_value(host, axis.leaf)
                if base is None:
                    raise SearchSpaceError(f"{axis.path!r}: scale needs a value in the topology to scale")
                v = float(base) * float(value)
            set_leaf(host, current.clusters[ci].hosts[hi], axis.leaf, v)
    return doc


def make_candidate(
    current: Topology, physical: Topology, axes: Sequence[Axis], values: Sequence[Value]
) -> Candidate:
    """Build and validate one candidate; a rejected one carries its reason and no topology."""
    try:
        doc = apply_values(current, physical, axes, values)
        topo = parse_topology(doc, source="candidate")
    except (TopologyError, SearchSpaceError) as e:
        return Candidate(tuple(values), None, str(e))
    reason = missing_parameters(topo)
    if reason:
        return Candidate(tuple(values), None, reason)
    return Candidate(tuple(values), topo)


def grid_points(axes: Sequence[Axis]) -> list[tuple[Value, ...]]:
    return list(itertools.product(*(a.points for a in axes)))


def current_values(current: Topology, physical: Topology, axes: Sequence[Axis]) -> tuple[Value, ...] | None:
    """The point of the space that ``current`` is (first matching host per axis), if every axis has one."""
    doc, phys = current.to_json_dict(), physical.to_json_dict()
    out: list[Value] = []
    for axis in axes:
        ci, hi, host = _hosts(current, doc, axis)[0]
        v = document_value(host, axis.leaf)
        if v is None:
            defaults = {"calibrationFactor": 1.0, "asymUtil": 0.0, "power": 400.0}
            v = defaults.get(axis.leaf.split(".")[1])
        if v is None:
            return None
        if axis.scale:
            base = document_value(phys["clusters"][ci]["hosts"][hi], axis.leaf)
            if not base:
                return None
            v = float(v) / float(base)
        out.append(float(v) if axis.numeric else str(v))
    return tuple(out)


@dataclass
class Refiner:
    """Successive refinement: around the best point, each numeric axis gets ``points`` values spanning ±half
    the previous spacing (clipped to the axis bounds); categorical axes stay at the best value."""

    axes: Sequence[Axis]
    points: int
    spacing: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        for a in self.axes:
            nums = sorted(float(p) for p in a.points) if a.numeric else []
            gaps = [hi - lo for lo, hi in itertools.pairwise(nums) if hi > lo]
            self.spacing.append(min(gaps) if gaps else 0.0)

    def next_points(self, best: Sequence[Value]) -> list[tuple[Value, ...]]:
        per_axis: list[list[Value]] = []
        new_spacing = []
        for axis, b, sp in zip(self.axes, best, self.spacing, strict=True):
            if not axis.numeric or sp == 0.0:
                per_axis.append([b])
                new_spacing.append(0.0)
                continue
            lo, hi = axis.bounds
            half = sp / 2.0
            n = self.points
            vals = sorted(
                {round(min(hi, max(lo, float(b) - half + i * (2 * half) / (n - 1))), 10) for i in range(n)}
            )
            per_axis.append(list(vals))
            new_spacing.append(2 * half / (n - 1))
        self.spacing = new_spacing
        return list(itertools.product(*per_axis))


def describe(params: dict[str, Value]) -> str:
    return json.dumps(params, sort_keys=False)
