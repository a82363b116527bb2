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
from typing import TYPE_CHECKING, Any

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


class TopologyUnknown(RuntimeError):
    """No physical topology has been received yet (the twin has nothing to simulate on)."""


class TopologyBox:
    """The twin's topologies: the physical one (what ``dc.topology`` says the datacenter is) and the current
    simulated one (a :class:`SimTopology`: version, source, reason). Empty until the first physical
    topology arrives; that one is version 0 ("initial")."""

    def __init__(self, physical: Topology | None = None) -> None:
        self._physical: Topology | None = None
        self.initial: Topology | None = None
        """The first physical topology (version 0)."""
        self._current: SimTopology | None = None
        self._reserved = 0
        if physical is not None:
            self.set_physical(physical)

    @property
    def known(self) -> bool:
        return self._current is not None

    @property
    def physical(self) -> Topology:
        if self._physical is None:
            raise TopologyUnknown("no physical topology has been received yet (dc.topology)")
        return self._physical

    @property
    def current(self) -> SimTopology:
        if self._current is None:
            raise TopologyUnknown("no physical topology has been received yet (dc.topology)")
        return self._current

    def set_physical(self, topology: Topology, at_ms: int = 0) -> bool:
        """Record a physical topology; the first one becomes the current simulated one (version 0). Returns
        whether it differs from the one before (the caller then writes a new simulated version)."""
        if self._physical is not None and self._physical == topology:
            return False
        first = self._physical is None
        self._physical = topology
        if first and self._current is None:
            self.initial = topology
            self._current = SimTopology(0, "initial", "physical topology", topology, at_ms)
        elif first:
            self.initial = topology
        return not first

    def to_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the box."""
        cur = self._current
        return {
            "physical": None if self._physical is None else self._physical.to_json_dict(),
            "initial": None if self.initial is None else self.initial.to_json_dict(),
            "current": None
            if cur is None
            else {
                "version": cur.version,
                "source": cur.source,
                "reason": cur.reason,
                "timestamp_ms": cur.timestamp_ms,
                "topology": cur.topology.to_json_dict(),
            },
            "reserved": self._reserved,
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        """The box as a checkpoint kept it (a version written after the checkpoint stays if newer)."""

        def topo(doc: dict[str, Any] | None, what: str) -> Topology | None:
            return None if doc is None else parse_topology(doc, source=f"checkpoint {what} topology")

        self._physical = topo(state.get("physical"), "physical")
        self.initial = topo(state.get("initial"), "initial")
        cur = state.get("current")
        if cur is not None:
            sim = SimTopology(
                int(cur["version"]),
                str(cur["source"]),
                str(cur["reason"]),
                parse_topology(cur["topology"], source="checkpoint simulated topology"),
                int(cur["timestamp_ms"]),
            )
            if self._current is None or sim.version >= self._current.version:
                self._current = sim
        self._reserved = max(self._reserved, int(state.get("reserved", 0)))

    def next_version(self) -> int:
        """A version number no earlier offer or reservation has used (publishers call this first)."""
        self._reserved = max(self._reserved, self.current.version) + 1
        return self._reserved

    def revert(self, to: SimTopology) -> None:
        """Make ``to`` (the version the engine still runs) current again: a newer version could not be
        applied. Version numbers go on from the highest one used."""
        if self._current is not None:
            self._reserved = max(self._reserved, self._current.version)
        self._current = to

    def offer(self, candidate: SimTopology) -> bool:
        if self._current is not None and candidate.version <= self._current.version:
            return False
        self._current = candidate
        return True

    def of_version(self, version: int, store: ResultStore | None) -> Topology | None:
        """The topology of ``version``: the current one, the physical one (0), else the one the run saved
        (``None`` when unknown)."""
        if self._current is not None and version == self._current.version:
            return self._current.topology
        if version == 0 and self.initial is not None:
            return self.initial
        doc = None if store is None else store.load_topology(version)
        return None if doc is None else parse_topology(doc["topology"], source=f"run topology v{version}")

    def resume(self, store: ResultStore) -> bool:
        """Make the highest version an earlier process of the run saved (what it last applied) the current
        one, so it stays in effect and new versions follow its number (the embedded broker keeps no
        sim.topology history; an external one re-offers it, and older offers are ignored)."""
        doc, version = None, store.latest_version()
        while version > 0 and doc is None:  # a saved version that no longer parses is set aside, not retried
            try:
                doc = store.load_topology(version)
                if doc is not None:
                    parse_topology(doc["topology"], source=f"run topology v{version}")
            except (ValueError, KeyError, TypeError) as e:
                to = store.refuse_topology(version)
                log.error("topology_skipped", version=version, error=str(e)[:500], moved_to=str(to))  # noqa: TRY400
                doc = None
            if doc is None:
                version -= 1
        if doc is None:
            doc = store.load_topology(0)
        if doc is None:
            return False
        if self._physical is None:  # stream mode: the hardware as the run last knew it
            first = store.load_topology(0)
            if first is not None:
                self.initial = parse_topology(first["topology"], source="run topology v0")
            physical = doc.get("physical")
            self._physical = (
                self.initial if physical is None else parse_topology(physical, source="run physical topology")
            )
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
