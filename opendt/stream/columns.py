"""Columnar decoding of the high-volume input streams (tasks, fragments, power): one fetch, one pass.

A partition's fetch (the messages ``getmany`` returned for it) is decoded at once into one polars frame of
the stream's columns, in message order, not one Python object per record. Two wire forms (DESIGN §4) mix
freely:

* a **per-record message**: key ``{"id": ...}`` (``{"source": ...}`` for power), value the record's JSON;
* a **batch**: header ``content-type: application/x-ndjson``, value one JSON object per line, each with its
  key's field inline (``id`` / ``source``); its Kafka key is ignored.

Every record becomes a line (a per-record message's key field spliced into its value), the lines are parsed by
Arrow's JSON reader against the stream's exact schema (unknown or repeated keys, a wrong JSON type, a value
out of range: the reader refuses), and the columns are checked against the bounds of
:mod:`opendt.models.bounds` vectorized. Whatever the columnar path does not accept goes through the per-record
decoder (:func:`opendt.models.fastdecode.decode_row`), which accepts exactly what it always did and names the
field of a bad record; a parse error is narrowed down by bisection, so one bad record costs a few parses,
never its whole batch or fetch. Heartbeats are per-record messages (or lines) decoded the same way. The result
keeps each record's place (``seq``) and message offset, so what follows can apply it in order.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute
import pyarrow.json as pj

from opendt.models.bounds import (
    MAX_DURATION_MS,
    MAX_ENERGY_J,
    MAX_FRAGMENT_INDEX,
    MAX_HOST_CORES,
    MAX_ID_LEN,
    MAX_MEMORY_MIB,
    MAX_SITE_POWER_W,
    MAX_TASK_MHZ,
    MAX_TIME_MS,
    MIN_TIME_MS,
)
from opendt.models.fastdecode import decode_row
from opendt.models.messages import (
    FragmentRow,
    Heartbeat,
    MessageError,
    PowerRow,
    TaskRow,
    time_ms,
)
from opendt.workload import FRAGMENT_SCHEMA, TASK_SCHEMA

Columnar = Literal["tasks", "fragments", "power"]
NDJSON = "application/x-ndjson"
CONTENT_TYPE = "content-type"
MAX_BATCH_RECORDS = 65_536
"""Records one batch message may carry; a larger batch is rejected whole."""
MAX_BATCH_BYTES = 16 * 1024 * 1024
"""Bytes one batch message may carry; a larger batch is rejected whole."""

POWER_SCHEMA = pl.Schema(
    {
        "source": pl.Utf8(),
        "timestamp_ms": pl.Int64(),
        "power_draw": pl.Float64(),
        "energy_usage": pl.Float64(),
    }
)
SCHEMAS: dict[str, pl.Schema] = {"tasks": TASK_SCHEMA, "fragments": FRAGMENT_SCHEMA, "power": POWER_SCHEMA}
"""The columns a decoded fetch carries per stream (besides ``seq`` and ``offset``)."""
TIME_COLUMN = {"tasks": "submission_ms", "fragments": "submission_ms", "power": "timestamp_ms"}
KEY_FIELD = {"tasks": "id", "fragments": "id", "power": "source"}

_S, _I, _F = pa.string(), pa.int64(), pa.float64()
_TASK_TAIL = [("cpu_capacity", _F), ("mem_capacity", _I)]
_FRAGMENT_TAIL = [("cpu_usage", _F), ("index", _I)]
_WIRE: dict[str, pa.Schema] = {
    "tasks": pa.schema(
        [("id", _S), ("submission_time", _S), ("duration", _I), ("cpu_count", _I), *_TASK_TAIL]
    ),
    "fragments": pa.schema(
        [("id", _S), ("submission_time", _S), ("duration", _I), ("cpu_count", _I), *_FRAGMENT_TAIL]
    ),
    "power": pa.schema([("source", _S), ("timestamp", _S), ("power_draw", _F), ("energy_usage", _F)]),
}
_READ = pj.ReadOptions(use_threads=False, block_size=1 << 30)
_PARSE = {
    k: pj.ParseOptions(explicit_schema=s, unexpected_field_behavior="error", newlines_in_values=False)
    for k, s in _WIRE.items()
}


def _between(col: str, lo: float, hi: float) -> pl.Expr:
    return pl.col(col).is_between(lo, hi)


_CHECKS: dict[str, pl.Expr] = {
    "tasks": _between("duration", 0, MAX_DURATION_MS)
    & _between("cpu_count", 1, MAX_HOST_CORES)
    & _between("cpu_capacity", 0, MAX_TASK_MHZ)
    & _between("mem_capacity", 0, MAX_MEMORY_MIB),
    "fragments": _between("duration", 0, MAX_DURATION_MS)
    & _between("cpu_count", 1, MAX_HOST_CORES)
    & _between("cpu_usage", 0, MAX_TASK_MHZ)
    & _between("index", 0, MAX_FRAGMENT_INDEX),
    "power": _between("power_draw", 0, MAX_SITE_POWER_W) & _between("energy_usage", 0, MAX_ENERGY_J),
}


@dataclass(frozen=True, slots=True)
class Item:
    """Where one record came from: its message (topic, partition, offset, key, value) and, for a record of a
    batch, its line (0-based) with the line as the value (what a dead letter carries)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    line: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Fetch:
    """A partition's fetch, decoded: ``frame`` (the stream's columns of :data:`SCHEMAS`, plus ``seq``: the
    record's place in the fetch, and ``offset``: its message's), the heartbeats ``(seq, offset, heartbeat)``,
    and the malformed records with the reason."""

    frame: pl.DataFrame
    heartbeats: list[tuple[int, int, Heartbeat]] = field(default_factory=list)
    bad: list[tuple[Item, str]] = field(default_factory=list)
    records: int = 0
    """Records seen (lines of batches plus per-record messages)."""


