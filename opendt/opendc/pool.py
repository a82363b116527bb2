"""A bounded, prioritised pool of simulator subprocesses (STYLE practices 10–12, DESIGN §7).

Every run is one :class:`~opendt.worker.process.ChildProcess` (never a shell) in its own session, so the child
and everything it spawns share one process group. The pool runs at most
``max_parallel`` children; callers beyond that wait in a priority queue, so a flood of low-priority runs
(calibration candidates) never delays a high-priority one (a window simulation): a freed slot always goes
to the best waiting priority, FIFO within a priority. Each attempt is bounded by ``asyncio.timeout``; on
timeout, cancellation or pool shutdown the whole process group is terminated, given a short grace period,
then killed, and the child is always waited for (no zombie of ours). Cancellation is re-raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import signal
import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import polars as pl
import structlog

from opendt.opendc.runs import PoolClosedError as PoolClosedError
from opendt.opendc.runs import PoolLoad as PoolLoad
from opendt.opendc.runs import Priority as Priority
from opendt.opendc.runs import ProcessResult as ProcessResult
from opendt.opendc.runs import RunRecord as RunRecord
from opendt.opendc.runs import SimulationError as SimulationError
from opendt.settings import SimulationSettings
from opendt.worker.process import ChildProcess, OutputTail

log = structlog.get_logger(__name__)

_TAIL_BYTES = 8192


@dataclass(frozen=True)
class _Exit:
    code: int | None
    timed_out: bool


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class SimulationPool:
    """Runs simulator commands with bounded concurrency, priorities, timeouts, retries and clean kills.

    Lifecycle as aiokafka's: :meth:`start` once (a second call raises), :meth:`stop` is idempotent, and the
    pool is an async context manager. Runs submitted before ``start`` or after ``stop`` raise
    :class:`PoolClosedError`.
    """

    def __init__(
        self,
        max_parallel: int = 2,
        timeout_s: float = 120.0,
        retries: int = 0,
        *,
        kill_grace_s: float = 2.0,
        tail_bytes: int = _TAIL_BYTES,
        history_size: int = 256,
    ) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.max_parallel = max_parallel
        self.timeout_s = timeout_s
        self.retries = retries
        self.kill_grace_s = kill_grace_s
        self.tail_bytes = tail_bytes
        self.history: deque[RunRecord] = deque(maxlen=history_size)
        self._started = False
        self._closed = False
        self._free = max_parallel
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._procs: set[ChildProcess] = set()
        self._running = 0
        self._completed = 0
        self._failed = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def from_settings(cls, settings: SimulationSettings) -> SimulationPool:
        return cls(max_parallel=settings.max_parallel, timeout_s=settings.timeout_s, retries=settings.retries)

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("SimulationPool.start() called twice")
        self._started = True

    async def stop(self) -> None:
        """Refuse new runs, fail queued ones, kill running children and wait until every run has ended."""
        if self._closed:
            return
        self._closed = True
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.future.done():
                w.future.set_exception(PoolClosedError("simulation pool stopped while the run was queued"))
        # Runs observe _closed and kill their own process groups; nudge them now so they do not wait
        # for their timeout.
        for child in list(self._procs):
            if child.returncode is None:
                child.signal(signal.SIGTERM)
        await self._idle.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._started and not self._closed:
            _warn(f"Unclosed SimulationPool {self!r}", ResourceWarning, source=self, stacklevel=1)

    @property
    def load(self) -> PoolLoad:
        by_prio = {p.name.lower(): 0 for p in Priority}
        for w in self._waiters:
            if not w.future.done():
                by_prio[Priority(w.priority).name.lower()] += 1
        return PoolLoad(
            max_parallel=self.max_parallel,
            running=self._running,
            queued=sum(by_prio.values()),
            queued_by_priority=by_prio,
            completed=self._completed,
            failed=self._failed,
        )

    # -- slots (a priority semaphore) --------------------------------------------------------------------

    async def _acquire(self, priority: Priority) -> None:
        if self._closed or not self._started:
            raise PoolClosedError("simulation pool is not running")
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(int(priority), next(self._seq), fut)
        heapq.heappush(self._waiters, waiter)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release()  # the slot was handed to us just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                    heapq.heapify(self._waiters)
            raise

    def _release(self) -> None:
        while self._waiters:
            w = heapq.heappop(self._waiters)
            if not w.future.done():
                w.future.set_result(None)  # hand the slot over directly: no barging
                return
        self._free += 1

    # -- running -----------------------------------------------------------------------------------------

    async def run(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        priority: Priority = Priority.HIGH,
        timeout_s: float | None = None,
        retries: int | None = None,
        label: str = "",
    ) -> ProcessResult:
        """Run ``args`` to a zero exit; raise :class:`SimulationError` after ``1 + retries`` failed attempts.

        Each attempt holds a slot only while its process runs; a retry queues again at the same priority.
        ``timeout_s`` bounds one attempt (queueing time does not count).
        """
        argv = tuple(os.fspath(a) for a in args)
        if not argv:
            raise ValueError("empty command")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        max_attempts = 1 + (self.retries if retries is None else retries)
        label = label or Path(argv[0]).name
        queued_s = run_s = 0.0
        attempt = 0
        last: SimulationError | None = None
        outcome: ProcessResult | SimulationError | None = None
        cancelled = False
        try:
            while attempt < max_attempts:
                attempt += 1
                t0 = time.monotonic()
                await self._acquire(priority)
                t1 = time.monotonic()
                queued_s += t1 - t0
                try:
                    rc, out, err = await self._run_once(argv, cwd, env, timeout, label)
                finally:
                    run_s += time.monotonic() - t1
                    self._release()
                if rc.timed_out or rc.code != 0:
                    last = self._failure(rc, err, attempt, label, timeout)
                    log.warning(
                        "simulation attempt failed",
                        label=label,
                        attempt=attempt,
                        of=max_attempts,
                        exit_code=rc.code,
                        timed_out=rc.timed_out,
                    )
                    if self._closed:
                        break
                    continue
                record = self._record(label, priority, True, attempt, 0, False, False, queued_s, run_s)
                outcome = ProcessResult(argv, 0, out.text(), err.text(), record)
                return outcome
            assert last is not None
            outcome = last
            raise last
        except asyncio.CancelledError:
            cancelled = True
            raise
        except SimulationError as e:
            outcome = e
            raise
        finally:
            if not isinstance(outcome, ProcessResult):
                err_ = outcome if isinstance(outcome, SimulationError) else None
                self._record(
                    label,
                    priority,
                    False,
                    attempt,
                    err_.exit_code if err_ else None,
                    err_.timed_out if err_ else False,
                    cancelled,
                    queued_s,
                    run_s,
                )

    def _failure(
        self, rc: _Exit, err: OutputTail, attempt: int, label: str, timeout: float
    ) -> SimulationError:
        cls = PoolClosedError if self._closed else SimulationError
        if rc.timed_out:
            msg = f"{label}: timed out after {timeout:g} s (attempt {attempt}); process group killed"
        elif self._closed:
            msg = f"{label}: simulation pool stopped while the run was in progress"
        else:
            msg = f"{label}: exited with code {rc.code} (attempt {attempt})"
        return cls(
            msg,
            exit_code=rc.code,
            stderr_tail=err.text(),
            timed_out=rc.timed_out,
            attempts=attempt,
            label=label,
        )

    def _record(
        self,
        label: str,
        priority: Priority,
        ok: bool,
        attempts: int,
        exit_code: int | None,
        timed_out: bool,
        cancelled: bool,
        queued_s: float,
        run_s: float,
    ) -> RunRecord:
        rec = RunRecord(
            label=label,
            priority=priority,
            ok=ok,
            attempts=attempts,
            exit_code=exit_code,
            timed_out=timed_out,
            cancelled=cancelled,
            queued_s=queued_s,
            run_s=run_s,
            finished_at=time.time(),
        )
        self.history.append(rec)
        if ok:
            self._completed += 1
        else:
            self._failed += 1
        return rec

    async def _run_once(
        self,
        argv: tuple[str, ...],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        limit_s: float,
        label: str,
    ) -> tuple[_Exit, OutputTail, OutputTail]:
        if self._closed:
            raise PoolClosedError("simulation pool stopped")
        self._running += 1
        self._idle.clear()
        try:
            proc = await self._spawn(argv, cwd, env, label)
            return await self._supervise(proc, limit_s, label)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def _spawn(
        self, argv: tuple[str, ...], cwd: Path | None, env: Mapping[str, str] | None, label: str
    ) -> ChildProcess:
        try:
            child = await ChildProcess.spawn(
                argv,
                stdout_tail=OutputTail(self.tail_bytes),
                stderr_tail=OutputTail(self.tail_bytes),
                cwd=cwd,
                env=env,
            )
        except OSError as e:
            raise SimulationError(f"{label}: cannot start {argv[0]!r}: {e}", label=label) from e
        log.debug("simulation started", label=label, pid=child.pid)
        return child

    async def _supervise(
        self, child: ChildProcess, limit_s: float, label: str
    ) -> tuple[_Exit, OutputTail, OutputTail]:
        self._procs.add(child)
        timed_out = False
        finished = False
        try:
            # When stop() ran while we were spawning, it could not signal this child: reap it right away.
            if not self._closed:
                try:
                    async with asyncio.timeout(limit_s):
                        await child.wait()
                        finished = not self._closed
                except TimeoutError:
                    timed_out = True
                    log.warning("simulation timed out", label=label, pid=child.pid, timeout_s=limit_s)
        finally:
            if not finished:
                await child.stop(self.kill_grace_s)  # terminate → grace → kill the group → wait
            self._procs.discard(child)
        return _Exit(child.returncode, timed_out), child.stdout_tail, child.stderr_tail

    # -- results -----------------------------------------------------------------------------------------

    @staticmethod
    async def read_parquet(path: Path) -> pl.DataFrame:
        """Read a parquet file in a worker thread, off the event loop."""
        return await asyncio.to_thread(pl.read_parquet, path)
