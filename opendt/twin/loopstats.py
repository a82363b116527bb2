"""The window loop's counters and its one failure: what ``/api/status`` shows of the simulator."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

LATENCY_SAMPLES = 2016
"""Window latencies kept for the status's p50/p95 (a week of 5-minute windows)."""


class WindowFailed(RuntimeError):
    """A window that could not be simulated: its worker died or hung each time, or the engine raised."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass
class LoopStats:
    windows_simulated: int = 0
    windows_failed: int = 0
    windows_replayed: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    """The latest windows' latencies (bounded: the status shows their p50/p95)."""
    last_window_end_ms: int | None = None
    checkpoints: int = 0
    batches: int = 0
    """Engine round trips that simulated several windows (:mod:`opendt.twin.batch`)."""
    topologies_refused: int = 0
    """Simulated versions the engine could not apply (the one before stays in effect)."""
