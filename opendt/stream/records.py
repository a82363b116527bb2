"""The records of the input streams as the consumer handles them one by one: decoding a carbon step or a
physical topology, a record's time, a decoded fetch's rows, a judged record as a dead letter carries it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeAlias

import orjson
import polars as pl
from aiokafka import TopicPartition

from opendt.models.fastdecode import decode_row
from opendt.models.messages import (
    CarbonMessage,
    CarbonRow,
    FragmentRow,
    Heartbeat,
    PowerRow,
    TaskRow,
    TopologyMessage,
    decode,
    encode_carbon,
    encode_heartbeat,
    encode_topology_message,
)
from opendt.stream.columns import SCHEMAS, Columnar, Item

Kind = Literal["tasks", "fragments", "power", "carbon", "topology"]
Row: TypeAlias = Heartbeat | TaskRow | FragmentRow | PowerRow | CarbonRow | TopologyMessage


def decode_record(
    kind: Kind, key: bytes | None, value: bytes | None
) -> Heartbeat | TaskRow | FragmentRow | PowerRow | CarbonRow | TopologyMessage:
    """A record of one of the twin's input streams: the row tuples of the windowed streams (fast path),
    a carbon step, a physical topology, or a heartbeat. :class:`MessageError` when it is malformed."""
    if kind in ("tasks", "fragments", "power"):
        return decode_row(kind, key, value)
    msg = decode(kind, key, value)
    if isinstance(msg, CarbonMessage):
        return CarbonRow(msg.time_ms, msg.carbon_intensity)
    assert isinstance(msg, Heartbeat | TopologyMessage)  # the only other models of these two streams
    return msg


def time_of(row: Row) -> int:
    if isinstance(row, Heartbeat):
        return row.time_ms
    if isinstance(row, TaskRow | FragmentRow):
        return row.submission_ms
    if isinstance(row, PowerRow | CarbonRow):
        return row.timestamp_ms
    return row.time_ms


def rows_of(kind: Columnar, frame: pl.DataFrame) -> list[tuple[int, TaskRow | FragmentRow | PowerRow]]:
    """A decoded fetch's records as ``(offset, row)``, in order (the per-record path)."""
    make: Callable[[Iterable[Any]], TaskRow | FragmentRow | PowerRow] = {  # type: ignore[assignment]
        "tasks": TaskRow._make,
        "fragments": FragmentRow._make,
        "power": PowerRow._make,
    }[kind]
    offsets = frame["offset"].to_list()
    rows = frame.select(SCHEMAS[kind].names()).iter_rows()
    return [(o, make(r)) for o, r in zip(offsets, rows, strict=True)]


def row_item(tp: TopicPartition, offset: int, row: Row) -> Item:
    """A judged record as a dead letter carries it: its message's place, the record as one JSON line."""
    if isinstance(row, Heartbeat):
        value = encode_heartbeat(row.time_ms, final=row.final)
    elif isinstance(row, TopologyMessage):
        value = encode_topology_message(row.time_ms, row.topology)
    elif isinstance(row, CarbonRow):
        value = encode_carbon(row.timestamp_ms, row.carbon_intensity)
    else:
        value = orjson.dumps(row._asdict())
    return Item(tp.topic, tp.partition, offset, None, value)
