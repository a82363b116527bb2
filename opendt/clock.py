"""Injected time: every read of "now" and every sleep goes through a :class:`Clock`."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A settable clock for tests: ``sleep`` advances time instantly (and yields to the loop)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)


class ReplayClock:
    """Maps trace time (ms) to wall time: ``speed`` trace seconds per wall second, or no waiting at all.

    Like SimPy's RealtimeEnvironment: all streams share one origin (set by :meth:`start`), so they stay
    aligned; gaps in the trace are preserved as gaps in wall time.
    """

    def __init__(self, clock: Clock, speed: float | None, trace_origin_ms: int) -> None:
        self.clock = clock
        self.speed = speed  # None = as fast as possible
        self.trace_origin_ms = trace_origin_ms
        self._wall_origin: float | None = None

    def start(self) -> None:
        if self._wall_origin is None:
            self._wall_origin = self.clock.monotonic()

    def wall_due(self, trace_ms: int) -> float:
        """Monotonic wall time at which the event at ``trace_ms`` is due."""
        assert self._wall_origin is not None, "start() first"
        if self.speed is None:
            return self._wall_origin
        return self._wall_origin + (trace_ms - self.trace_origin_ms) / 1000.0 / self.speed

    def lag_s(self, trace_ms: int) -> float:
        """How far behind schedule we are when sending the event at ``trace_ms`` (0 when early)."""
        return max(0.0, self.clock.monotonic() - self.wall_due(trace_ms))

    async def wait_until(self, trace_ms: int) -> None:
        if self.speed is None:
            return
        delay = self.wall_due(trace_ms) - self.clock.monotonic()
        if delay > 0:
            await self.clock.sleep(delay)
