"""The twin's observable state: components expose typed views, the daemon holds them, the API reads them.

Each component that shows something in ``GET /api/status`` is referenced here by a small protocol of what it
exposes (:class:`ConsumerView`, :class:`LoopView`, …), and answers with a typed status record
(:class:`WindowsStatus`, :class:`SimulationStatus`, …) or its own summary. :meth:`TwinState.snapshot`
composes the JSON document. Nothing here imports a component: the protocols keep the dependency pointing from
the components to this module, never back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from opendt.twin.liveness import Liveness
from opendt.twin.loopstats import LoopStats
from opendt.twin.topology import TopologyBox


@dataclass
class Counters:
    """Counted outside any component's own stats (the snapshot adds the windows counts)."""

    malformed_messages: int = 0


@dataclass(frozen=True)
class WorkloadInfo:
    """What the replay producer streams (the datacenter stand-in's workload directory)."""

    path: str
    name: str
    tasks: int
    fragments: int
    hosts: int
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class WindowsStatus:
    """The window-accumulating consumer."""

    watermark_ms: int | None
    events: int
    duplicates: int
    late: int
    malformed: int
    dead_lettered: int
    """Malformed and quarantined messages forwarded to the dead-letter topic (``kafka.topics.dead_letter``)"""
    quarantined: int
    """Messages refused as outliers in time (``windowing.max_skew_s``; see opendt/stream/timegate.py)."""
    conflicts: int
    """Task ids received again with other content (the first keeps the id; the later one is dead-lettered)."""
    finals_revoked: int
    """Final heartbeats taken back because their partition went on."""
    queued: int
    waiting_for: list[str]
    """What holds the windows back: the physical topology while none has come, and per input partition
    (``topic[partition]: ...``) its first message, or a message after the watermark."""
    last_late: dict[str, str] | None = None
    """The latest late record (its window was closed; dead-lettered): its ``time`` and ``window_start``."""
    other_datacenters: int = 0
    """Records of other datacenters on the partitions read (``kafka.datacenter``; skipped)."""
    orphans: int = 0
    """Fragments of tasks never received, dead-lettered once their window closed (or when
    ``windowing.max_orphans`` were held already)."""
    orphans_held: int = 0
    """Fragments held now until their task arrives (tasks and fragments are read from separate partitions)."""


@dataclass(frozen=True)
class SimulationStatus:
    """The window loop."""

    windows_simulated: int
    windows_failed: int
    windows_replayed: int
    windows_durable: int
    last_window_end_ms: int | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    worker_restarts: int
    topologies_refused: int
    """Simulated versions the engine could not apply (refused, the one before kept)."""
    done: bool
    engine: str = "builtin"
    """What simulates the windows' results (builtin | opendc); calibration, what-ifs and the optimizer always
    use the builtin engine."""
    opendc: dict[str, Any] | None = None
    """engine opendc: runs, their wall time, the cost per simulated hour, the subprocess pool's counters."""
    crosscheck: dict[str, Any] | None = None
    """simulation.verify_every_s: the latest cross-checks of the builtin engine against the OpenDC binary."""


LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Upper bounds of the window latency histogram (``opendt_window_latency_seconds``)."""


@dataclass
class LatencyHistogram:
    """Window latencies as fixed buckets (count per bucket, sum): constant size however long the run."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    """Per bucket (not cumulative); the last one is above every bound."""
    total_s: float = 0.0

    def observe(self, seconds: float) -> None:
        i = next((k for k, b in enumerate(self.bounds) if seconds <= b), len(self.bounds))
        self.counts[i] += 1
        self.total_s += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations ≤ it) per bucket, ending with (+inf, all)."""
        out, n = [], 0
        for b, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            n += c
            out.append((b, n))
        return out


