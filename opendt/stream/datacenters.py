"""The input consumer's side of datacenters on the wire (:mod:`opendt.models.datacenter`): which partitions a
twin reads and which records are its own."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from opendt.models.datacenter import DEFAULT, HEADER, header_of, partition_for

R = TypeVar("R")


async def input_partitions(
    consumer: AIOKafkaConsumer, topics: Iterable[str], datacenter: str
) -> list[TopicPartition]:
    """The partitions a twin of ``datacenter`` reads: every partition of each topic for :data:`DEFAULT` (its
    records may be spread by key), the datacenter's own partition otherwise."""
    tps: list[TopicPartition] = []
    await consumer.topics()  # refreshes the cluster metadata
    for topic in topics:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        if not parts:
            raise RuntimeError(f"topic {topic!r} has no partitions (does it exist?)")
        if datacenter != DEFAULT:
            parts = [parts[partition_for(datacenter, len(parts))]]
        tps.extend(TopicPartition(topic, p) for p in parts)
    return tps


class DatacenterFilter:
    """Keeps the records of one datacenter (header ``datacenter``; absent = :data:`DEFAULT`); the others, and
    those whose header is not a datacenter id, are skipped and counted in ``others``."""

    def __init__(self, datacenter: str = DEFAULT) -> None:
        self.datacenter = datacenter
        self.others = 0

    def keep(self, records: Sequence[R]) -> Sequence[R]:
        mine = self.datacenter
        named = [r for r in records if any(k == HEADER for k, _ in _headers(r))]
        if not named and mine == DEFAULT:  # the common case: a stream of one unnamed datacenter
            return records
        kept = [r for r in records if header_of(_headers(r)) == mine]
        self.others += len(records) - len(kept)
        return kept


def _headers(record: Any) -> Sequence[tuple[str, bytes | None]]:
    return record.headers or ()
