"""The frame protocol between the daemon and its engine worker processes.

Frame (both directions): 4-byte big-endian header length, header JSON; the header lists the tables that follow
as ``[[name, nbytes], …]``, each an Arrow IPC stream.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any, Literal

import polars as pl

LEN = struct.Struct(">I")


def pack(
    header: dict[str, Any],
    tables: dict[str, pl.DataFrame] | None = None,
    *,
    compression: Literal["uncompressed", "zstd"] = "uncompressed",
) -> bytes:
    blobs = []
    for name, df in (tables or {}).items():
        buf = io.BytesIO()
        df.write_ipc_stream(buf, compression=compression)
        blobs.append((name, buf.getvalue()))
    header = {**header, "tables": [[n, len(b)] for n, b in blobs]}
    h = json.dumps(header).encode()
    return LEN.pack(len(h)) + h + b"".join(b for _, b in blobs)


def unpack(frame: bytes) -> tuple[dict[str, Any], dict[str, pl.DataFrame]]:
    """A whole frame (as :func:`pack` wrote it) back into its header and tables."""
    (n,) = LEN.unpack(frame[:4])
    header: dict[str, Any] = json.loads(frame[4 : 4 + n])
    return header, unpack_tables(header, frame[4 + n :])


def unpack_tables(header: dict[str, Any], data: bytes) -> dict[str, pl.DataFrame]:
    out: dict[str, pl.DataFrame] = {}
    pos = 0
    for name, n in header.get("tables", []):
        out[name] = pl.read_ipc_stream(io.BytesIO(data[pos : pos + n]))
        pos += n
    return out
