"""Long-lived engine worker processes: the twin's state stays in a child process; windows go in and rows come
out over pipes (a JSON header plus Arrow IPC tables), so no process is spawned per window.

Child: ``python -m opendt.worker.client`` (a blocking loop over stdin/stdout). Parent: :class:`EngineWorker`
(one child, lifecycle of an aiokafka resource) and :class:`TwinEngine`, which keeps the history of the
state-changing calls and, when its child dies or hangs, kills it, starts a new one and replays the history
so the state is rebuilt exactly (the engine is deterministic).

Frame (both directions): 4-byte big-endian header length, header JSON; the header lists the tables that follow
as ``[[name, nbytes], …]``, each an Arrow IPC stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import polars as pl
import structlog

log = structlog.get_logger(component="worker")

_LEN = struct.Struct(">I")


class WorkerError(RuntimeError):
    """The engine in the worker raised: a deterministic failure of this request (not retried)."""


class WorkerDied(RuntimeError):
    """The worker process exited, hung past the timeout, or broke the protocol."""


def _pack(header: dict[str, Any], tables: dict[str, pl.DataFrame] | None = None) -> bytes:
    blobs = []
    for name, df in (tables or {}).items():
        buf = io.BytesIO()
        df.write_ipc_stream(buf)
        blobs.append((name, buf.getvalue()))
    header = {**header, "tables": [[n, len(b)] for n, b in blobs]}
    h = json.dumps(header).encode()
    return _LEN.pack(len(h)) + h + b"".join(b for _, b in blobs)


def _unpack_tables(header: dict[str, Any], data: bytes) -> dict[str, pl.DataFrame]:
    out: dict[str, pl.DataFrame] = {}
    pos = 0
    for name, n in header.get("tables", []):
        out[name] = pl.read_ipc_stream(io.BytesIO(data[pos : pos + n]))
        pos += n
    return out


# -- child ------------------------------------------------------------------------------------------------


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    from opendt.engine import Engine
    from opendt.models.topology import parse_topology

    engine: Engine | None = None
    cal_bases: dict[str, Any] = {}  # calibration candidate runs (opendt.worker.warm)
    while True:
        try:
            (n,) = _LEN.unpack(_read_exact(stdin, 4))
        except EOFError:
            return 0
        header = json.loads(_read_exact(stdin, n))
        size = sum(t[1] for t in header.get("tables", []))
        tables = _unpack_tables(header, _read_exact(stdin, size))
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
                )
            elif op.startswith("cal."):
                from opendt.worker import warm

                out = warm.handle(op, header, tables, engine, cal_bases)
            elif engine is None:
                raise RuntimeError("worker not initialised")
            elif op == "advance":
                out["rows"] = engine.advance(header["until_ms"], tables["tasks"], tables["fragments"])
            elif op == "finish":
                out["rows"] = engine.finish()
            elif op == "set_topology":
                engine.set_topology(parse_topology(header["topology"]))
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            out = {}
        reply["compute_s"] = time.perf_counter() - t0
        stdout.write(_pack(reply, out))
        stdout.flush()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    return _serve(sys.stdin.buffer, sys.stdout.buffer)


# -- parent -----------------------------------------------------------------------------------------------


def default_command() -> list[str]:
    return [sys.executable, "-m", "opendt.worker.client"]


class EngineWorker:
    """One child process speaking the frame protocol. ``call`` is serialized (one request at a time)."""

    def __init__(self, command: Sequence[str] | None = None) -> None:
        self.command = list(command or default_command())
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._stderr_tail: list[str] = []
        self._stderr_task: asyncio.Task[None] | None = None
        self._started = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("worker already started")
        self._started = True
        self._proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=2**26,
        )
        assert self._proc.stderr is not None
        self._stderr_task = asyncio.create_task(self._pump_stderr(self._proc.stderr))

    async def _pump_stderr(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            self._stderr_tail = [*self._stderr_tail[-19:], line.decode(errors="replace").rstrip()]

    def stderr_tail(self) -> str:
        return " | ".join(self._stderr_tail[-5:])

    async def call(
        self, header: dict[str, Any], tables: dict[str, pl.DataFrame] | None = None, *, timeout_s: float
    ) -> tuple[dict[str, Any], dict[str, pl.DataFrame]]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise WorkerDied("worker not started")
        payload = await asyncio.to_thread(_pack, header, tables)
        async with self._lock:
            try:
                async with asyncio.timeout(timeout_s):
                    proc.stdin.write(payload)
                    await proc.stdin.drain()
                    (n,) = _LEN.unpack(await proc.stdout.readexactly(4))
                    reply = json.loads(await proc.stdout.readexactly(n))
                    size = sum(t[1] for t in reply.get("tables", []))
                    data = await proc.stdout.readexactly(size)
            except TimeoutError:
                await self.stop(kill=True)  # a hung child may not read its stdin: do not wait for it
                raise WorkerDied(f"worker timed out after {timeout_s} s on {header['op']}") from None
            except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError):
                await self.stop()
                raise WorkerDied(f"worker exited during {header['op']}: {self.stderr_tail()}") from None
        out = await asyncio.to_thread(_unpack_tables, reply, data)
        if not reply.get("ok"):
            raise WorkerError(str(reply.get("error")))
        return reply, out

    async def stop(self, *, kill: bool = False) -> None:
        """Close the child's stdin, wait up to 2 s for it to exit, then SIGKILL it (at once if ``kill``)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        try:
            async with asyncio.timeout(2):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        if self._stderr_task is not None:
            await self._stderr_task

    async def __aenter__(self) -> EngineWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass
