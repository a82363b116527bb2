"""The engine's view of a topology (:class:`TopoSpec`) and a fast strict parse of OpenDC's topology JSON.

The engine needs a few fields per cluster and host. :func:`parse_fast` validates the plain form of a topology
document (numbers without units, no GPUs, no batteries) without importing pydantic, which is a good part of
the CLI's start-up. It returns None whenever it is not sure; the caller then uses the pydantic model of
``opendt.models.topology``, which also gives the canonical error messages. A document ``parse_fast`` accepts
is accepted by the pydantic model with the same values (tests/engine/test_topology.py checks field names,
defaults and constraints against the model and compares both on mutated documents).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from opendt.models import bounds

if TYPE_CHECKING:
    from opendt.models.topology import Topology

MODEL_TYPES = ("constant", "linear", "square", "cubic", "sqrt", "mse", "asymptotic")
POLICIES = ("MAX_MIN_FAIRNESS", "EQUAL_SHARE", "FIRST_FIT", "FIXED_SHARE", "BEST_EFFORT")
LONG_MAX = 9_223_372_036_854_775_807


@dataclass(frozen=True)
class PowerSpec:
    """A CPU power model (the pydantic ``PowerModel``'s field names)."""

    modelType: str
    power: float
    maxPower: float
    idlePower: float
    calibrationFactor: float
    asymUtil: float
    dvfs: bool


@dataclass(frozen=True)
class HostSpec:
    name: str
    count: int
    cores: int  # coreCount × cpu count
    core_speed: float  # MHz
    memory_size: float  # MiB
    power: PowerSpec
    distribution: str

    @property
    def capacity_mhz(self) -> float:
        return self.cores * self.core_speed


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    source_name: str
    carbon_trace_path: str | None
    has_battery: bool
    hosts: tuple[HostSpec, ...]


@dataclass(frozen=True)
class TopoSpec:
    """What the engine reads from a topology."""

    clusters: tuple[ClusterSpec, ...]

    @staticmethod
    def from_model(t: Topology) -> TopoSpec:
        """The spec of a validated pydantic ``Topology``."""
        return TopoSpec(
            tuple(
                ClusterSpec(
                    c.name,
                    c.powerSource.name,
                    c.powerSource.carbonTracePath,
                    c.battery is not None,
                    tuple(
                        HostSpec(
                            h.name,
                            h.count,
                            h.cpu.cores,
                            h.cpu.coreSpeed,
                            h.memory.memorySize,
                            _power_spec(h.cpuPowerModel),
                            h.cpuDistributionPolicy.type,
                        )
                        for h in c.hosts
                    ),
                )
                for c in t.clusters
            )
        )


TopologyLike: TypeAlias = "Topology | TopoSpec"


def spec_of(t: TopologyLike) -> TopoSpec:
    return t if isinstance(t, TopoSpec) else TopoSpec.from_model(t)


def _power_spec(m: Any) -> PowerSpec:
    return PowerSpec(
        m.modelType, m.power, m.maxPower, m.idlePower, m.calibrationFactor, m.asymUtil, bool(m.dvfs)
    )


# -- the fast parse -----------------------------------------------------------------------------------------
class _Unsure(Exception):
    """The document is not in the plain form the fast parse certifies."""


def _int(v: Any, *, ge: int, le: int) -> int:
    if type(v) is not int or not ge <= v <= le:
        raise _Unsure
    return v


def _float(v: Any, *, ge: float = -math.inf, le: float = math.inf) -> float:
    if type(v) not in (int, float):
        raise _Unsure
    x = float(v)
    if not math.isfinite(x) or not ge <= x <= le:
        raise _Unsure
    return x


def _str(v: Any, most: int = bounds.MAX_NAME_LEN) -> str:
    if type(v) is not str or len(v) > most:
        raise _Unsure
    return v


def _obj(v: Any, allowed: frozenset[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if type(v) is not dict or not allowed.issuperset(v) or any(k not in v for k in required):
        raise _Unsure
    return v


# Field names of the pydantic models (the test compares them with opendt.models.topology).
FIELDS = {
    "Topology": frozenset({"clusters"}),
    "Cluster": frozenset({"name", "count", "hosts", "powerSource", "battery"}),
    "Host": frozenset(
        {"name", "count", "cpu", "memory", "gpu", "cpuPowerModel", "gpuPowerModel", "cpuDistributionPolicy"}
    ),
    "Cpu": frozenset({"coreCount", "coreSpeed", "count", "modelName", "vendor", "arch"}),
    "Memory": frozenset({"memorySize", "memorySpeed", "modelName", "vendor", "arch"}),
    "PowerModel": frozenset(
        {"modelType", "power", "maxPower", "idlePower", "calibrationFactor", "asymUtil", "dvfs"}
    ),
    "DistributionPolicy": frozenset({"type", "shareRatio", "updateIntervalLength"}),
    "PowerSourceSpec": frozenset({"name", "maxPower", "carbonTracePath"}),
}
DEFAULT_POWER_MODEL = PowerSpec("linear", 350.0, 400.0, 200.0, 1.0, 0.0, True)


def _labels(d: dict[str, Any]) -> None:
    for k in ("modelName", "vendor", "arch"):
        if k in d:
            _str(d[k])


def _power(v: Any) -> PowerSpec:
    d = _obj(v, FIELDS["PowerModel"], ("modelType", "maxPower", "idlePower"))
    kind = d["modelType"]
    if kind not in MODEL_TYPES:
        raise _Unsure
    dvfs = d.get("dvfs", True)
    if type(dvfs) is not bool:
        raise _Unsure
    watts = {"ge": 0.0, "le": bounds.MAX_HOST_POWER_W}
    m = PowerSpec(
        kind,
        _float(d.get("power", 400.0), **watts),
        _float(d["maxPower"], **watts),
        _float(d["idlePower"], **watts),
        _float(
            d.get("calibrationFactor", 1.0),
            ge=bounds.MIN_CALIBRATION_FACTOR,
            le=bounds.MAX_CALIBRATION_FACTOR,
        ),
        _float(d.get("asymUtil", 0.0), ge=0.0, le=bounds.MAX_ASYM_UTIL),
        dvfs,
    )
    # the model validator of PowerModel
    if m.maxPower < m.idlePower or min(m.idlePower, m.maxPower, m.power) < 0:
        raise _Unsure
    if kind == "asymptotic" and m.asymUtil <= 0:
        raise _Unsure
    return m


def _host(v: Any) -> HostSpec:
    d = _obj(v, FIELDS["Host"], ("cpu", "memory"))
    if d.get("gpu") is not None:
        raise _Unsure
    cpu = _obj(d["cpu"], FIELDS["Cpu"], ("coreCount", "coreSpeed"))
    _labels(cpu)
    mem = _obj(d["memory"], FIELDS["Memory"], ("memorySize",))
    _labels(mem)
    if "memorySpeed" in mem:
        _float(mem["memorySpeed"])
    policy = _obj(d.get("cpuDistributionPolicy", {}), FIELDS["DistributionPolicy"])
    kind = policy.get("type", "MAX_MIN_FAIRNESS")
    if kind not in POLICIES:
        raise _Unsure
    if policy.get("shareRatio") is not None:
        _float(policy["shareRatio"])
    if policy.get("updateIntervalLength") is not None:
        _int(policy["updateIntervalLength"], ge=0, le=bounds.INT64_MAX)
    if "gpuPowerModel" in d:
        _power(d["gpuPowerModel"])
    cores = _int(cpu["coreCount"], ge=1, le=bounds.MAX_HOST_CORES) * _int(
        cpu.get("count", 1), ge=1, le=bounds.MAX_HOST_CORES
    )
    if cores > bounds.MAX_HOST_CORES:
        raise _Unsure
    return HostSpec(
        _str(d.get("name", "Host")),
        _int(d.get("count", 1), ge=1, le=bounds.MAX_HOSTS),
        cores,
        _float(cpu["coreSpeed"], ge=bounds.MIN_CORE_SPEED_MHZ, le=bounds.MAX_CORE_SPEED_MHZ),
        _float(mem["memorySize"], ge=0, le=bounds.MAX_MEMORY_MIB),
        _power(d["cpuPowerModel"]) if "cpuPowerModel" in d else DEFAULT_POWER_MODEL,
        kind,
    )


def _cluster(v: Any) -> ClusterSpec:
    d = _obj(v, FIELDS["Cluster"], ("hosts",))
    if d.get("battery") is not None:
        raise _Unsure
    _int(d.get("count", 1), ge=0, le=bounds.INT32_MAX)
    hosts = d["hosts"]
    if type(hosts) is not list or not 1 <= len(hosts) <= bounds.MAX_HOSTS:
        raise _Unsure
    src = _obj(d.get("powerSource", {}), FIELDS["PowerSourceSpec"])
    _float(src.get("maxPower", float(LONG_MAX)), ge=0.0, le=float(LONG_MAX))
    path = src.get("carbonTracePath")
    return ClusterSpec(
        _str(d.get("name", "Cluster")),
        _str(src.get("name", "PowerSource")),
        None if path is None else _str(path, bounds.MAX_PATH_LEN),
        False,
        tuple(_host(h) for h in hosts),
    )


def parse_fast(doc: Any) -> TopoSpec | None:
    """The spec of a plain, valid topology document; None when the pydantic model has to decide."""
    try:
        clusters = _obj(doc, FIELDS["Topology"], ("clusters",))["clusters"]
        if type(clusters) is not list or not 1 <= len(clusters) <= bounds.MAX_CLUSTERS:
            raise _Unsure
        spec = TopoSpec(tuple(_cluster(c) for c in clusters))
        if sum(h.count for c in spec.clusters for h in c.hosts) > bounds.MAX_HOSTS:
            raise _Unsure
        return spec
    except (_Unsure, OverflowError):
        return None


def load_spec(path: Path) -> tuple[Any, TopoSpec]:
    """Read and validate a topology file: (the JSON document, its spec).

    Errors are those of the pydantic model (``TopologyError`` naming the file and the field).
    """
    doc: Any = None
    spec = None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        spec = parse_fast(doc)
    except (OSError, ValueError):
        pass
    if spec is not None:
        return doc, spec
    from opendt.models.topology import load_topology

    model = load_topology(path)
    return (doc if doc is not None else model.to_json_dict()), TopoSpec.from_model(model)
