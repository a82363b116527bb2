"""What the consumer hands on and is handed: a closed window with the offsets a commit may reach, and where an
earlier process left the stream (a restart)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition

from opendt.models.messages import FragmentRow, PowerRow, TaskRow
from opendt.stream.windowing import Window


class InputsLost(RuntimeError):
    """Durable windows whose stored inputs are gone and that the stream cannot give again (the message names
    what is missing): the twin cannot resume without a silently different result."""


@dataclass
class Resume:
    """Where an earlier process of the run left the stream (a restart from a checkpoint)."""

    next_start_ms: int
    """The start of the first window not yet durable."""
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    """(topic, partition) → offset to consume from (external Kafka; empty for a fresh embedded broker)."""
    tasks: list[TaskRow] = field(default_factory=list)
    fragments: list[FragmentRow] = field(default_factory=list)
    power: list[PowerRow] = field(default_factory=list)
    """Recent events of durable windows, for duplicate detection."""
    carbon_until_ms: int | None = None
    """The newest carbon step already carried by a durable window."""
    topology_known: bool = False
    run_start_ms: int | None = None
    """The run's first window start (messages long before it are outliers)."""
    from_beginning: bool = False
    """Read every partition from its beginning (durable windows from the run's start must come again)."""
    reread: str | None = None
    """Durable windows come again from an external Kafka (what is missing): the positions sought must still
    be held by the topics, else the twin stops (:class:`~opendt.twin.inputs.InputsLost`)."""


@dataclass
class ClosedWindow:
    window: Window
    commit_offsets: dict[TopicPartition, int] = field(default_factory=dict)
