"""The simulation pool's vocabulary: priorities, the errors a run ends with, and what a run leaves behind
(its record, its result, the pool's load as the API shows it)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class Priority(IntEnum):
    """Lower value = served first."""

    HIGH = 0  # window simulations: the twin's critical path
    NORMAL = 1  # what-if requests
    LOW = 2  # calibration candidates and other bulk work


class SimulationError(Exception):
    """A simulator run failed: non-zero exit, timeout, or the pool shut down under it."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        stderr_tail: str = "",
        timed_out: bool = False,
        attempts: int = 1,
        label: str = "",
    ) -> None:
        self.message = message
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.timed_out = timed_out
        self.attempts = attempts
        self.label = label
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message
        if self.stderr_tail:
            text += "\n--- stderr (tail) ---\n" + self.stderr_tail.rstrip()
        return text


class PoolClosedError(SimulationError):
    """The pool was stopped (or never started) while the run was queued or running."""


@dataclass(frozen=True)
class RunRecord:
    """Bookkeeping of one finished run (all attempts), kept in :attr:`SimulationPool.history`."""

    label: str
    priority: Priority
    ok: bool
    attempts: int
    exit_code: int | None
    timed_out: bool
    cancelled: bool
    queued_s: float
    run_s: float
    finished_at: float  # time.time() epoch seconds


@dataclass(frozen=True)
class ProcessResult:
    """A successful run: exit code 0, the tails of both streams and the timings."""

    args: tuple[str, ...]
    returncode: int
    stdout_tail: str
    stderr_tail: str
    record: RunRecord


@dataclass(frozen=True)
class PoolLoad:
    """A snapshot for the API: what runs now, what waits (per priority), and the totals so far."""

    max_parallel: int
    running: int
    queued: int
    queued_by_priority: dict[str, int]
    completed: int
    failed: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_parallel": self.max_parallel,
            "running": self.running,
            "queued": self.queued,
            "queued_by_priority": dict(self.queued_by_priority),
            "completed": self.completed,
            "failed": self.failed,
        }
