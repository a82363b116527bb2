"""The parent side of the engine worker processes (:mod:`opendt.worker.child`): the twin's state stays in a
child process; windows go in and rows come out over pipes (:mod:`opendt.worker.protocol`), so no process is
spawned per window.

:class:`EngineWorker` is one child (lifecycle of an aiokafka resource; started and stopped through
:class:`~opendt.worker.process.ChildProcess`). :class:`TwinEngine` keeps the history of the state-changing
calls and, when its child dies or hangs, kills it, starts a new one and replays the history so the state is
rebuilt exactly (the engine is deterministic).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import structlog

from opendt.worker.process import PIPE, ChildProcess, OutputTail
from opendt.worker.protocol import LEN, pack, unpack_tables

log = structlog.get_logger(component="worker")


class WorkerError(RuntimeError):
    """The engine in the worker raised: a deterministic failure of this request (not retried)."""


class WorkerDied(RuntimeError):
    """The worker process exited, hung past the timeout, or broke the protocol."""


def default_command() -> list[str]:
    return [sys.executable, "-m", "opendt.worker"]


STOP_GRACE_S = 2.0
"""How long a worker whose stdin was closed may take to exit before it is killed."""


class EngineWorker:
    """One child process speaking the frame protocol. ``call`` is serialized (one request at a time)."""

    def __init__(self, command: Sequence[str] | None = None) -> None:
        self.command = list(command or default_command())
        self._child: ChildProcess | None = None
        self._lock = asyncio.Lock()
        self._started = False

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("worker already started")
        self._started = True
        self._child = await ChildProcess.spawn(
            self.command, stdin=PIPE, capture_stdout=False, stderr_tail=OutputTail(4096), limit=2**26
        )

    def stderr_tail(self) -> str:
        return "" if self._child is None else " | ".join(self._child.stderr_tail.lines(5))

    async def call(
        self, header: dict[str, Any], tables: dict[str, pl.DataFrame] | None = None, *, timeout_s: float
    ) -> tuple[dict[str, Any], dict[str, pl.DataFrame]]:
        child = self._child
        proc = None if child is None else child.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise WorkerDied("worker not started")
        payload = await asyncio.to_thread(pack, header, tables)
        async with self._lock:
            try:
                async with asyncio.timeout(timeout_s):
                    proc.stdin.write(payload)
                    await proc.stdin.drain()
                    (n,) = LEN.unpack(await proc.stdout.readexactly(4))
                    reply = json.loads(await proc.stdout.readexactly(n))
                    size = sum(t[1] for t in reply.get("tables", []))
                    data = await proc.stdout.readexactly(size)
            except TimeoutError:
                await self.stop(kill=True)  # a hung child may not read its stdin: do not wait for it
                raise WorkerDied(f"worker timed out after {timeout_s} s on {header['op']}") from None
            except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError):
                tail = await self._stop_for_tail()
                raise WorkerDied(f"worker exited during {header['op']}: {tail}") from None
        out = await asyncio.to_thread(unpack_tables, reply, data)
        if not reply.get("ok"):
            raise WorkerError(str(reply.get("error")))
        return reply, out

    async def _stop_for_tail(self) -> str:
        child = self._child
        await self.stop()
        return "" if child is None else " | ".join(child.stderr_tail.lines(5))

    async def stop(self, *, kill: bool = False) -> None:
        """Close the child's stdin, wait up to ``STOP_GRACE_S`` for it to exit, then SIGKILL its group (at
        once if ``kill``)."""
        child, self._child = self._child, None
        if child is not None:
            await child.stop(0.0 if kill else STOP_GRACE_S, terminate=False)

    async def __aenter__(self) -> EngineWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass
class TwinStats:
    restarts: int = 0
    resets: int = 0
    """Workers discarded after an engine error in a state-changing call (their state then rebuilt)."""
    rebuilds: int = 0
    calls: int = 0
    compute_s: float = 0.0
    last_latency_s: float = 0.0


Rebuild = Callable[[], Awaitable[None]]


class TwinEngine:
    """The twin's engine in a worker that survives crashes.

    A call that fails, by a crash, a hang or an engine error in a state-changing call, leaves no trace: the
    worker is discarded, and before the next call a new one gets its state back through ``rebuild`` — the
    twin restores its newest checkpoint and replays the windows it made durable since, from its input store
    (:class:`~opendt.twin.loop.WindowLoop`). Nothing of the calls is kept here, so memory does not grow with
    the run.
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        timeout_s: float = 120.0,
        startup_timeout_s: float = 60.0,
        rebuild: Rebuild | None = None,
        max_tail_ms: int | None = None,
    ) -> None:
        self.command = list(command or default_command())
        self.max_tail_ms = max_tail_ms
        """:meth:`finish` simulates at most this far past the last ``advance`` (``simulation.max_tail_s``)."""
        self._until_ms: int | None = None
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.rebuild = rebuild
        self.stats = TwinStats()
        self._worker: EngineWorker | None = None
        self._has_state = False
        self._state_lost = False

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
            if self._state_lost and self.rebuild is not None:
                self._state_lost = False
                self.stats.rebuilds += 1
                try:
                    await self.rebuild()  # its calls go to this worker
                except BaseException:
                    self._state_lost = True
                    raise
        return self._worker

    def _lost(self) -> None:
        if self._has_state:
            self._state_lost = True

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
            self._lost()
            self.stats.restarts += 1
            log.warning("worker_died", op=header["op"], restarts=self.stats.restarts)
            raise
        except WorkerError as e:
            if record or worker is None:  # state partly changed (or partly rebuilt): rebuild it
                stale, self._worker = self._worker, None
                self._lost()
                self.stats.resets += 1
                if stale is not None:
                    await stale.stop()
                log.warning("worker_reset", op=header["op"], error=str(e), resets=self.stats.resets)
            raise
        if record:
            self._has_state = True
        self.stats.calls += 1
        self.stats.compute_s += float(reply.get("compute_s", 0.0))
        self.stats.last_latency_s = time.perf_counter() - t0
        return out

    async def restore(self, blob: bytes) -> None:
        """The engine of a snapshot (:meth:`snapshot`, a checkpoint's ``engine.bin``)."""
        snap = pl.DataFrame({"blob": [blob]}, schema={"blob": pl.Binary})
        await self._call({"op": "restore"}, {"snapshot": snap}, record=True)

    async def init(
        self, topology: dict[str, Any], export_interval_ms: int, carbon: pl.DataFrame | None
    ) -> None:
        tables = {"carbon": carbon} if carbon is not None else None
        await self._call(
            {"op": "init", "topology": topology, "export_interval_ms": export_interval_ms},
            tables,
            record=True,
        )

    async def advance(
        self,
        until_ms: int,
        tasks: pl.DataFrame,
        fragments: pl.DataFrame,
        carbon: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        tables = {"tasks": tasks, "fragments": fragments}
        if carbon is not None:
            tables["carbon"] = carbon
        out = await self._call({"op": "advance", "until_ms": until_ms}, tables, record=True)
        self._until_ms = until_ms
        return out["rows"]

    async def advance_many(
        self,
        windows: Sequence[tuple[int, pl.DataFrame, pl.DataFrame, pl.DataFrame | None]],
        *,
        snapshot: str | None = None,
    ) -> tuple[list[tuple[pl.DataFrame, float]], bytes | None]:
        """Several windows ``(until_ms, tasks, fragments, carbon)`` in one round trip, advanced one after the
        other exactly as as many :meth:`advance` calls: each window's rows and compute seconds; with
        ``snapshot`` (an archive mode of :meth:`snapshot`), the engine's snapshot after the last one too."""
        tables: dict[str, pl.DataFrame] = {}
        for i, (_, tasks, fragments, carbon) in enumerate(windows):
            tables[f"tasks{i}"], tables[f"fragments{i}"] = tasks, fragments
            if carbon is not None:
                tables[f"carbon{i}"] = carbon
        header = {"op": "advance_many", "untils": [w[0] for w in windows], "snapshot": snapshot}
        out = await self._call(header, tables, record=True)
        took = out["compute"]["s"].to_list()
        blob: bytes | None = None if snapshot is None else out["snapshot"]["blob"][0]
        return [(out[f"rows{i}"], float(took[i])) for i in range(len(windows))], blob

    async def finish(self) -> pl.DataFrame:
        """The tasks still running simulated to completion, at most ``max_tail_ms`` past the last ``advance``
        (then cut: logged ``tail_cut``): a task dated to run 10 years cannot make the twin integrate them."""
        cap = (
            None if self.max_tail_ms is None or self._until_ms is None else self._until_ms + self.max_tail_ms
        )
        rows: pl.DataFrame = (await self._call({"op": "finish", "until_ms": cap}, record=True))["rows"]
        if cap is not None and rows.height and rows["timestamp_absolute"].max() >= cap:  # type: ignore[operator]
            log.warning(
                "tail_cut", until_ms=cap, reason="tasks still run simulation.max_tail_s past the stream"
            )
        return rows

    async def set_topology(self, topology: dict[str, Any]) -> None:
        await self._call({"op": "set_topology", "topology": topology}, record=True)

    async def snapshot(self, archive: str = "none") -> bytes:
        """The engine state now, as data (warm starts of calibration candidates, what-ifs, proposals); changes
        nothing. ``archive="running"`` keeps the running tasks' fragments (needed for structural changes)."""
        out = await self._call({"op": "cal.snapshot", "archive": archive}, record=False)
        blob: bytes = out["snapshot"]["blob"][0]
        return blob

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop()
