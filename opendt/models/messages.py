"""The Kafka messages of DESIGN §4: JSON, UTF-8, times ISO-8601 UTC with ``Z``.

Decoding is strict (unknown keys, wrong types, values outside the bounds of :mod:`opendt.models.bounds`:
times a string with a zone in [1970, 2200), counts, durations, indices, powers, ids) and raises
:class:`MessageError` with a one-line reason naming the field; callers count, log and skip such messages.
Encoding of the high-volume streams is done with plain string building and orjson (no model per message).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    WithJsonSchema,
)

from opendt.models.bounds import (
    MAX_CARBON_INTENSITY,
    MAX_DURATION_MS,
    MAX_ENERGY_J,
    MAX_FRAGMENT_INDEX,
    MAX_HOST_CORES,
    MAX_ID_LEN,
    MAX_MEMORY_MIB,
    MAX_REASON_LEN,
    MAX_SITE_POWER_W,
    MAX_TASK_MHZ,
    MAX_TIME_MS,
    MAX_VERSION,
    MIN_TIME_MS,
    TIME_SCHEMA,
)
from opendt.models.topology import Topology

DATACENTER_KEY = b'"datacenter"'


class MessageError(ValueError):
    """A message that cannot be decoded; the text says why."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_ms(ms: int) -> str:
    """Epoch ms → ``2022-10-06T22:00:00.000Z`` (four-digit years; ValueError outside years 1..9999)."""
    try:
        t = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise ValueError(f"{ms} ms since the epoch is outside years 1..9999") from None
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}."
        f"{t.microsecond // 1000:03d}Z"
    )


def to_ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


@functools.lru_cache(maxsize=1 << 16)
def _time_ms(s: str) -> int:
    """An ISO-8601 time with a zone → epoch ms in [1970, 2200) (ValueError otherwise)."""
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        raise ValueError(f"{s[:40]!r} has no zone (give Z or an offset)")
    ms = round(dt.timestamp() * 1000)
    if not MIN_TIME_MS <= ms < MAX_TIME_MS:
        raise ValueError(f"{s[:40]!r} is outside [1970-01-01, 2200-01-01)")
    return ms


time_ms = _time_ms
"""An ISO-8601 time with a zone → epoch ms in [1970, 2200) (ValueError otherwise; parsed once per string)."""


def clear_time_cache() -> None:
    """Forget the parsed times (a benchmark's runs each start as a fresh process does)."""
    _time_ms.cache_clear()


def _message_time(v: object) -> datetime:
    if type(v) is not str:
        raise ValueError("must be an ISO-8601 time string with a zone")  # not a number of seconds
    _time_ms(v)
    return datetime.fromisoformat(v)


MessageTime = Annotated[AwareDatetime, BeforeValidator(_message_time), WithJsonSchema(TIME_SCHEMA)]
"""A time in a message: an ISO-8601 string with a zone, in [1970, 2200)."""
Id = Annotated[str, Field(max_length=MAX_ID_LEN)]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Heartbeat(_Msg):
    heartbeat: MessageTime
    final: StrictBool = Field(default=False, description="The end of this partition's stream")

    @property
    def time_ms(self) -> int:
        return to_ms(self.heartbeat)


class TaskMessage(_Msg):
    id: Id = Field(default="", description="The task's id (from the key)")
    submission_time: MessageTime
    duration: StrictInt = Field(ge=0, le=MAX_DURATION_MS, description="Run time (ms)")
    cpu_count: StrictInt = Field(ge=1, le=MAX_HOST_CORES, description="Cores the task uses")
    cpu_capacity: StrictFloat = Field(ge=0, le=MAX_TASK_MHZ, description="CPU capacity it asks (MHz)")
    mem_capacity: StrictInt = Field(ge=0, le=int(MAX_MEMORY_MIB), description="Memory it asks (MiB)")

    @property
    def time_ms(self) -> int:
        return to_ms(self.submission_time)


class FragmentMessage(_Msg):
    id: Id = Field(default="", description="The task's id (from the key)")
    submission_time: MessageTime
    duration: StrictInt = Field(ge=0, le=MAX_DURATION_MS, description="Length of the fragment (ms)")
    cpu_count: StrictInt = Field(ge=1, le=MAX_HOST_CORES, description="Cores the task uses")
    cpu_usage: StrictFloat = Field(ge=0, le=MAX_TASK_MHZ, description="CPU used meanwhile (MHz)")
    index: StrictInt = Field(ge=0, le=MAX_FRAGMENT_INDEX, description="Place in its task, from 0")

    @property
    def time_ms(self) -> int:
        return to_ms(self.submission_time)


