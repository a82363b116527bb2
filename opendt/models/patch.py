"""Dotted topology patches: ``{"cpu.coreSpeed": 2800, "clusters[demo].hosts[B].count": 10}`` → a new topology.

The one grammar of dotted host parameters, shared by patches (what-if, optimizer) and calibration axes
(:mod:`opendt.calibration.space`). A path is ``[clusters[NAME].][hosts[NAME].]<leaf>``:

* without a prefix it applies to every host spec of every cluster; ``clusters[NAME].`` restricts it to one
  cluster, ``hosts[NAME].`` to the host specs of that name (in every cluster, or in the named one);
* ``<leaf>`` is one of :data:`PATCH_LEAVES`: the calibration leaves (:data:`LEAVES`: ``cpu.coreSpeed``,
  ``cpuPowerModel.*``) plus the structural ones (:data:`STRUCTURAL`: (``count``, ``cpu.coreCount``,
  ``cpu.count``, ``memory.memorySize``), which a what-if or an optimizer proposal may change (a calibration
  may not: it warm-starts placement);
* a value replaces the host spec's value (absolute, not relative); paths are applied in the mapping's order,
  so a later, narrower path overrides an earlier, wider one.

The result is validated like any topology (:func:`~opendt.models.topology.parse_topology`, plus
:func:`missing_parameters`); any problem raises :class:`PatchError` naming the path
and value. :func:`topology_diff` gives the patchable values that differ between two topologies of the same
shape, as fully prefixed paths (what the API shows as "diff vs current").
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opendt.models.bounds import INT64_MAX, shown
from opendt.models.topology import Host, Topology, TopologyError, parse_topology

LEAVES: dict[str, type] = {
    "cpuPowerModel.calibrationFactor": float,
    "cpuPowerModel.idlePower": float,
    "cpuPowerModel.maxPower": float,
    "cpuPowerModel.power": float,
    "cpuPowerModel.asymUtil": float,
    "cpuPowerModel.modelType": str,
    "cpu.coreSpeed": float,
}
"""The leaves that leave placement alone (what a calibration may set)."""
STRUCTURAL: dict[str, type] = {
    "count": int,
    "cpu.coreCount": int,
    "cpu.count": int,
    "memory.memorySize": float,
}
"""The leaves that change placement (a what-if or an optimizer proposal may set them; a calibration may
not)."""
PATCH_LEAVES: dict[str, type] = {**LEAVES, **STRUCTURAL}
"""Every leaf a patch may set, with its kind (int leaves accept integral floats such as 12.0)."""

PatchValue = float | int | str
_PATH = re.compile(
    r"^(?:clusters\[(?P<cluster>[^\]]+)\]\.)?(?:hosts\[(?P<host>[^\]]+)\]\.)?(?P<leaf>[A-Za-z.]+)$"
)


class PatchError(ValueError):
    """A patch that cannot be applied; the message names the bad path and value (or the invalid result)."""


@dataclass(frozen=True)
class PatchPath:
    """A parsed path: the leaf and the optional cluster / host-spec name restricting it."""

    path: str
    leaf: str
    cluster: str | None
    host: str | None


@dataclass(frozen=True)
class Change:
    """One patchable value that differs: fully prefixed ``path``, its ``leaf``, the value ``before`` and
    ``after``."""

    path: str
    leaf: str
    before: PatchValue
    after: PatchValue


def parse_path(path: str, *, noun: str = "parameter") -> PatchPath:
    """Parse ``path``; :class:`PatchError` for a malformed path or an unknown leaf (named a ``noun``)."""
    m = _PATH.match(path.strip())
    if m is None:
        raise PatchError(f"{path!r}: not a path of the form [clusters[NAME].][hosts[NAME].]<leaf>")
    leaf = m.group("leaf")
    if leaf not in PATCH_LEAVES:
        raise PatchError(f"{path!r}: unknown {noun} {leaf!r} (known: {', '.join(PATCH_LEAVES)})")
    return PatchPath(path, leaf, m.group("cluster"), m.group("host"))


def coerce_value(path: str, leaf: str, value: object) -> PatchValue:
    """``value`` as the leaf's kind; raises :class:`PatchError` naming ``path`` when it is not one."""
    kind = PATCH_LEAVES[leaf]
    if kind is str:
        if not isinstance(value, str):
            raise PatchError(f"{path!r}: {repr(value)[:100]} is not a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PatchError(f"{path!r}: {repr(value)[:100]} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise PatchError(f"{path!r}: {value!r} is not finite")
    if isinstance(value, int) and abs(value) > INT64_MAX:  # the model bounds the rest, naming the field
        raise PatchError(f"{path!r}: {shown(value)} is out of range")
    if kind is int:
        if value != int(value):
            raise PatchError(f"{path!r}: {value!r} is not an integer")
        return int(value)
    return float(value)


def targets(topology: Topology, p: PatchPath) -> list[tuple[int, int]]:
    """(cluster index, host index) of every host spec ``p`` applies to; raises :class:`PatchError` for a
    cluster or host name that the topology does not have."""
    clusters = [ci for ci, c in enumerate(topology.clusters) if p.cluster is None or c.name == p.cluster]
    if not clusters:
        names = ", ".join(c.name for c in topology.clusters)
        raise PatchError(f"{p.path!r}: no cluster named {p.cluster!r} (clusters: {names})")
    out = [
        (ci, hi)
        for ci in clusters
        for hi, h in enumerate(topology.clusters[ci].hosts)
        if p.host is None or h.name == p.host
    ]
    if not out:
        names = ", ".join(sorted({h.name for ci in clusters for h in topology.clusters[ci].hosts}))
        where = f"cluster {p.cluster!r}" if p.cluster is not None else "any cluster"
        raise PatchError(f"{p.path!r}: no host spec named {p.host!r} in {where} (hosts: {names})")
    return out


def leaf_value(host: Host, leaf: str) -> PatchValue:
    """The host spec's value of ``leaf`` (OpenDC's default when the document does not set it)."""
    obj: Any = host
    for part in leaf.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, bool) or not isinstance(
        obj, int | float | str
    ):  # pragma: no cover - leaves are scalar
        raise TypeError(f"{leaf} is not a scalar leaf")
    return obj


