"""The OpenDC topology JSON (OPENDC_SEMANTICS §2), with OpenDC's defaults and its strictness.

Unknown keys are errors, as in OpenDC. ``Topology.model_dump(mode="json", exclude_unset=True)`` gives back
the input document (SURF's topology.json round-trips). Quantities accept a bare number (OpenDC's unit) or a
string with a unit ("2.1 GHz", "128 GiB", "1 kW"); they are stored as numbers in OpenDC's unit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from opendt.models.bounds import (
    INT32_MAX,
    INT64_MAX,
    MAX_ASYM_UTIL,
    MAX_CALIBRATION_FACTOR,
    MAX_CLUSTERS,
    MAX_CORE_SPEED_MHZ,
    MAX_HOST_CORES,
    MAX_HOST_POWER_W,
    MAX_HOSTS,
    MAX_MEMORY_MIB,
    MAX_NAME_LEN,
    MAX_PATH_LEN,
    MIN_CALIBRATION_FACTOR,
    MIN_CORE_SPEED_MHZ,
)

MODEL_TYPES = ("constant", "linear", "square", "cubic", "sqrt", "mse", "asymptotic")
LONG_MAX = 9_223_372_036_854_775_807

_UNITS: dict[str, dict[str, float]] = {
    "frequency": {"hz": 1e-6, "khz": 1e-3, "mhz": 1.0, "ghz": 1e3},
    "datasize": {
        "b": 1 / 2**20,
        "kb": 1e3 / 2**20,
        "kib": 1 / 2**10,
        "mb": 1e6 / 2**20,
        "mib": 1.0,
        "gb": 1e9 / 2**20,
        "gib": 2**10,
        "tb": 1e12 / 2**20,
        "tib": 2**20,
    },
    "power": {"mw": 1e-3, "w": 1.0, "kw": 1e3, "megaw": 1e6},
}
_QTY = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([A-Za-z]+)\s*$")


def _quantity(kind: str) -> Any:
    table = _UNITS[kind]

    def parse(v: Any) -> Any:
        if isinstance(v, str):
            m = _QTY.match(v)
            if not m:
                try:
                    return float(v)
                except ValueError:
                    raise ValueError(f"not a {kind} quantity: {v!r}") from None
            unit = m.group(2).lower()
            if kind == "power" and unit == "mw" and m.group(2) == "MW":
                unit = "megaw"
            if unit not in table:
                raise ValueError(f"unknown {kind} unit {m.group(2)!r} in {v!r}")
            return float(m.group(1)) * table[unit]
        return v

    return BeforeValidator(parse)


Frequency = Annotated[float, _quantity("frequency")]
DataSize = Annotated[float, _quantity("datasize")]
Power = Annotated[float, _quantity("power")]
Name = Annotated[str, Field(max_length=MAX_NAME_LEN)]
CoreSpeed = Annotated[Frequency, Field(ge=MIN_CORE_SPEED_MHZ, le=MAX_CORE_SPEED_MHZ)]
Cores = Annotated[int, Field(ge=1, le=MAX_HOST_CORES)]
HostPower = Annotated[Power, Field(ge=0, le=MAX_HOST_POWER_W)]


class _Spec(BaseModel):
    """Every float finite (no NaN, no ±Infinity), every number and text bounded (:mod:`.bounds`)."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, validate_assignment=True, allow_inf_nan=False
    )


class Cpu(_Spec):
    coreCount: Cores
    coreSpeed: CoreSpeed
    count: Cores = 1
    modelName: Name = "unknown"
    vendor: Name = "unknown"
    arch: Name = "unknown"

    @model_validator(mode="after")
    def _check(self) -> Cpu:
        if self.coreCount * self.count > MAX_HOST_CORES:
            raise ValueError(
                f"coreCount × count ({self.coreCount} × {self.count}) must be at most {MAX_HOST_CORES} cores"
            )
        return self

    @property
    def cores(self) -> int:
        """CPUs merge into one CPU with coreCount × count cores (OpenDC MachineModel)."""
        return self.coreCount * self.count

    @property
    def capacity_mhz(self) -> float:
        return self.cores * self.coreSpeed


class Memory(_Spec):
    memorySize: DataSize = Field(ge=0, le=MAX_MEMORY_MIB)
    memorySpeed: Frequency = -1.0
    modelName: Name = "unknown"
    vendor: Name = "unknown"
    arch: Name = "unknown"


class Gpu(_Spec):
    count: Cores = 1
    coreCount: Cores
    coreSpeed: CoreSpeed
    memorySize: DataSize = Field(default=-1.0, ge=-1, le=MAX_MEMORY_MIB)
    memoryBandwidth: float = -1.0
    modelName: Name = "unknown"
    vendor: Name = "unknown"
    architecture: Name = "unknown"