class TwinStats:
    restarts: int = 0
    resets: int = 0
    """Workers discarded after an engine error in a state-changing call (state rebuilt from the history)."""
    calls: int = 0
    compute_s: float = 0.0
    last_latency_s: float = 0.0
    history: list[tuple[dict[str, Any], dict[str, pl.DataFrame]]] = field(default_factory=list)


class TwinEngine:
    """The twin's engine in a worker that survives crashes: state-changing calls are kept and replayed.

    The worker's state is always the replay of ``stats.history`` (the successful state-changing calls): a
    call that fails, by a crash, a hang or an engine error, leaves no trace in it.
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        timeout_s: float = 120.0,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.command = list(command or default_command())
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.stats = TwinStats()
        self._worker: EngineWorker | None = None

    @property
    def pid(self) -> int | None:
        return None if self._worker is None else self._worker.pid

    async def _ensure(self) -> EngineWorker:
        if self._worker is None:
            worker = EngineWorker(self.command)
            await worker.start()
            self._worker = worker  # a failure below is handled (and counted) by _call like any other
            # the child's interpreter start and imports (seconds on a loaded machine) are no call's timeout
            await worker.call({"op": "ping"}, timeout_s=self.startup_timeout_s)
            for header, tables in self.stats.history:  # rebuild the state exactly
                await worker.call(header, tables, timeout_s=self.timeout_s)
        return self._worker

    async def _call(
        self, header: dict[str, Any], tables: dict[str, pl.DataFrame] | None = None, *, record: bool
    ) -> dict[str, pl.DataFrame]:
        t0 = time.perf_counter()
        worker: EngineWorker | None = None
        try:
            worker = await self._ensure()
            reply, out = await worker.call(header, tables, timeout_s=self.timeout_s)
        except WorkerDied:
            self._worker = None
            self.stats.restarts += 1
            log.warning("worker_died", op=header["op"], restarts=self.stats.restarts)
            raise
        except WorkerError as e:
            if (
                record or worker is None
            ):  # state partly changed (or partly rebuilt) before the error: rebuild it
                stale, self._worker = self._worker, None
                self.stats.resets += 1
                if stale is not None:
                    await stale.stop()
                log.warning("worker_reset", op=header["op"], error=str(e), resets=self.stats.resets)
            raise
        if record:
            self.stats.history.append((header, tables or {}))
        self.stats.calls += 1
        self.stats.compute_s += float(reply.get("compute_s", 0.0))
        self.stats.last_latency_s = time.perf_counter() - t0
        return out

    async def init(
        self, topology: dict[str, Any], export_interval_ms: int, carbon: pl.DataFrame | None
    ) -> None:
        tables = {"carbon": carbon} if carbon is not None else None
        await self._call(
            {"op": "init", "topology": topology, "export_interval_ms": export_interval_ms},
            tables,
            record=True,
        )

    async def advance(self, until_ms: int, tasks: pl.DataFrame, fragments: pl.DataFrame) -> pl.DataFrame:
        out = await self._call(
            {"op": "advance", "until_ms": until_ms}, {"tasks": tasks, "fragments": fragments}, record=True
        )
        return out["rows"]

    async def finish(self) -> pl.DataFrame:
        return (await self._call({"op": "finish"}, record=True))["rows"]

    async def set_topology(self, topology: dict[str, Any]) -> None:
        await self._call({"op": "set_topology", "topology": topology}, record=True)

    async def snapshot(self, archive: str = "none") -> bytes:
        """The engine state now, pickled (warm starts of calibration candidates, what-ifs, proposals); changes
        nothing. ``archive="running"`` keeps the running tasks' fragments (needed for structural changes)."""
        out = await self._call({"op": "cal.snapshot", "archive": archive}, record=False)
        blob: bytes = out["snapshot"]["blob"][0]
        return blob

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
