"""A bounded pool of candidate worker processes (long-lived, low CPU priority).

Candidate runs never go through the twin's worker: they run in ``size`` separate engine worker children
started under ``nice`` (so on a busy machine the twin's window simulations get the CPU first). Each worker
receives a round's base once (``cal.prepare``: snapshot + lookback inputs), then pulls candidates from a
shared queue (``cal.candidate``). A candidate that fails — the engine raises, the child dies or hangs past
``timeout_s`` — is reported as failed with its error; the dead child is replaced (and re-prepared) and the
round goes on.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import polars as pl
import structlog

from opendt.worker.client import EngineWorker, WorkerDied, WorkerError

log = structlog.get_logger(component="calibrator")


def candidate_command(nice: int) -> list[str]:
    code = f"import os; os.nice({int(nice)}); from opendt.worker.child import main; raise SystemExit(main())"
    return [sys.executable, "-c", code]


@dataclass
class RoundInput:
    """What every worker needs once per round (see :func:`opendt.worker.warm.prepare`)."""

    round_id: int
    header: dict[str, Any]
    tables: dict[str, pl.DataFrame]


@dataclass
class Outcome:
    rows: pl.DataFrame | None
    error: str = ""
    worker_s: float = 0.0
    stats: pl.DataFrame | None = None
    """Task statistics (what-if / optimizer bases only): :func:`~opendt.worker.warm.task_stats`."""


class _Slot:
    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self.worker: EngineWorker | None = None
        self.prepared: int | None = None

    async def ensure(self, rin: RoundInput, timeout_s: float) -> EngineWorker:
        if self.worker is None:
            self.worker = EngineWorker(self.command)
            await self.worker.start()
            self.prepared = None
        if self.prepared != rin.round_id:
            await self.worker.call(
                {"op": "cal.prepare", "round": rin.round_id, **rin.header}, rin.tables, timeout_s=timeout_s
            )
            self.prepared = rin.round_id
        return self.worker

    async def close(self) -> None:
        worker, self.worker = self.worker, None
        self.prepared = None
        if worker is not None:
            await worker.stop()


class CandidatePool:
    def __init__(
        self, size: int, *, timeout_s: float, nice: int = 10, command: Sequence[str] | None = None
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.timeout_s = timeout_s
        self.command = list(command) if command is not None else candidate_command(nice)
        self._slots = [_Slot(self.command) for _ in range(size)]
        self._lock = asyncio.Lock()
        self.restarts = 0

    @property
    def size(self) -> int:
        return len(self._slots)

    async def run(self, rin: RoundInput, topologies: Sequence[dict[str, Any]]) -> list[Outcome]:
        """Simulate every topology from the round's base; one :class:`Outcome` per topology, in order."""
        async with self._lock:  # one round at a time
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(len(topologies)):
                queue.put_nowait(i)
            results: list[Outcome | None] = [None] * len(topologies)

            async def drain(slot: _Slot) -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    results[i] = await self._one(slot, rin, topologies[i])

            async with asyncio.TaskGroup() as tg:
                for slot in self._slots[: max(1, min(len(self._slots), len(topologies)))]:
                    tg.create_task(drain(slot))
        return [r if r is not None else Outcome(None, "not run") for r in results]

    async def _one(self, slot: _Slot, rin: RoundInput, topology: dict[str, Any]) -> Outcome:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            worker = await slot.ensure(rin, self.timeout_s)
            reply, out = await worker.call(
                {"op": "cal.candidate", "round": rin.round_id, "topology": topology}, timeout_s=self.timeout_s
            )
            return Outcome(out["rows"], "", float(reply.get("compute_s", 0.0)), out.get("stats"))
        except WorkerError as e:
            return Outcome(None, f"engine error: {e}", loop.time() - t0)
        except WorkerDied as e:
            self.restarts += 1
            await slot.close()
            log.warning("candidate_worker_died", error=str(e), restarts=self.restarts)
            return Outcome(None, f"worker died: {e}", loop.time() - t0)

    async def stop(self) -> None:
        for slot in self._slots:
            await slot.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
