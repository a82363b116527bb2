"""The per-record decoder of the high-volume streams (tasks, fragments, power): the same rules as the message
models (exact key sets, types, bounds, zone-aware times) without building a model per message, 3-4x faster;
anything it does not accept goes through :func:`opendt.models.messages.decode` for the error text. The
columnar decoder (:mod:`opendt.stream.columns`) hands it whatever a fetch's columns do not take."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import orjson

from opendt.models.bounds import (
    MAX_DURATION_MS,
    MAX_ENERGY_J,
    MAX_FRAGMENT_INDEX,
    MAX_HOST_CORES,
    MAX_ID_LEN,
    MAX_MEMORY_MIB,
    MAX_SITE_POWER_W,
    MAX_TASK_MHZ,
)
from opendt.models.messages import (
    FragmentMessage,
    FragmentRow,
    Heartbeat,
    PowerMessage,
    PowerRow,
    TaskMessage,
    TaskRow,
    decode,
    time_ms,
)

_FIELDS = {
    "tasks": ("submission_time", "duration", "cpu_count", "cpu_capacity", "mem_capacity"),
    "fragments": ("submission_time", "duration", "cpu_count", "cpu_usage", "index"),
    "power": ("timestamp", "power_draw", "energy_usage"),
}
_KEYSETS = {k: frozenset(v) for k, v in _FIELDS.items()}


class _Reject(Exception):
    pass


def _fast(kind: str, key: bytes | None, value: bytes) -> Heartbeat | TaskRow | FragmentRow | PowerRow:
    obj = orjson.loads(value)
    if type(obj) is not dict:
        raise _Reject
    if "heartbeat" in obj:
        if not (obj.keys() <= {"heartbeat", "final"} and type(obj["heartbeat"]) is str):
            raise _Reject
        final = obj.get("final", False)
        if type(final) is not bool:
            raise _Reject
        return Heartbeat.model_construct(
            heartbeat=datetime.fromtimestamp(time_ms(obj["heartbeat"]) / 1000, tz=UTC), final=final
        )
    if obj.keys() != _KEYSETS[kind] or key is None:
        raise _Reject
    k = orjson.loads(key)
    ident = k.get("source" if kind == "power" else "id") if type(k) is dict else None
    if type(ident) is int:
        ident = str(ident)
    elif type(ident) is not str:
        raise _Reject
    when = obj[_FIELDS[kind][0]]
    if len(ident) > MAX_ID_LEN or type(when) is not str:
        raise _Reject
    t = time_ms(when)
    # inline type tests (no helper calls): this runs for every record of the high-volume streams
    if kind == "fragments":
        d, c, u, i = obj["duration"], obj["cpu_count"], obj["cpu_usage"], obj["index"]
        if not (
            type(d) is int
            and 0 <= d <= MAX_DURATION_MS
            and type(c) is int
            and 1 <= c <= MAX_HOST_CORES
            and (type(u) is float or type(u) is int)
            and 0 <= u <= MAX_TASK_MHZ
            and type(i) is int
            and 0 <= i <= MAX_FRAGMENT_INDEX
        ):
            raise _Reject
        return FragmentRow(ident, t, d, c, float(u), i)
    if kind == "tasks":
        d, c, cap, mem = obj["duration"], obj["cpu_count"], obj["cpu_capacity"], obj["mem_capacity"]
        if not (
            type(d) is int
            and 0 <= d <= MAX_DURATION_MS
            and type(c) is int
            and 1 <= c <= MAX_HOST_CORES
            and (type(cap) is float or type(cap) is int)
            and 0 <= cap <= MAX_TASK_MHZ
            and type(mem) is int
            and 0 <= mem <= MAX_MEMORY_MIB
        ):
            raise _Reject
        return TaskRow(ident, t, d, c, float(cap), mem)
    p, e = obj["power_draw"], obj["energy_usage"]
    if not (
        (type(p) is float or type(p) is int)
        and 0 <= p <= MAX_SITE_POWER_W
        and (type(e) is float or type(e) is int)
        and 0 <= e <= MAX_ENERGY_J
    ):
        raise _Reject
    return PowerRow(ident, t, float(p), float(e))


def decode_row(
    kind: Literal["tasks", "fragments", "power"], key: bytes | None, value: bytes | None
) -> Heartbeat | TaskRow | FragmentRow | PowerRow:
    """Decode a tasks/fragments/power record to a plain row tuple (or a Heartbeat).

    Rows: tasks ``(id, submission_ms, duration, cpu_count, cpu_capacity, mem_capacity)``, fragments
    ``(id, submission_ms, duration, cpu_count, cpu_usage, index)``, power ``(source, timestamp_ms, power_draw,
    energy_usage)``. Raises :class:`MessageError` exactly where :func:`decode` does.
    """
    if value is not None:
        try:
            return _fast(kind, key, value)
        except (_Reject, ValueError, TypeError, AttributeError, orjson.JSONDecodeError):
            pass
    msg = decode(kind, key, value)  # raises MessageError with the reason
    if isinstance(msg, Heartbeat):
        return msg
    if isinstance(msg, FragmentMessage):
        return FragmentRow(msg.id, msg.time_ms, msg.duration, msg.cpu_count, msg.cpu_usage, msg.index)
    if isinstance(msg, TaskMessage):
        return TaskRow(msg.id, msg.time_ms, msg.duration, msg.cpu_count, msg.cpu_capacity, msg.mem_capacity)
    assert isinstance(msg, PowerMessage)
    return PowerRow(msg.source, msg.time_ms, msg.power_draw, msg.energy_usage)
