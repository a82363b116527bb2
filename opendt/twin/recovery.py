"""How the twin's engine state survives: checkpoints, the resume after a restart, the rebuild after a crash.

* Every ``checkpoint.every_s`` of trace time (after the window ending there is durable) the loop writes a
  checkpoint (:mod:`opendt.twin.checkpoint`): the engine's snapshot and the state the twin needs to go on
  (:meth:`Recovery.state`).
* A restart restores the newest checkpoint at or before the last durable window and replays the durable
  windows after it from the input store (:mod:`opendt.twin.inputs`) — not from Kafka, not from the start.
  The stream is then consumed after the last durable window (:meth:`Recovery.stream_resume`).
* An engine worker that dies or hangs is replaced, and its state rebuilt the same way: the newest checkpoint,
  then the durable windows since, from the input store.

Before the resume, the stored inputs of the durable windows after the checkpoint are checked
(:meth:`Recovery.plan_resume`): from the first one that is missing or does not read back whole (a deleted
``inputs/``, a cut file; one log line names it), the windows come again from the stream — the replay producer
starts there, an external Kafka is sought to the positions recorded there (checkpoint or the window before)
— and are replayed into the engine as they arrive, their inputs stored again. When the stream cannot give
them again (the embedded broker without a replay, or positions no longer recorded) the twin stops with exit 1
naming the file (:class:`~opendt.twin.inputs.InputsLost`): never a silently different result.

Replaying a window applies it as it was simulated: under the topology version the journal records, skipped
when the journal says it failed (a failed window left no trace in the engine), its carbon steps carried to
the next window that was simulated.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from opendt.models.messages import CarbonRow
from opendt.settings import Settings
from opendt.stream.resume import Resume
from opendt.twin.checkpoint import Checkpoint, Checkpoints
from opendt.twin.inputs import InputsLost, InputStore, InputUnreadable, StoredWindow
from opendt.twin.results import ResultStore
from opendt.twin.topology import TopologyBox
from opendt.worker.client import TwinEngine
from opendt.workload import carbon_frame

log = structlog.get_logger(component="recovery")


@dataclass
class Durability:
    """Where a twin keeps what it needs to survive: its window inputs and its checkpoints."""

    inputs: InputStore
    checkpoints: Checkpoints
    every_ms: int
    """Checkpoint period (trace ms)."""
    keep: int
    """Checkpoints kept besides those within ``retention_ms``."""
    retention_ms: int
    """Window inputs and checkpoints kept behind the newest window (what-ifs, calibration, duplicates)."""


@dataclass
class ResumePlan:
    """How a restart brings the engine back to the last durable window."""

    end_ms: int
    """The end of the last durable window."""
    checkpoint: Checkpoint | None
    stored_until_ms: int
    """The durable windows after the checkpoint and before this are replayed from the input store; those
    from here to ``end_ms`` come again from the stream (their stored inputs are missing or not whole)."""
    problem: str | None = None
    """The first missing or unreadable input file (when ``stored_until_ms < end_ms``)."""


class Recovery:
    """Engine state from durable things: a checkpoint, then the stored inputs of the durable windows after
    it. ``applied`` tracks the topology version in the engine (shared with the loop)."""

    def __init__(
        self,
        durability: Durability,
        store: ResultStore,
        box: TopologyBox,
        twin: TwinEngine,
        *,
        export_interval_ms: int,
    ) -> None:
        self.d = durability
        self.store = store
        self.box = box
        self.twin = twin
        self.export_interval_ms = export_interval_ms
        self.resume_plan: ResumePlan | None = None
        """The plan :meth:`stream_resume` made (the loop's resume follows it)."""

    def load(self) -> None:
        self.d.inputs.load()
        self.d.checkpoints.load()

    def last_durable_end(self) -> int | None:
        w = self.store.windows
        return None if w.is_empty() else int(w["window_end"].dt.epoch("ms").max())  # type: ignore[arg-type]

    def base(self, until_ms: int | None) -> Checkpoint | None:
        """The checkpoint to start from for an engine that must reach ``until_ms``."""
        return None if until_ms is None else self.d.checkpoints.at_or_before(until_ms)

    def durable_after(self, lo_ms: int | None, hi_ms: int) -> list[int]:
        """Starts of the stored, durable windows in ``[lo_ms, hi_ms)`` (all before ``hi_ms`` if no lo)."""
        starts = self.d.inputs.between(-(2**62) if lo_ms is None else lo_ms, hi_ms)
        return [s for s in starts if self.store.is_durable(s)]

    def plan_resume(self) -> ResumePlan | None:
        """The newest whole checkpoint at or before the last durable window, and how far after it the stored
        inputs of the durable windows read back whole (None: nothing durable)."""
        end = self.last_durable_end()
        if end is None:
            return None
        ckpt = self.base(end)
        lo = None if ckpt is None else ckpt.at_ms
        durable = self.store.windows["window_start"].dt.epoch("ms").to_list()
        for s in sorted(int(x) for x in durable if (lo is None or x >= lo) and x < end):
            problem = self.d.inputs.problem(s)
            if problem is not None:
                return ResumePlan(end, ckpt, s, problem)
        return ResumePlan(end, ckpt, end)

    async def restore(self, ckpt: Checkpoint | None) -> int:
        """Put the engine in a checkpoint's state (a fresh engine on the initial topology without one);
        returns the topology version the engine then has."""
        if ckpt is not None:
            await self.twin.restore(ckpt.engine_blob())
            return int(ckpt.state["applied_version"])
        initial = self.box.initial
        if initial is None:
            raise RuntimeError("no checkpoint and no initial topology to rebuild the engine from")
        await self.twin.init(initial.to_json_dict(), self.export_interval_ms, None)
        return 0

    async def replay(self, sw: StoredWindow, applied: int, carbon: list[CarbonRow]) -> tuple[int, bool]:
        """Apply one durable window to the engine as it was simulated; returns the version in the engine and
        whether the window advanced it (``carbon`` collects the steps not yet given to the engine)."""
        w = sw.window
        carbon.extend(w.carbon)
        version = self.store.window_version(w.start_ms)
        if version is not None and version != applied:
            topo = self.box.of_version(version, self.store)
            if topo is None:
                log.warning("topology_version_unknown", version=version, window_start=w.start_ms)
            else:
                await self.twin.set_topology(topo.to_json_dict())
                applied = version
        if self.store.window_status(w.start_ms) != "ok":
            return applied, False  # a failed window left no trace in the engine
        await self.twin.advance(w.end_ms, sw.tasks, sw.fragments, carbon_frame(carbon) if carbon else None)
        carbon.clear()
        if w.final:
            await self.twin.finish()
        return applied, True

    async def rebuild(self, until_ms: int | None) -> int:
        """A new worker's engine up to ``until_ms`` (the end of the last durable window in the engine);
        returns the version in it."""
        ckpt = self.base(until_ms)
        applied = await self.restore(ckpt)
        carbon: list[CarbonRow] = []
        if until_ms is not None:
            for s in self.durable_after(None if ckpt is None else ckpt.at_ms, until_ms):
                applied, _ = await self.replay(self.d.inputs.read(s), applied, carbon)
        log.info("engine_rebuilt", checkpoint_ms=None if ckpt is None else ckpt.at_ms, until_ms=until_ms)
        return applied

    def stream_resume(self, external: bool, horizon_ms: int, *, replay: bool = True) -> Resume | None:
        """Where the stream goes on: after the last durable window, or, when stored inputs of durable windows
        are missing (:meth:`plan_resume`), at the first of them, where the stream gives them again (the
        replay producer starts there; an external Kafka is sought to the positions recorded there). The
        recent events before it are kept for duplicate detection. :class:`InputsLost` when the stream cannot
        give them again."""
        plan = self.resume_plan = self.plan_resume()
        if plan is None:
            return None
        at = plan.stored_until_ms
        starts = self.d.inputs.between(at - horizon_ms, at)
        r = Resume(next_start_ms=at, topology_known=True)  # durable windows were simulated on one
        r.run_start_ms = self.store.first_start_ms()
        for s in starts:
            try:
                sw = self.d.inputs.read(s)
            except InputUnreadable as e:  # older than the checkpoint: only duplicate detection misses it
                log.warning("input_unreadable", error=str(e))
                continue
            r.tasks.extend(sw.window.tasks)
            r.fragments.extend(sw.window.fragment_rows())
            r.power.extend(sw.window.power)
            if sw.window.carbon:
                r.carbon_until_ms = max(c.timestamp_ms for c in sw.window.carbon)
            if external and (s == starts[-1] if at == plan.end_ms else sw.window.end_ms == at):
                r.positions = dict(sw.positions)
        if at == plan.end_ms:
            return r
        lost = (
            f"stored inputs of durable windows are gone ({plan.problem}; {self._missing(at, plan.end_ms)} "
            f"window(s) from {at})"
        )
        if external:
            ckpt = plan.checkpoint
            if not r.positions and ckpt is not None and ckpt.at_ms == at:
                r.positions = {(str(t), int(p)): int(o) for t, p, o in ckpt.state.get("positions", [])}
            r.from_beginning = not r.positions and at == r.run_start_ms
            if not r.positions and not r.from_beginning:
                raise InputsLost(f"{lost}, and no stream position is recorded there to read them again")
            r.reread = lost
        elif not replay:
            raise InputsLost(
                f"{lost}, and the embedded broker without a replay cannot give them again: restore the files "
                "or start over (opendt run --fresh)"
            )
        log.warning("inputs_reread", error=lost, from_ms=at, until_ms=plan.end_ms,
                    source="kafka" if external else "replay")  # fmt: skip
        return r

    def _missing(self, lo_ms: int, hi_ms: int) -> int:
        w = self.store.windows["window_start"].dt.epoch("ms")
        return int(((w >= lo_ms) & (w < hi_ms)).sum())

    def state(self, applied: int, extra: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint keeps besides the engine."""
        return {"applied_version": applied, "box": self.box.to_state(), **extra}

    async def checkpoint(
        self, at_ms: int, applied: int, extra: dict[str, Any], blob: bytes | None = None
    ) -> bool:
        """Write a checkpoint at ``at_ms`` (the end of a durable window) and prune what is no longer needed;
        False (logged) when the engine's snapshot failed: the next checkpoint instant tries again. ``blob``:
        the engine's snapshot at ``at_ms`` (archive ``running``) when the caller has it already."""
        try:
            if blob is None:
                blob = await self.twin.snapshot(archive="running")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a missing checkpoint only lengthens a resume
            log.warning("checkpoint_failed", at_ms=at_ms, error=str(e))
            return False
        await asyncio.to_thread(self.d.checkpoints.save, at_ms, blob, self.state(applied, extra))
        keep_from = at_ms - self.d.retention_ms
        pruned = self.d.checkpoints.prune(keep_from, self.d.keep)
        oldest = self.d.checkpoints.instants[0] if self.d.checkpoints.instants else at_ms
        dropped = await asyncio.to_thread(self.d.inputs.prune, min(keep_from, oldest))
        # debug: one per checkpoint interval (168 on the SURF week) would flood the console at info
        log.debug("checkpoint_saved", at_ms=at_ms, bytes=len(blob), pruned=pruned, inputs_dropped=dropped)
        return True


def can_rewind(d: Durability, run_dir: Path, kept: list[int], end_ms: int) -> bool:
    """Whether a twin whose results files are damaged from some window on can go on from ``end_ms`` with
    only the durable windows ``kept`` (their starts) and re-read the rest from the stream: the engine can be
    rebuilt (the newest checkpoint at or before ``end_ms``, then the stored inputs of the kept windows after
    it) and the stream resumed (the last kept window's inputs hold its positions). Never with calibration,
    the optimizer or the OpenDC engine's history in the run: their journals would not go back with it."""
    if not kept or any((run_dir / n).exists() for n in ("calibration.parquet", "optimizer.jsonl", "opendc")):
        return False
    d.inputs.load()
    d.checkpoints.load()
    base = max((a for a in d.checkpoints.instants if a <= end_ms), default=None)
    need = [s for s in kept if base is None or s >= base]
    return all(d.inputs.has(s) for s in need) and d.inputs.has(kept[-1])


def durability_of(settings: Settings, run_dir: Path) -> Durability:
    """The run's input store and checkpoints, kept as long as what-ifs, calibration lookbacks and duplicate
    detection reach back (plus one checkpoint period)."""
    every = settings.checkpoint.every_s
    reach = [settings.api.whatif_max_range_s, settings.windowing.dedup_horizon_s]
    if settings.calibration.enabled:
        reach.append(settings.calibration.lookback_s)
    return Durability(
        InputStore(run_dir),
        Checkpoints(run_dir),
        every_ms=every * 1000,
        keep=settings.checkpoint.keep,
        retention_ms=(max(reach) + every) * 1000,
    )