@dataclass(slots=True)
class _Lines:
    """Units of lines parsed together (struct of arrays): a per-record message (one line) or a batch."""

    data: list[bytes] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    """The place of each unit's first record in the fetch."""
    item: list[Any] = field(default_factory=list)
    """Where each unit came from: the Kafka record (``ConsumerRecord``), or an :class:`Item` for a line."""
    batch: list[bool] = field(default_factory=list)

    def add(self, data: bytes, lines: int, seq: int, item: Any, *, batch: bool) -> None:
        self.data.append(data)
        self.lines.append(lines)
        self.seq.append(seq)
        self.item.append(item)
        self.batch.append(batch)

    def take(self, i: int, into: _Lines) -> None:
        into.add(self.data[i], self.lines[i], self.seq[i], self.item[i], batch=self.batch[i])


SLOW_BELOW = 16
"""A block of at most this many units that does not parse is decoded unit by unit (no further bisection)."""


def is_batch(headers: object) -> bool:
    """Whether a message's headers mark it as an NDJSON batch."""
    if not headers:
        return False
    for k, v in headers:  # type: ignore[attr-defined]
        if k == CONTENT_TYPE and v is not None and v.split(b";", 1)[0].strip() == NDJSON.encode():
            return True
    return False


def decode_line(kind: Columnar, line: bytes) -> Heartbeat | TaskRow | FragmentRow | PowerRow:
    """One line of a batch (its key's field inline) → a row or a heartbeat; :class:`MessageError` with the
    field named when it is malformed, exactly as the per-record message would be."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise MessageError(f"line is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"line must be a JSON object, got {type(obj).__name__}")
    if "heartbeat" in obj:
        return decode_row(kind, None, line)
    key_field = KEY_FIELD[kind]
    if key_field not in obj:
        raise MessageError(f"missing {key_field!r} (a batch line carries its key's field inline)")
    key = orjson.dumps({key_field: obj.pop(key_field)})
    return decode_row(kind, key, orjson.dumps(obj))


def _parse(kind: Columnar, u: _Lines, lo: int, hi: int, tables: list[pa.Table], slow: _Lines) -> None:
    """Parse units ``lo:hi`` as one block; on an error, bisect (a batch down to its lines) until each bad line
    is alone or the block small, and hand those to the per-record decoder (``slow``)."""
    if lo >= hi:
        return
    counts = np.asarray(u.lines[lo:hi], dtype=np.int64)
    try:
        block = b"\n".join(u.data[lo:hi])
        t = pj.read_json(io.BytesIO(block), read_options=_READ, parse_options=_PARSE[kind])
        if t.num_rows != int(counts.sum()):  # blank lines: not the records they claim
            raise ValueError("line count")
    except (pa.ArrowInvalid, ValueError):
        if hi - lo > SLOW_BELOW:
            mid = (lo + hi) // 2
            _parse(kind, u, lo, mid, tables, slow)
            _parse(kind, u, mid, hi, tables, slow)
            return
        for i in range(lo, hi):
            if u.lines[i] == 1:
                u.take(i, slow)
            else:  # a batch: its lines apart
                lines = _Lines()
                for j, line in enumerate(u.data[i].split(b"\n")):
                    lines.add(line, 1, u.seq[i] + j, _line_item(u.item[i], j, line), batch=True)
                _parse(kind, lines, 0, len(lines.data), tables, slow)
        return
    starts = np.asarray(u.seq[lo:hi], dtype=np.int64)
    offsets = np.fromiter((it.offset for it in u.item[lo:hi]), dtype=np.int64, count=hi - lo)
    if int(counts.max()) == 1:
        seqs, offs = starts, offsets
    else:
        first = np.repeat(np.cumsum(counts) - counts, counts)
        seqs = np.repeat(starts, counts) + (np.arange(int(counts.sum()), dtype=np.int64) - first)
        offs = np.repeat(offsets, counts)
    tables.append(t.append_column("seq", pa.array(seqs)).append_column("offset", pa.array(offs)))


def _line_item(batch: Any, i: int, line: bytes) -> Item:
    return Item(batch.topic, batch.partition, batch.offset, None, line, i)


_ISO_LEN = 24
_SEPARATORS = {4: ord("-"), 7: ord("-"), 10: ord("T"), 13: ord(":"), 16: ord(":"), 19: ord("."), 23: ord("Z")}
_DIGITS = [i for i in range(_ISO_LEN) if i not in _SEPARATORS]
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _iso_ms_z(col: pl.Series) -> pl.Series:
    """Times of the form every producer of ours writes (``2024-01-01T10:00:00.000Z``) → epoch ms on the raw
    bytes of the column (null where a string is not of that form, or not a valid time in [1970, 2200)): the
    civil-date arithmetic of :func:`datetime.fromisoformat`, without a call per record."""
    arr = pa.compute.cast(col.to_arrow(), pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    out = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=np.bool_)
    if n and arr.buffers()[2] is not None:
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
        data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
        valid = np.diff(offsets) == _ISO_LEN
        if arr.null_count:
            valid &= np.asarray(arr.is_valid())
        idx = np.nonzero(valid)[0]
        b = data[offsets[idx, None] + np.arange(_ISO_LEN)].astype(np.int64)
        good = np.ones(len(idx), dtype=np.bool_)
        for pos, ch in _SEPARATORS.items():
            good &= b[:, pos] == ch
        digits = b[:, _DIGITS] - 48
        good &= ((digits >= 0) & (digits <= 9)).all(axis=1)
        b -= 48

        def num(i: int, k: int) -> npt.NDArray[np.int64]:
            v: npt.NDArray[np.int64] = b[:, i]
            for j in range(i + 1, i + k):
                v = v * 10 + b[:, j]
            return v

        y, mo, d = num(0, 4), num(5, 2), num(8, 2)
        h, mi, se, ms = num(11, 2), num(14, 2), num(17, 2), num(20, 3)
        good &= (mo >= 1) & (mo <= 12) & (h < 24) & (mi < 60) & (se < 60)
        leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
        dim = _DAYS_IN_MONTH[np.clip(mo, 0, 12)] + (leap & (mo == 2))
        good &= (d >= 1) & (d <= dim)
        ya = y - (mo <= 2)  # days from the civil date, years counted from March
        era = ya // 400
        yoe = ya - era * 400
        doy = (153 * ((mo + 9) % 12) + 2) // 5 + d - 1
        days = era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468
        epoch = days * 86_400_000 + h * 3_600_000 + mi * 60_000 + se * 1000 + ms
        good &= (epoch >= MIN_TIME_MS) & (epoch < MAX_TIME_MS)
        out[idx] = epoch
        ok[idx] = good
    return pl.Series(out).set(pl.Series(~ok), None) if not ok.all() else pl.Series(out)


def _times(col: pl.Series) -> tuple[pl.Series, set[str]]:
    """ISO-8601 times → epoch ms: the usual form on the columns (:func:`_iso_ms_z`), any other (an offset, no
    fraction) parsed once per distinct string as the per-record decoder does; the strings that are not valid
    times come back apart (their rows take the per-record path)."""
    ms = _iso_ms_z(col)
    missing = ms.is_null()
    if not bool(missing.any()):
        return ms, set()
    mapping: dict[str, int] = {}
    bad: set[str] = set()
    for s in col.filter(missing).unique().to_list():
        try:
            mapping[s] = time_ms(s)
        except (ValueError, TypeError, OverflowError):
            bad.add(s)
    other = col.replace_strict(mapping, default=None, return_dtype=pl.Int64)
    return ms.fill_null(other), bad


def _columns(kind: Columnar, tables: list[pa.Table]) -> tuple[pl.DataFrame, pl.Series]:
    """The parsed tables as the stream's frame, and a mask of the rows the bounds accept."""
    raw = pl.from_arrow(pa.concat_tables(tables)) if tables else None
    schema = SCHEMAS[kind]
    if raw is None or not isinstance(raw, pl.DataFrame) or raw.height == 0:
        empty = pl.DataFrame(schema={**schema, "seq": pl.Int64(), "offset": pl.Int64()})
        return empty, pl.Series(dtype=pl.Boolean)
    wire_time = "timestamp" if kind == "power" else "submission_time"
    ms, _ = _times(raw[wire_time])
    key = KEY_FIELD[kind]
    ok = raw.select(
        (
            pl.all_horizontal(pl.all().is_not_null())
            & _CHECKS[kind]
            & (pl.col(key).str.len_chars() <= MAX_ID_LEN)
            & ms.is_not_null()
        ).alias("ok")
    )["ok"]
    frame = raw.with_columns(ms.alias(TIME_COLUMN[kind])).select(
        [pl.col(c).cast(dt) for c, dt in schema.items()] + [pl.col("seq"), pl.col("offset")]
    )
    return frame, ok