def set_leaf(host_doc: dict[str, Any], host: Host, leaf: str, value: PatchValue) -> None:
    if "." not in leaf:
        host_doc[leaf] = value
        return
    section, key = leaf.split(".")
    if section not in host_doc:  # seed a defaulted section with its values, so the change keeps them
        host_doc[section] = getattr(host, section).model_dump(mode="json", exclude_unset=True)
    host_doc[section][key] = value


REQUIRED = {"mse": ("calibrationFactor",), "constant": ("power",), "asymptotic": ("asymUtil",)}
"""The power-model parameters each model type needs set."""


def missing_parameters(topology: Topology) -> str:
    """Why the power models of ``topology`` cannot run as written ('' when they can)."""
    for cluster in topology.clusters:
        for host in cluster.hosts:
            pm = host.cpuPowerModel
            for need in REQUIRED.get(pm.modelType, ()):
                if need not in pm.model_fields_set:
                    return (
                        f"clusters[{cluster.name}].hosts[{host.name}]: modelType {pm.modelType} needs "
                        f"{need}, which is not set"
                    )
    return ""


def document_value(host_doc: dict[str, Any], leaf: str) -> Any:
    """The value a host spec's JSON document sets for ``leaf`` (None when it leaves it to the default)."""
    if "." not in leaf:
        return host_doc.get(leaf)
    section, key = leaf.split(".")
    return host_doc.get(section, {}).get(key)


def apply_patch(topology: Topology, patch: Mapping[str, PatchValue]) -> Topology:
    """``topology`` with every ``path: value`` of ``patch`` set, validated; ``topology`` is not modified.

    Raises :class:`PatchError` for a malformed path, an unknown leaf, cluster or host name, a value of the
    wrong kind, or a result that is not a valid, runnable topology (the message names the patch).
    """
    doc = copy.deepcopy(topology.to_json_dict())
    for path, raw in patch.items():
        p = parse_path(path)
        value = coerce_value(path, p.leaf, raw)
        for ci, hi in targets(topology, p):
            set_leaf(doc["clusters"][ci]["hosts"][hi], topology.clusters[ci].hosts[hi], p.leaf, value)
    shown = json.dumps(dict(patch))
    try:
        result = parse_topology(doc, source="patched")
    except TopologyError as e:
        raise PatchError(f"patch {shown} makes an invalid topology: {e}") from None
    reason = missing_parameters(result)
    if reason:
        raise PatchError(f"patch {shown} makes a topology OpenDC cannot run: {reason}")
    return result


def host_path(cluster: str, host: str, leaf: str) -> str:
    """The fully prefixed path of ``leaf`` of one host spec."""
    return f"clusters[{cluster}].hosts[{host}].{leaf}"


def topology_diff(before: Topology, after: Topology) -> list[Change]:
    """The patchable values that differ, per host spec, as fully prefixed paths (cluster order, host order,
    :data:`PATCH_LEAVES` order). Both topologies must have the same clusters and host specs (a patch never
    adds or removes one); raises :class:`PatchError` otherwise."""
    shape_a = [(c.name, [h.name for h in c.hosts]) for c in before.clusters]
    shape_b = [(c.name, [h.name for h in c.hosts]) for c in after.clusters]
    if shape_a != shape_b:
        raise PatchError(f"topologies of different shapes cannot be diffed: {shape_a} vs {shape_b}")
    out = []
    for ca, cb in zip(before.clusters, after.clusters, strict=True):
        for ha, hb in zip(ca.hosts, cb.hosts, strict=True):
            for leaf in PATCH_LEAVES:
                a, b = leaf_value(ha, leaf), leaf_value(hb, leaf)
                if a != b:
                    out.append(Change(host_path(ca.name, ha.name, leaf), leaf, a, b))
    return out