class PowerModel(_Spec):
    modelType: Literal["constant", "linear", "square", "cubic", "sqrt", "mse", "asymptotic"]
    power: HostPower = 400.0
    maxPower: HostPower
    idlePower: HostPower
    calibrationFactor: float = Field(default=1.0, ge=MIN_CALIBRATION_FACTOR, le=MAX_CALIBRATION_FACTOR)
    asymUtil: float = Field(default=0.0, ge=0, le=MAX_ASYM_UTIL)
    dvfs: bool = True

    @model_validator(mode="after")
    def _check(self) -> PowerModel:
        if self.maxPower < self.idlePower:
            raise ValueError(f"maxPower ({self.maxPower}) must be >= idlePower ({self.idlePower})")
        if self.modelType == "asymptotic" and self.asymUtil <= 0:
            raise ValueError(
                "asymptotic power model needs asymUtil > 0 (OpenDC's default 0.0 divides by zero and hangs)"
            )
        return self


def _default_power_model() -> PowerModel:
    return PowerModel(modelType="linear", power=350.0, maxPower=400.0, idlePower=200.0)


class DistributionPolicy(_Spec):
    type: Literal["MAX_MIN_FAIRNESS", "EQUAL_SHARE", "FIRST_FIT", "FIXED_SHARE", "BEST_EFFORT"] = (
        "MAX_MIN_FAIRNESS"
    )
    shareRatio: float | None = None
    updateIntervalLength: int | None = Field(default=None, ge=0, le=INT64_MAX)


class Host(_Spec):
    name: Name = "Host"
    count: int = Field(default=1, ge=1, le=MAX_HOSTS)
    cpu: Cpu
    memory: Memory
    gpu: Gpu | None = None
    cpuPowerModel: PowerModel = Field(default_factory=_default_power_model)
    gpuPowerModel: PowerModel = Field(default_factory=_default_power_model)
    cpuDistributionPolicy: DistributionPolicy = Field(default_factory=DistributionPolicy)


class PowerSourceSpec(_Spec):
    name: Name = "PowerSource"
    maxPower: float = Field(default=float(LONG_MAX), ge=0, le=float(LONG_MAX))
    carbonTracePath: str | None = Field(default=None, max_length=MAX_PATH_LEN)


class BatteryPolicy(_Spec):
    type: Literal["single", "double", "runningMean", "runningMeanPlus"]
    carbonThreshold: float | None = None
    lowerThreshold: float | None = None
    upperThreshold: float | None = None
    startingThreshold: float | None = None
    windowSize: int | None = Field(default=None, ge=0, le=INT32_MAX)


class Battery(_Spec):
    name: Name = "Battery"
    capacity: float = Field(ge=0)
    chargingSpeed: float = Field(ge=0)
    initialCharge: float = 0.0
    batteryPolicy: BatteryPolicy
    embodiedCarbon: float = 0.0
    expectedLifetime: float = 0.0


class Cluster(_Spec):
    name: Name = "Cluster"
    count: int = Field(default=1, ge=0, le=INT32_MAX)  # ignored by OpenDC (never read); kept for round-trips
    hosts: list[Host] = Field(min_length=1, max_length=MAX_HOSTS)
    powerSource: PowerSourceSpec = Field(default_factory=PowerSourceSpec)
    battery: Battery | None = None


class Topology(_Spec):
    clusters: list[Cluster] = Field(min_length=1, max_length=MAX_CLUSTERS)

    @model_validator(mode="after")
    def _check(self) -> Topology:
        if self.host_count > MAX_HOSTS:
            raise ValueError(
                f"clusters: {self.host_count} hosts in all (the sum of every count); at most {MAX_HOSTS}"
            )
        return self

    @property
    def host_count(self) -> int:
        return sum(h.count for c in self.clusters for h in c.hosts)

    def to_json_dict(self) -> dict[str, Any]:
        """The document as written (only the keys that were set), for files and messages."""
        return self.model_dump(mode="json", exclude_unset=True)

    def dumps(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2)


class TopologyError(ValueError):
    """An invalid topology; the message names the file (when known) and the bad field (``field``: the dotted
    path of the first, '' for the whole document)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def _describe(err: ValidationError, most: int = 5) -> str:
    parts = []
    errors = err.errors()
    for e in errors[:most]:
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (and {len(errors) - most} more)" if len(errors) > most else ""
    return "; ".join(parts) + more


def parse_topology(data: Any, *, source: str = "topology") -> Topology:
    try:
        return Topology.model_validate(data)
    except ValidationError as e:
        field = ".".join(str(p) for p in e.errors()[0]["loc"]) if e.errors() else ""
        raise TopologyError(f"invalid topology ({source}): {_describe(e)}", field) from None


def load_topology(path: Path) -> Topology:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(f"topology file not found: {path}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TopologyError(f"topology file {path} is not valid JSON: {e.msg} (line {e.lineno})") from None
    return parse_topology(data, source=str(path))