def decode_fetch(kind: Columnar, records: Sequence[Any]) -> Fetch:
    """Decode one partition's fetch of stream ``kind``: ``records`` in offset order, each with ``topic``,
    ``partition``, ``offset``, ``key``, ``value`` and ``headers`` (aiokafka's ``ConsumerRecord``)."""
    units = _Lines()
    slow = _Lines()
    out = Fetch(pl.DataFrame())
    seq = 0
    for rec in records:
        key, value = rec.key, rec.value
        if rec.headers and is_batch(rec.headers):
            value = value or b""
            if value.endswith(b"\n"):
                value = value[:-1]
            n = value.count(b"\n") + 1
            if n > MAX_BATCH_RECORDS or len(value) > MAX_BATCH_BYTES:
                why = (
                    f"batch of {n} records, {len(value)} bytes is over the bound "
                    f"({MAX_BATCH_RECORDS} records, {MAX_BATCH_BYTES} bytes): rejected whole"
                )
                out.bad.append((_item(rec), why))
            else:
                units.add(value, n, seq, rec, batch=True)
            seq += n
            continue
        if key is None or value is None:  # a heartbeat (or broken): the per-record decoder takes it
            slow.add(b"", 1, seq, rec, batch=False)
        else:  # one line, its key's field last (it wins, as the key does); anything odd fails the parse
            units.add(value[:-1] + b"," + key[1:], 1, seq, rec, batch=False)
        seq += 1
    out.records = seq
    tables: list[pa.Table] = []
    _parse(kind, units, 0, len(units.data), tables, slow)
    frame, ok = _columns(kind, tables)
    if frame.height and not bool(ok.all()):
        rejected = frame.filter(~ok)["seq"].to_list()
        frame = frame.filter(ok)
        _rejected_units(units, rejected, slow)
    extra: list[tuple[int, int, TaskRow | FragmentRow | PowerRow]] = []
    for i, item in enumerate(slow.item):
        try:
            if slow.batch[i]:
                row = decode_line(kind, slow.data[i])
            elif item.key is None and item.value is not None and item.value.startswith(b'{"heartbeat"'):
                row = _heartbeat(item.value)
            else:
                row = decode_row(kind, item.key, item.value)
        except MessageError as e:
            out.bad.append((_item(item), str(e)))
            continue
        if isinstance(row, Heartbeat):
            out.heartbeats.append((slow.seq[i], item.offset, row))
        else:
            extra.append((slow.seq[i], item.offset, row))
    if extra:
        rows = pl.DataFrame([r for _, _, r in extra], schema=SCHEMAS[kind], orient="row")
        rows = rows.with_columns(
            pl.Series("seq", [s for s, _, _ in extra], dtype=pl.Int64),
            pl.Series("offset", [o for _, o, _ in extra], dtype=pl.Int64),
        )
        frame = pl.concat([frame, rows]).sort("seq")
    out.heartbeats.sort(key=lambda h: h[0])
    out.frame = frame
    return out


@functools.lru_cache(maxsize=1024)
def _heartbeat(value: bytes) -> Heartbeat | TaskRow | FragmentRow | PowerRow:
    """A heartbeat message, decoded once for every topic and partition that carries the same one."""
    return decode_row("tasks", None, value)


def _item(rec: Any) -> Item:
    return rec if isinstance(rec, Item) else Item(rec.topic, rec.partition, rec.offset, rec.key, rec.value)


def _rejected_units(units: _Lines, seqs: list[int], slow: _Lines) -> None:
    """The units (a per-record message, or a batch's line) that hold the records ``seqs``, into ``slow``."""
    starts = np.asarray(units.seq, dtype=np.int64)
    split: dict[int, list[bytes]] = {}
    for s in seqs:
        i = int(np.searchsorted(starts, s, side="right")) - 1
        if units.lines[i] == 1:
            units.take(i, slow)
            continue
        lines = split.get(i)
        if lines is None:
            lines = split[i] = units.data[i].split(b"\n")
        j = s - units.seq[i]
        slow.add(lines[j], 1, s, _line_item(units.item[i], j, lines[j]), batch=True)
