"""Liveness: is the twin still twinning? What ``/health`` answers besides "the daemon has not failed".

Two stalls make a twin that still answers HTTP useless, and neither shows as an error on its own:

* **the broker stops answering** (frozen, partitioned away, overloaded): the consumer just sees no new
  messages, exactly as on a quiet stream. :class:`Liveness` asks the broker for its metadata every
  ``interval_s`` (a fresh client, bounded by ``probe_timeout_s``); when no probe has succeeded for
  ``broker_limit_s``, the broker is reported as stalled.
* **the window loop stops moving** (a window that does not finish: a hung worker being retried, an engine
  that does not return): the loop reports since when it has been busy with its current window; busy
  longer than ``loop_limit_s`` is a stall.
* **the stream stops moving while records keep arriving** (a partition whose clock is stuck, a producer
  that re-sends old records): the watermark has not moved for ``stall_limit_s`` of wall time although the
  consumer received records in that time.

:meth:`Liveness.problems` lists what is wrong now (empty: healthy); ``/health`` answers 503 with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError

from opendt.models.messages import iso_ms

log = structlog.get_logger(component="liveness")

Probe = Callable[[], Awaitable[object]]
Clock = Callable[[], float]


def metadata_probe(bootstrap: str, timeout_s: float, security: Mapping[str, Any] | None = None) -> Probe:
    """A probe that returns once ``bootstrap`` answers a Kafka metadata request (a fresh client each time, so
    a hung request never blocks the daemon's own clients); raises on failure. ``security``: the client
    options of :func:`opendt.kafka.security.client_options`."""

    async def probe() -> None:
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **(security or {})
        )
        try:
            async with asyncio.timeout(timeout_s):
                await client.bootstrap()
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    return probe


class Liveness:
    """Broker and window-loop stall detection (see the module's doc)."""

    def __init__(
        self,
        probe: Probe | None,
        busy_since: Callable[[], float | None],
        *,
        interval_s: float,
        probe_timeout_s: float,
        broker_limit_s: float,
        loop_limit_s: float,
        stream: Callable[[], tuple[int | None, int]] | None = None,
        stall_limit_s: float = 300.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.probe = probe
        self.busy_since = busy_since
        """Since when (``clock``) the window loop has been busy with its current window; None when idle."""
        self.interval_s = interval_s
        self.probe_timeout_s = probe_timeout_s
        self.broker_limit_s = broker_limit_s
        self.loop_limit_s = loop_limit_s
        self.clock = clock
        self.broker_ok_at = clock()
        self.probes_failed = 0
        self.last_error = ""
        self.stream = stream
        """The consumer's (watermark, records received so far)."""
        self.stall_limit_s = stall_limit_s
        self._moved: tuple[float, int | None, int] | None = None  # (when, watermark, records) it last moved

    async def probe_once(self) -> bool:
        assert self.probe is not None
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                await self.probe()
        except (TimeoutError, OSError, KafkaError) as e:
            self.probes_failed += 1
            self.last_error = f"{type(e).__name__}: {e}"[:300] if str(e) else type(e).__name__
            log.warning("broker_probe_failed", error=self.last_error, failed=self.probes_failed)
            return False
        if self.probes_failed:
            log.info("broker_probe_ok", after_failures=self.probes_failed)
        self.probes_failed = 0
        self.broker_ok_at = self.clock()
        return True

    async def run(self) -> None:
        """Probe the broker every ``interval_s`` until cancelled (nothing to probe: return at once)."""
        if self.probe is None:
            return
        while True:
            await self.probe_once()
            self._stream_stall(self.clock())  # note when the watermark moves, whether /health is asked or not
            await asyncio.sleep(self.interval_s)

    def _stream_stall(self, now: float) -> str | None:
        if self.stream is None:
            return None
        watermark, records = self.stream()
        if self._moved is None or watermark != self._moved[1]:
            self._moved = (now, watermark, records)
            return None
        since, _, before = self._moved
        if now - since > self.stall_limit_s and records > before:
            at = "none yet" if watermark is None else iso_ms(watermark)
            n = records - before
            return (
                f"stream: the watermark ({at}) has not moved for {now - since:.0f} s while {n} records "
                f"arrived (limit {self.stall_limit_s:.0f} s; /api/status windows.waiting_for says why)"
            )
        return None

    def problems(self) -> list[str]:
        """What stalls now, each as a sentence (empty: the twin is live)."""
        now = self.clock()
        out: list[str] = []
        stall = self._stream_stall(now)
        if stall is not None:
            out.append(stall)
        silent = now - self.broker_ok_at
        if self.probe is not None and silent > self.broker_limit_s:
            out.append(
                f"broker: no metadata answer for {silent:.0f} s (limit {self.broker_limit_s:.0f} s; "
                f"last error: {self.last_error or 'none'})"
            )
        since = self.busy_since()
        if since is not None and now - since > self.loop_limit_s:
            out.append(
                f"window loop: busy with one window for {now - since:.0f} s (limit {self.loop_limit_s:.0f} s)"
            )
        return out
