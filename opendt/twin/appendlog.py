"""An append-only table file: Arrow record batches in checksummed, length-prefixed frames, one per window.

Layout (little-endian)::

    b"OPENDTL1"                                   magic
    u32 schema_len, u32 crc32, schema             the Arrow IPC schema message (``Schema.serialize()``)
    frame*                                        one per window, appended
    frame: u32 len, u32 crc32, i64 window_start_ms, u32 rows, payload[len]
           payload = one Arrow IPC record-batch message (``RecordBatch.serialize()``), uncompressed;
           crc32 over window_start_ms, rows and the payload

A window's cost is one ``write`` of its frame at the end of the file: nothing already written is read or
rewritten. Readers read the file once (one consistent prefix: the writer only appends) and decode the
frames' payloads together as one Arrow IPC stream. What a frame claims is checked before anything is
decoded: its length against the file, its checksum, its rows against the size of its payload (no row is
smaller than the schema's fixed-width columns, so a small file cannot make a reader allocate for millions of
rows), then the decoded batches against the claims.

A ``kill -9`` in the middle of an append leaves a torn last frame (:attr:`Scan.torn`): readers ignore it,
the writer cuts it off when it opens the file (:meth:`AppendLog.open`). A bad frame followed by more data,
a wrong magic or schema is :class:`LogCorrupt`, one line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa

from opendt.twin.files import DiskFull, is_disk_full

MAGIC = b"OPENDTL1"
_SCHEMA = struct.Struct("<II")
_FRAME = struct.Struct("<IIqI")
_MAX_SCHEMA = 1 << 20
FRAME_HEADER = _FRAME.size


class LogCorrupt(ValueError):
    """A table file that is not what the twin wrote (bad magic, schema or checksum, bad batch)."""


@dataclass(frozen=True)
class Frame:
    window_start_ms: int
    rows: int
    offset: int
    """Of the payload in the file."""
    length: int


@dataclass
class Scan:
    """What a read of a table file found."""

    schema: pa.Schema | None
    frames: list[Frame] = field(default_factory=list)
    end: int = 0
    """The end of the last complete frame (the schema's end without frames; 0 for an empty file)."""
    torn: int = 0
    """Bytes after ``end`` that do not make a complete frame (an append cut short)."""

    def rows_per_window(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for f in self.frames:
            out[f.window_start_ms] = out.get(f.window_start_ms, 0) + f.rows
        return out


def min_row_bytes(schema: pa.Schema) -> int:
    """The bytes a row takes at least in an uncompressed batch of ``schema`` (its fixed-width columns)."""
    return sum(
        max(1, t.bit_width // 8) for t in schema.types if pa.types.is_primitive(t) or pa.types.is_timestamp(t)
    )


def arrow_schema(schema: pl.Schema) -> pa.Schema:
    """The Arrow schema polars writes for ``schema``."""
    return pl.DataFrame(schema=schema).to_arrow().schema


def scan(path: Path, data: bytes | memoryview, expected: pa.Schema, *, prefix: bool = False) -> Scan:
    """The frames of a table file's bytes; :class:`LogCorrupt` when it is not a table of ``expected``
    (``prefix``: a bad frame ends the frames instead, the rest counted as torn)."""
    mv = memoryview(data)
    n = len(mv)
    if n < len(MAGIC) + _SCHEMA.size:
        if bytes(mv) == MAGIC[:n] or bytes(mv[: len(MAGIC)]) == MAGIC:
            return Scan(None, torn=n)  # created, header cut short: an empty table
        raise LogCorrupt(f"{path}: not an OpenDT table file (no {MAGIC.decode()} header)")
    if bytes(mv[: len(MAGIC)]) != MAGIC:
        raise LogCorrupt(f"{path}: not an OpenDT table file (no {MAGIC.decode()} header)")
    length, crc = _SCHEMA.unpack_from(mv, len(MAGIC))
    start = len(MAGIC) + _SCHEMA.size
    if length > _MAX_SCHEMA:
        raise LogCorrupt(f"{path}: bad header (a schema of {length} bytes)")
    if start + length > n:
        return Scan(None, torn=n)
    if zlib.crc32(mv[start : start + length]) != crc:
        raise LogCorrupt(f"{path}: checksum mismatch in the header")
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(mv[start : start + length]))
    except (pa.ArrowException, ValueError) as e:
        raise LogCorrupt(f"{path}: unreadable schema ({e})") from None
    if schema.names != expected.names:
        raise LogCorrupt(f"{path}: columns {schema.names}, expected {expected.names}")
    out = Scan(schema, end=start + length)
    least = min_row_bytes(expected)
    pos = out.end
    while pos < n:
        if n - pos < _FRAME.size:
            break
        length, crc, window_start, rows = _FRAME.unpack_from(mv, pos)
        body = pos + _FRAME.size
        if body + length > n:
            break
        if zlib.crc32(mv[body : body + length], zlib.crc32(mv[pos + 8 : body])) != crc:
            if body + length == n or prefix:
                break  # the last frame, not all of it written
            raise LogCorrupt(f"{path}: checksum mismatch in the frame at byte {pos}")
        if rows * least > length:
            if prefix:
                break
            raise LogCorrupt(f"{path}: the frame at byte {pos} claims {rows} rows in {length} bytes")
        out.frames.append(Frame(window_start, rows, body, length))
        pos = out.end = body + length
    out.torn = n - out.end
    return out


def decode(path: Path, data: bytes | memoryview, found: Scan, frames: list[Frame]) -> pa.Table:
    """The rows of ``frames`` (of ``found``) as one table, as many as the frames claim (the caller checks
    that each row belongs to its frame's window)."""
    assert found.schema is not None or not frames
    schema = found.schema if found.schema is not None else pa.schema([])
    if not frames:
        return schema.empty_table()
    mv = memoryview(data)
    parts: list[bytes | memoryview] = [bytes(schema.serialize())]
    parts += (mv[f.offset : f.offset + f.length] for f in frames)
    try:
        table = pa.ipc.open_stream(pa.py_buffer(b"".join(parts))).read_all()
        if table.num_rows != sum(f.rows for f in frames):
            raise LogCorrupt(f"{path}: the frames hold other rows than their headers claim")
        table = table.combine_chunks()  # one chunk: polars converts it at once
        table.validate(full=True)
    except (pa.ArrowException, ValueError) as e:
        if isinstance(e, LogCorrupt):
            raise
        raise LogCorrupt(f"{path}: unreadable rows ({str(e).splitlines()[0][:200]})") from None
    return table


def serialize(schema: pa.Schema, df: pl.DataFrame) -> tuple[bytes, int]:
    """``df`` as one record-batch message of ``schema`` (its columns cast to it), and its row count."""
    table = df.to_arrow()
    if not table.schema.equals(schema):
        table = table.cast(schema)
    table = table.combine_chunks()
    batches = table.to_batches()
    batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema)
    return bytes(batch.serialize()), batch.num_rows


def frame(window_start_ms: int, rows: int, payload: bytes) -> bytes:
    tail = struct.pack("<qI", window_start_ms, rows)
    return struct.pack("<II", len(payload), zlib.crc32(payload, zlib.crc32(tail))) + tail + payload


def header(schema: pa.Schema) -> bytes:
    s = bytes(schema.serialize())
    return MAGIC + _SCHEMA.pack(len(s), zlib.crc32(s)) + s


class AppendLog:
    """The writer of one table file (one process: the run lock)."""

    def __init__(self, path: Path, schema: pl.Schema) -> None:
        self.path = path
        self.expected = arrow_schema(schema)
        self.schema = self.expected
        self.size = 0

    def read(self, *, prefix: bool = False) -> tuple[bytes, Scan]:
        """The file's bytes and frames (an absent file is an empty table; ``prefix``: see :func:`scan`)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return b"", Scan(None)
        found = scan(self.path, data, self.expected, prefix=prefix)
        if found.schema is not None:
            self.schema = found.schema
        return data, found

    def cut(self, end: int) -> None:
        """Drop everything after byte ``end`` (a torn frame, frames of windows the journal lacks)."""
        if end <= len(MAGIC):
            self.path.unlink(missing_ok=True)
            self.size = 0
            return
        os.truncate(self.path, end)
        self.size = end

    def opened(self, end: int) -> None:
        """The file is valid up to ``end`` (what :meth:`read` found, after any :meth:`cut`)."""
        self.size = end

    def append(self, window_start_ms: int, df: pl.DataFrame) -> None:
        """One frame at the end of the file (the header first when the file is new)."""
        payload, rows = serialize(self.schema, df)
        data = frame(window_start_ms, rows, payload)
        if self.size == 0:
            data = header(self.schema) + data
        self._write(data)

    def _write(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.lseek(fd, self.size, os.SEEK_SET)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as e:
            with contextlib.suppress(OSError):  # else the next open cuts it (a torn tail)
                os.ftruncate(fd, self.size)  # never leave a partial frame behind us
            if is_disk_full(e):
                raise DiskFull(
                    errno.ENOSPC,
                    f"no space left on the device of {self.path.parent} (writing {self.path.name}): free "
                    "space and run the same command again, the twin resumes where it stopped",
                ) from None
            raise
        finally:
            os.close(fd)
        self.size += len(data)
