"""The Kafka messages of DESIGN §4: JSON, UTF-8, times ISO-8601 UTC with ``Z``.

Decoding is strict (unknown keys, wrong types, negative durations are rejected) and raises
:class:`MessageError` with a one-line reason; callers count, log and skip such messages.
Encoding of the high-volume streams is done with plain string building and orjson (no model per message).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from opendt.models.topology import Topology

DATACENTER_KEY = b'"datacenter"'


class MessageError(ValueError):
    """A message that cannot be decoded; the text says why."""


def iso_ms(ms: int) -> str:
    """Epoch ms → ``2022-10-06T22:00:00.000Z``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def to_ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Heartbeat(_Msg):
    heartbeat: AwareDatetime
    final: bool = False

    @property
    def time_ms(self) -> int:
        return to_ms(self.heartbeat)


class TaskMessage(_Msg):
    id: str = ""  # from the key
    submission_time: AwareDatetime
    duration: int = Field(ge=0)
    cpu_count: int = Field(gt=0)
    cpu_capacity: float = Field(ge=0)
    mem_capacity: int = Field(ge=0)

    @property
    def time_ms(self) -> int:
        return to_ms(self.submission_time)


class FragmentMessage(_Msg):
    id: str = ""  # from the key
    submission_time: AwareDatetime
    duration: int = Field(ge=0)
    cpu_count: int = Field(gt=0)
    cpu_usage: float = Field(ge=0)
    index: int = Field(ge=0)

    @property
    def time_ms(self) -> int:
        return to_ms(self.submission_time)


class PowerMessage(_Msg):
    source: str = ""  # from the key
    timestamp: AwareDatetime
    power_draw: float = Field(ge=0)
    energy_usage: float = Field(ge=0)

    @property
    def time_ms(self) -> int:
        return to_ms(self.timestamp)


class TopologyMessage(_Msg):
    timestamp: AwareDatetime
    topology: Topology

    @property
    def time_ms(self) -> int:
        return to_ms(self.timestamp)


class SimTopologyMessage(_Msg):
    version: int = Field(ge=0)
    source: Literal["initial", "calibrator", "api", "optimizer"]
    timestamp: AwareDatetime
    reason: str = ""
    topology: Topology


class ResultPoint(_Msg):
    timestamp: AwareDatetime
    power_draw: float
    energy_usage: float
    carbon_intensity: float
    carbon_emission: float


class SimResultsMessage(_Msg):
    window_start: AwareDatetime
    window_end: AwareDatetime
    topology_version: int
    engine: str
    points: list[ResultPoint]


StreamKind = Literal["tasks", "fragments", "power", "topology", "sim_topology", "sim_results"]
Decoded = (
    Heartbeat
    | TaskMessage
    | FragmentMessage
    | PowerMessage
    | TopologyMessage
    | SimTopologyMessage
    | SimResultsMessage
)

_KEY_FIELD: dict[str, str] = {"tasks": "id", "fragments": "id", "power": "source"}
_MODELS: dict[str, type[_Msg]] = {
    "tasks": TaskMessage,
    "fragments": FragmentMessage,
    "power": PowerMessage,
    "topology": TopologyMessage,
    "sim_topology": SimTopologyMessage,
    "sim_results": SimResultsMessage,
}


def _short(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def decode(kind: StreamKind, key: bytes | None, value: bytes | None) -> Decoded:
    """Decode one record of the stream ``kind``. Heartbeats are accepted on tasks, fragments and power."""
    if value is None:
        raise MessageError("empty value (tombstone)")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise MessageError(f"value is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"value must be a JSON object, got {type(obj).__name__}")
    try:
        if "heartbeat" in obj:
            if kind not in _KEY_FIELD:
                raise MessageError(f"heartbeats are not expected on the {kind} stream")
            return Heartbeat.model_validate(obj)
        key_field = _KEY_FIELD.get(kind)
        if key_field is not None:
            if key is None:
                raise MessageError(f"missing key (expected {{{key_field!r}: ...}})")
            try:
                k = orjson.loads(key)
            except orjson.JSONDecodeError:
                raise MessageError("key is not JSON") from None
            if not isinstance(k, dict) or not isinstance(k.get(key_field), str | int):
                raise MessageError(f"key must be {{{key_field!r}: <string>}}")
            obj[key_field] = str(k[key_field])
        return _MODELS[kind].model_validate(obj)  # type: ignore[return-value]
    except ValidationError as e:
        raise MessageError(f"invalid {kind} message: {_short(e)}") from None


# --- encoding -------------------------------------------------------------------------------------------


def encode_json(obj: Any) -> bytes:
    return orjson.dumps(obj)


def encode_key(field: str, value: str) -> bytes:
    return orjson.dumps({field: value})


def encode_heartbeat(ms: int, *, final: bool = False) -> bytes:
    if final:
        return orjson.dumps({"heartbeat": iso_ms(ms), "final": True})
    return orjson.dumps({"heartbeat": iso_ms(ms)})


def encode_model(msg: BaseModel) -> bytes:
    return msg.model_dump_json(exclude_unset=False, by_alias=True).encode()


def encode_topology_message(ms: int, topology: Topology) -> bytes:
    return orjson.dumps({"timestamp": iso_ms(ms), "topology": topology.to_json_dict()})


def encode_sim_topology(version: int, source: str, ms: int, reason: str, topology: Topology) -> bytes:
    return orjson.dumps(
        {
            "version": version,
            "source": source,
            "timestamp": iso_ms(ms),
            "reason": reason,
            "topology": topology.to_json_dict(),
        }
    )