class PowerMessage(_Msg):
    source: Id = Field(default="", description="The meter (from the key)")
    timestamp: MessageTime
    power_draw: StrictFloat = Field(ge=0, le=MAX_SITE_POWER_W, description="Measured power (W)")
    energy_usage: StrictFloat = Field(ge=0, le=MAX_ENERGY_J, description="Energy since the last sample (J)")

    @property
    def time_ms(self) -> int:
        return to_ms(self.timestamp)


class TopologyMessage(_Msg):
    timestamp: MessageTime
    topology: Topology

    @property
    def time_ms(self) -> int:
        return to_ms(self.timestamp)


class CarbonMessage(_Msg):
    """``dc.carbon``: the grid's carbon intensity, in force from ``timestamp`` until the next message."""

    timestamp: MessageTime
    carbon_intensity: float = Field(
        ge=0, le=MAX_CARBON_INTENSITY, allow_inf_nan=False, description="gCO2/kWh"
    )

    @property
    def time_ms(self) -> int:
        return to_ms(self.timestamp)


class SimTopologyMessage(_Msg):
    version: StrictInt = Field(ge=0, le=MAX_VERSION, description="0 = the first physical topology")
    source: Literal["initial", "physical", "calibrator", "api", "optimizer"]
    timestamp: MessageTime
    reason: str = Field(default="", max_length=MAX_REASON_LEN, description="Why this version")
    topology: Topology


class ResultPoint(_Msg):
    timestamp: MessageTime
    power_draw: StrictFloat = Field(description="Simulated power of the datacenter (W)")
    energy_usage: StrictFloat = Field(description="Energy since the previous point (J)")
    carbon_intensity: StrictFloat | None = Field(description="Grid intensity in force (gCO2/kWh)")
    carbon_emission: StrictFloat | None = Field(description="Emission since the previous point (gCO2)")


class SimResultsMessage(_Msg):
    window_start: MessageTime
    window_end: MessageTime
    topology_version: StrictInt = Field(ge=0, le=MAX_VERSION, description="The sim.topology version used")
    engine: str = Field(description="What simulated the window: builtin or opendc")
    points: list[ResultPoint]


StreamKind = Literal["tasks", "fragments", "power", "carbon", "topology", "sim_topology", "sim_results"]
Decoded = (
    Heartbeat
    | TaskMessage
    | FragmentMessage
    | PowerMessage
    | CarbonMessage
    | TopologyMessage
    | SimTopologyMessage
    | SimResultsMessage
)

_KEY_FIELD: dict[str, str] = {"tasks": "id", "fragments": "id", "power": "source"}
_HEARTBEATS = frozenset({"tasks", "fragments", "power", "carbon", "topology"})
"""Streams that may carry heartbeats (the replay producer sends them on each input stream but dc.topology)."""
_MODELS: dict[str, type[_Msg]] = {
    "tasks": TaskMessage,
    "fragments": FragmentMessage,
    "power": PowerMessage,
    "carbon": CarbonMessage,
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
    """Decode one record of the stream ``kind``. Heartbeats are accepted on the input streams."""
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
            if kind not in _HEARTBEATS:
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
            ident = k.get(key_field) if isinstance(k, dict) else None
            if isinstance(ident, bool) or not isinstance(ident, str | int):
                raise MessageError(f"key must be {{{key_field!r}: <string>}}")
            obj[key_field] = str(ident)
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


def encode_carbon(ms: int, carbon_intensity: float) -> bytes:
    return orjson.dumps({"timestamp": iso_ms(ms), "carbon_intensity": carbon_intensity})


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


# --- fast path for the high-volume streams ----------------------------------------------------------------
# The same rules as the models above (exact key sets, types, bounds, zone-aware times), without building a
# model per message: 3-4× faster. Anything it does not accept goes through ``decode`` for the error text.


class TaskRow(NamedTuple):
    """A task as the windows carry it (the columns of ``TASK_SCHEMA``)."""

    id: str
    submission_ms: int
    duration: int
    cpu_count: int
    cpu_capacity: float
    mem_capacity: int


class FragmentRow(NamedTuple):
    """A fragment as the windows carry it (the columns of ``FRAGMENT_SCHEMA``)."""

    id: str
    submission_ms: int
    duration: int
    cpu_count: int
    cpu_usage: float
    position: int
    """The fragment's place in its task (the message's ``index``)."""


class PowerRow(NamedTuple):
    """A measured power sample as the windows carry it."""

    source: str
    timestamp_ms: int
    power_draw: float
    energy_usage: float


class CarbonRow(NamedTuple):
    """A carbon-intensity step as the windows carry it (gCO2/kWh from ``timestamp_ms`` on)."""

    timestamp_ms: int
    carbon_intensity: float
