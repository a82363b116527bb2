"""What the consumer decides beside the time gate and the windower: whether a physical topology may wait for
its time (a bounded list), and the fragments of tasks never received as dead letters."""

from __future__ import annotations

import structlog

from opendt.kafka.client import RecordLike
from opendt.models.messages import iso_ms
from opendt.stream.records import row_item
from opendt.stream.topologies import MAX_PENDING_TOPOLOGIES
from opendt.stream.windowing import Windower

log = structlog.get_logger(component="consumer")


def admit_topology(windower: Windower, why: str | None, t_ms: int) -> tuple[str | None, bool]:
    """Why a physical topology dated ``t_ms`` is refused (``why``: the time gate's reason, or the waiting list
    is full of topologies dated before it), None when it may wait; and whether a waiting one dated further
    ahead was evicted for it (logged ``topology_evicted``)."""
    if why is not None or windower.pending_topologies < MAX_PENDING_TOPOLOGIES:
        return why, False
    evicted = windower.evict_furthest_topology(t_ms)
    if evicted is None:
        return (
            f"{MAX_PENDING_TOPOLOGIES} physical topologies dated before it already wait for their time (the "
            f"stream is at {iso_ms(windower.watermark_ms or 0)})"
        ), False
    log.warning("topology_evicted", timestamp=iso_ms(evicted), reason="the waiting list is full")
    return None, True


def take_orphans(windower: Windower) -> list[tuple[RecordLike, str]]:
    """The fragments of tasks never received that the windower refused since the last call, as dead letters
    (one log line for them all: a flood of them must not flood the log)."""
    if not windower.orphaned:
        return []
    out: list[tuple[RecordLike, str]] = [
        (row_item(h.source, h.offset, h.row), why) for h, why in windower.orphaned
    ]
    windower.orphaned.clear()
    log.warning("fragments_orphaned", count=len(out), first=out[0][1], held=windower.orphans_held)
    return out
