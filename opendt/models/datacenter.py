"""Which datacenter a ``dc.*`` message belongs to, and the partition that carries it (DESIGN §4, §11).

Every ``dc.*`` message may name its datacenter in the Kafka header ``datacenter`` (UTF-8; absent =
``default``, so a single-datacenter stream needs nothing). All messages of a named datacenter go to one
partition of each topic: :func:`partition_for`, the partition Kafka's default partitioner picks for the
datacenter id as a key, i.e. ``(murmur2(utf8(id)) & 0x7fffffff) % partitions`` (Java:
``Utils.toPositive(Utils.murmur2(id.getBytes(UTF_8))) % numPartitions``). Records of several datacenters may
share a partition (fewer partitions than datacenters): a twin keeps those of its own datacenter and skips the
others (counted). The ``default`` datacenter's records may be spread over the partitions by their keys, as
before datacenters existed: a twin of ``default`` reads every partition.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aiokafka.partitioner import murmur2

HEADER = "datacenter"
DEFAULT = "default"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A datacenter id: 1–64 letters, digits, ``.``, ``_``, ``-``, starting with a letter or a digit (it names run
directories)."""
_ID = re.compile(ID_PATTERN)


def check_id(value: str) -> str:
    """``value`` if it is a valid datacenter id, else :class:`ValueError` saying what one is."""
    if not _ID.match(value):
        raise ValueError(
            f"datacenter id {value[:80]!r} is not 1-64 letters, digits, '.', '_' or '-' (starting with a "
            "letter or digit)"
        )
    return value


def partition_for(datacenter: str, partitions: int) -> int:
    """The partition of a topic with ``partitions`` partitions that carries ``datacenter``'s messages."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    hashed: int = murmur2(datacenter.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def header_of(headers: Iterable[tuple[str, bytes | None]] | None) -> str | None:
    """The datacenter a message names: its ``datacenter`` header, :data:`DEFAULT` without one; ``None`` when
    the header is not a valid id (the message is then nobody's)."""
    for key, value in headers or ():
        if key == HEADER:
            try:
                return check_id((value or b"").decode())
            except (UnicodeDecodeError, ValueError):
                return None
    return DEFAULT


def header(datacenter: str) -> tuple[tuple[str, bytes], ...]:
    """The headers that name ``datacenter`` (none for :data:`DEFAULT`: a stream of one datacenter is as
    before)."""
    return () if datacenter == DEFAULT else ((HEADER, datacenter.encode()),)
