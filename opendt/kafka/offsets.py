"""The input consumer's standing in each partition it reads, for ``/metrics`` (consumer lag, records read).

:class:`ConsumerOffsets` answers :class:`~opendt.twin.status.OffsetsView` from an aiokafka consumer: its
position (local state), the partition's high watermark as of its last fetch (local state), and the log start
offsets (one broker request, bounded by ``timeout_s``, made again after ``refresh_s``, or ``retry_s`` when a
partition lacks one: the log start moves only with retention; None while the broker has not answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from opendt.twin.status import PartitionOffsets


class ConsumerOffsets:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        timeout_s: float = 2.0,
        refresh_s: float = 60.0,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.retry_s = retry_s
        self._clock = clock
        self._starts: dict[object, int] = {}
        self._tried_at: float | None = None

    async def offsets(self) -> list[PartitionOffsets]:
        tps = sorted(self.consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
        if not tps:
            return []
        now = self._clock()
        age = None if self._tried_at is None else now - self._tried_at
        missing = any(tp not in self._starts for tp in tps)
        if age is None or age >= self.refresh_s or (missing and age >= self.retry_s):
            self._tried_at = now
            with contextlib.suppress(TimeoutError, OSError, RuntimeError):
                async with asyncio.timeout(self.timeout_s):
                    self._starts = dict(await self.consumer.beginning_offsets(tps))
        starts = self._starts
        out: list[PartitionOffsets] = []
        for tp in tps:
            try:
                async with asyncio.timeout(self.timeout_s):
                    position = int(await self.consumer.position(tp))
                high = self.consumer.highwater(tp)
            except (TimeoutError, RuntimeError, AssertionError):  # unassigned meanwhile, or no position yet
                continue
            start = starts.get(tp)
            out.append(
                PartitionOffsets(
                    tp.topic,
                    tp.partition,
                    position,
                    None if start is None else int(start),
                    None if high is None else int(high),
                )
            )
        return out
