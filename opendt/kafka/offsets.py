"""The input consumer's standing in each partition it reads, for ``/metrics`` (consumer lag, records read).

:class:`ConsumerOffsets` answers :class:`~opendt.twin.status.OffsetsView` from an aiokafka consumer: its
position (local state), the partition's high watermark as of its last fetch (local state), and the log start
offsets (one broker request, bounded by ``timeout_s``; None when it does not answer in time).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer

from opendt.twin.status import PartitionOffsets


class ConsumerOffsets:
    def __init__(self, consumer: AIOKafkaConsumer, timeout_s: float = 2.0) -> None:
        self.consumer = consumer
        self.timeout_s = timeout_s

    async def offsets(self) -> list[PartitionOffsets]:
        tps = sorted(self.consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
        if not tps:
            return []
        starts: dict[object, int] = {}
        with contextlib.suppress(TimeoutError, OSError, RuntimeError):
            async with asyncio.timeout(self.timeout_s):
                starts = dict(await self.consumer.beginning_offsets(tps))
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
