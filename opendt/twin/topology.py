"""The simulated topology and its one write path.

:class:`TopologyBox` holds the twin's current simulated topology (a :class:`SimTopology`: version, source,
reason) next to the physical one; the window loop applies a newer current version from its next window on.
:class:`TopologyWriter` is the only way a component changes it — the calibrator, the API and the optimizer
alike: the new version becomes current at once, is saved with the run when the loop applies it, and is
published on ``sim.topology`` for observers. The ``sim.topology`` listener
(:mod:`opendt.stream.listener`) offers versions written by other processes; the twin's own come back with a
version that is not newer and are ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from opendt.models.topology import Topology, parse_topology

if TYPE_CHECKING:
    from opendt.twin.results import ResultStore

log = structlog.get_logger(component="topology")


@dataclass
class SimTopology:
    version: int
    source: str
    reason: str
    topology: Topology
    timestamp_ms: int = 0


class TopologyBox:
    """The current simulated topology; the sim.topology listener and the API offer newer versions."""

    def __init__(self, physical: Topology) -> None:
        self.physical = physical
        self.current = SimTopology(0, "initial", "physical topology", physical)
        self._reserved = 0

    def next_version(self) -> int:
        """A version number no earlier offer or reservation has used (publishers call this first)."""
        self._reserved = max(self._reserved, self.current.version) + 1
        return self._reserved

    def offer(self, candidate: SimTopology) -> bool:
        if candidate.version <= self.current.version:
            return False
        self.current = candidate
        return True

    def of_version(self, version: int, store: ResultStore | None) -> Topology | None:
        """The topology of ``version``: the current one, the physical one (0), else the one the run saved
        (``None`` when unknown)."""
        if version == self.current.version:
            return self.current.topology
        if version == 0:
            return self.physical
        doc = None if store is None else store.load_topology(version)
        return None if doc is None else parse_topology(doc["topology"], source=f"run topology v{version}")

    def resume(self, store: ResultStore) -> bool:
        """Make the highest version an earlier process of the run saved (what it last applied) the current
        one, so it stays in effect and new versions follow its number (the embedded broker keeps no
        sim.topology history; an external one re-offers it, and older offers are ignored)."""
        doc = store.latest_topology()
        if doc is None:
            return False
        version = int(doc["version"])
        return self.offer(
            SimTopology(
                version,
                str(doc.get("source", "resumed")),
                str(doc.get("reason", "")),
                parse_topology(doc["topology"], source=f"run topology v{version}"),
                int(doc.get("timestamp_ms", 0)),
            )
        )


Publish = Callable[[SimTopology], Awaitable[None]]


class TopologyWriter:
    """Writes new simulated topologies: into the box at once, then onto ``sim.topology`` (``publish``)."""

    def __init__(self, box: TopologyBox, publish: Publish | None, now_ms: Callable[[], int]) -> None:
        self.box = box
        self.publish = publish
        self.now_ms = now_ms
        """Trace time stamped on a change made without an explicit instant (the watermark)."""

    async def write(
        self, topology: Topology, source: str, reason: str, *, at_ms: int | None = None
    ) -> SimTopology:
        """Make ``topology`` the current simulated topology (a new version); returns it."""
        sim = SimTopology(
            self.box.next_version(), source, reason, topology, self.now_ms() if at_ms is None else at_ms
        )
        self.box.offer(sim)
        log.info("topology_written", version=sim.version, source=source, reason=reason)
        if self.publish is not None:
            await self.publish(sim)
        return sim