@dataclass(frozen=True)
class PartitionOffsets:
    """Where the twin's consumer stands in one input partition (Kafka offsets)."""

    topic: str
    partition: int
    position: int
    """The next offset the consumer reads."""
    log_start: int | None
    """The partition's first offset still in the log (None when the broker did not answer in time)."""
    highwater: int | None
    """The partition's end (the offset the next record gets), as of the consumer's last fetch."""


class OffsetsView(Protocol):
    async def offsets(self) -> list[PartitionOffsets]: ...


class ConsumerView(Protocol):
    @property
    def watermark_ms(self) -> int | None: ...

    def status(self) -> WindowsStatus: ...


class LoopView(Protocol):
    done: asyncio.Event
    latency: LatencyHistogram

    @property
    def stats(self) -> LoopStats: ...

    def status(self) -> SimulationStatus: ...


class ReplayView(Protocol):
    def as_dict(self) -> dict[str, Any]: ...


class SummaryView(Protocol):
    """A component whose status is its own summary document (calibrator, scenario runner)."""

    def view(self) -> dict[str, Any]: ...


class OptimizerView(Protocol):
    def summary(self) -> dict[str, Any]: ...


@dataclass
class TwinState:
    status: str = "starting"
    stop_reason: str | None = None
    """Why the daemon shuts down (``signal``, ``done``: ``--exit-when-done``); None while it runs."""
    run_id: str = ""
    run_dir: str = ""
    started_at: float = field(default_factory=time.time)
    bootstrap_servers: str = ""
    api_url: str = ""
    workload: WorkloadInfo | None = None
    counters: Counters = field(default_factory=Counters)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once every component is built and the API serves (the daemon then starts its tasks)."""
    replay: ReplayView | None = None
    windows: ConsumerView | None = None
    loop: LoopView | None = None
    box: TopologyBox | None = None
    calibration: SummaryView | None = None
    scenarios: SummaryView | None = None
    optimizer: OptimizerView | None = None
    liveness: Liveness | None = None
    """Broker and window-loop stall detection (``/health``)."""
    offsets: OffsetsView | None = None
    """The input consumer's Kafka positions (``/metrics``: consumer lag, records ingested)."""

    @property
    def watermark_ms(self) -> int | None:
        return None if self.windows is None else self.windows.watermark_ms

    def watermark_or(self, default: int) -> int:
        """The current watermark, else ``default``."""
        wm = self.watermark_ms
        return default if wm is None else int(wm)

    def snapshot(self) -> dict[str, Any]:
        windows = None if self.windows is None else self.windows.status()
        sim = None if self.loop is None else self.loop.status()
        counters: dict[str, Any] = {
            "malformed_messages": self.counters.malformed_messages + (windows.malformed if windows else 0)
        }
        if sim is not None:
            counters.update(
                windows_simulated=sim.windows_simulated,
                windows_failed=sim.windows_failed,
                windows_skipped=sim.windows_replayed,
            )
        doc: dict[str, Any] = {
            "status": self.status,
            "run_id": self.run_id,
            "run_dir": self.run_dir,
            "uptime_s": round(time.time() - self.started_at, 3),
            "kafka": {"bootstrap_servers": self.bootstrap_servers},
            "api_url": self.api_url,
            "workload": None if self.workload is None else dataclasses.asdict(self.workload),
            "watermark_ms": self.watermark_ms,
            "replay": {} if self.replay is None else self.replay.as_dict(),
            "counters": counters,
        }
        if sim is not None:
            doc["simulation"] = dataclasses.asdict(sim)
        if windows is not None:
            doc["windows"] = dataclasses.asdict(windows)
        if self.box is not None and self.box.known:
            cur = self.box.current
            doc["topology"] = {"version": cur.version, "source": cur.source, "reason": cur.reason}
        if self.calibration is not None:
            doc["calibration"] = self.calibration.view()
        if self.scenarios is not None:
            doc["scenarios"] = self.scenarios.view()
        if self.optimizer is not None:
            doc["optimizer"] = self.optimizer.summary()
        return doc
