"""The engine worker child: ``python -m opendt.worker``, a blocking loop over stdin/stdout.

It holds one :class:`~opendt.engine.Engine` (the twin's state, ops ``init``, ``advance``, ``advance_many``,
``finish``, ``set_topology``) and, in candidate workers, the bases of warm-started runs (ops ``cal.*``,
:mod:`opendt.worker.warm`). Every request is answered, an engine exception included (``ok: false`` with the
error); the parent decides what a failure means.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, BinaryIO

import polars as pl

from opendt.worker.protocol import LEN, pack, unpack_tables

if TYPE_CHECKING:
    from opendt.engine import Engine


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _advance_many(
    engine: Engine, header: dict[str, Any], tables: dict[str, pl.DataFrame]
) -> dict[str, pl.DataFrame]:
    """Several windows in order, as as many ``advance`` calls: window ``i``'s tables ``tasks{i}``,
    ``fragments{i}`` and ``carbon{i}`` (if any); its rows ``rows{i}``, the compute seconds of each in
    ``compute``; with ``snapshot`` (an archive mode), the engine's snapshot after the last one, as
    ``cal.snapshot`` takes it."""
    out: dict[str, pl.DataFrame] = {}
    took = []
    for i, until in enumerate(header["untils"]):
        t0 = time.perf_counter()
        out[f"rows{i}"] = engine.advance(
            until, tables[f"tasks{i}"], tables[f"fragments{i}"], tables.get(f"carbon{i}")
        )
        took.append(time.perf_counter() - t0)
    out["compute"] = pl.DataFrame({"s": took}, schema={"s": pl.Float64})
    if header.get("snapshot") is not None:
        from opendt.worker.warm import snapshot

        out["snapshot"] = pl.DataFrame(
            {"blob": [snapshot(engine, header["snapshot"])]}, schema={"blob": pl.Binary}
        )
    return out


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    from opendt.engine import Engine
    from opendt.models.topology import parse_topology

    engine: Engine | None = None
    cal_bases: dict[str, Any] = {}  # calibration candidate runs (opendt.worker.warm)
    while True:
        try:
            (n,) = LEN.unpack(_read_exact(stdin, 4))
        except EOFError:
            return 0
        header = json.loads(_read_exact(stdin, n))
        size = sum(t[1] for t in header.get("tables", []))
        tables = unpack_tables(header, _read_exact(stdin, size))
        op = header["op"]
        reply: dict[str, Any] = {"ok": True}
        out: dict[str, pl.DataFrame] = {}
        t0 = time.perf_counter()
        try:
            if op == "ping":  # answered before init too: the parent's readiness check
                reply["pid"] = os.getpid()
            elif op == "init":
                engine = Engine(
                    parse_topology(header["topology"]),
                    export_interval_ms=header["export_interval_ms"],
                    carbon=tables.get("carbon"),
                    unknown_carbon=True,  # the twin's: no intensity received is unknown, never 0
                )
            elif op == "restore":
                from opendt.worker.warm import load_snapshot

                engine = load_snapshot(tables["snapshot"]["blob"][0])
            elif op.startswith("cal."):
                from opendt.worker import warm

                out = warm.handle(op, header, tables, engine, cal_bases)
            elif engine is None:
                raise RuntimeError("worker not initialised")
            elif op == "advance":
                out["rows"] = engine.advance(
                    header["until_ms"], tables["tasks"], tables["fragments"], tables.get("carbon")
                )
            elif op == "advance_many":
                out = _advance_many(engine, header, tables)
            elif op == "finish":
                out["rows"] = engine.finish(header.get("until_ms"))
            elif op == "set_topology":
                engine.set_topology(parse_topology(header["topology"]))
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            out = {}
        reply["compute_s"] = time.perf_counter() - t0
        stdout.write(pack(reply, out))
        stdout.flush()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    return _serve(sys.stdin.buffer, sys.stdout.buffer)
