"""Warm-started candidate runs, executed inside engine worker processes (ops ``cal.*``).

* ``cal.snapshot`` (twin worker): the engine state now, as data (:mod:`opendt.engine.state`: a JSON tree and
  numeric arrays, zstd-compressed, checksummed; never pickle: nothing read back runs code). The
  fragment archive is left out by default: it only serves structural topology changes (re-queued tasks
  restart from their first fragment), which the calibration search space refuses (see
  :mod:`opendt.calibration.space`), and it grows with the whole trace, while the rest of the state stays
  bounded. With
  ``"archive": "running"`` (what-if and optimizer bases) the archive is kept for the tasks running now, the
  only ones a structural change can re-queue, so the snapshot stays bounded too.
* ``cal.prepare`` (candidate worker): keep one round's base — a snapshot (or, when the lookback starts
  before the twin's first window, a fresh engine spec) — and the lookback's tasks and fragments.
* ``cal.candidate``: load the base, ``set_topology(candidate)``, switch the export grid to the meter's
  interval, advance through the lookback's inputs to its end, and return one row per export instant whose
  whole interval lies inside the lookback (summed over clusters). What-if and optimizer runs instead keep
  the twin's export grid (``regrid`` false) and may pre-roll: the snapshot advances with its own topology to
  ``apply_at_ms`` before the candidate topology takes over; their rows (``full``) carry carbon as well.

Advancing once over the whole lookback equals advancing window by window (the engine is causal and
incremental == one-shot); the candidate with the twin's own topology reproduces the twin's rows.

Power-only candidates: the schedule (which task runs where, when) depends on cores and memory only, never on
the power model or the core speed's effect on power. So the first calibration candidate of a round keeps its
run's per-host demand segments (:class:`Schedule`), and every later candidate with the same hosts and
capacities only re-evaluates its power models over them and integrates the export grid
(:func:`opendt.engine.rows.integrate_window`, the engine's own integration): the same rows, bit for bit, in a
few milliseconds instead of a whole re-simulation (``tests/calibration/test_warm.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from opendt.engine.state import dumps, loads, unpack

if TYPE_CHECKING:
    from opendt.engine import Engine
    from opendt.engine.carbon import CarbonTrace
    from opendt.engine.hosts import HostTable
    from opendt.engine.placement import Scheduler
    from opendt.engine.power import F64, I64
    from opendt.engine.rows import ExportGrid
    from opendt.engine.segments import SegmentSet

OPS = ("cal.snapshot", "cal.prepare", "cal.candidate")


def snapshot(engine: Engine, archive: str = "none") -> bytes:
    """The engine's state as data (:func:`load_snapshot` reads it back); ``archive`` "none" drops the
    fragment archive, "running" keeps that of running tasks only (what a structural topology change can
    re-queue)."""
    kept = engine.frags.archive
    if archive == "running" and kept:
        from opendt.engine.placement import RUNNING

        state = np.asarray(engine.sched.state)
        parts = [np.concatenate(col) for col in zip(*kept, strict=True)]
        live = state[parts[0]] == RUNNING
        engine.frags.archive = [(parts[0][live], parts[1][live], parts[2][live], parts[3][live])]
        # only a running task restarts from its fragments (a finished one never runs again, a queued one has
        # none archived): the engine keeps the compacted archive, as a restored snapshot has it, so the next
        # snapshot does not go over every fragment the run has seen again, nor its memory grow with them
        kept = engine.frags.archive
    elif archive not in ("none", "running"):
        raise ValueError(f"archive: must be 'none' or 'running', not {archive!r}")
    else:
        engine.frags.archive = None if archive == "none" else kept
    try:
        return dumps(engine)
    finally:
        engine.frags.archive = kept


def unpack_snapshot(blob: bytes) -> bytes:
    """The checked, decompressed content of a :func:`snapshot` (:class:`~opendt.engine.state.StateError`
    when it is damaged, cut or of another format; content is returned as it is)."""
    return unpack(blob)


def load_snapshot(blob: bytes) -> Engine:
    """The engine of a :func:`snapshot` (or of its :func:`unpack_snapshot`); data only, no code runs."""
    return loads(blob)


@dataclass
class RoundBase:
    blob: bytes | None
    """The snapshot's content (:func:`unpack_snapshot`), None for a fresh engine."""
    init_topology: dict[str, Any] | None
    carbon: pl.DataFrame | None
    tasks: pl.DataFrame
    fragments: pl.DataFrame
    until_ms: int
    interval_ms: int
    apply_at_ms: int | None = None
    """Pre-roll: advance with the snapshot's own topology to here, then switch to the candidate's."""
    regrid: bool = True
    full: bool = False
    schedule: Schedule | None = None
    """The demand segments of the round's first calibration candidate (power-only replays reuse them)."""


@dataclass
class Schedule:
    """One lookback run's demand, what any power model on the same hosts integrates to its rows."""

    hosts: HostTable
    t0: int
    t_lo: int
    until_rel: int
    export: ExportGrid
    """The export grid as the run started (copied for each replay)."""
    carbon: list[CarbonTrace | None]
    special: set[int]
    demand: tuple[I64, I64, I64, F64]
    """Per-host demand segments over the lookback (host, start, end, MHz), as the run integrated them."""

    def fits(self, hosts: HostTable) -> bool:
        return self.hosts.same_structure(hosts) and bool(np.array_equal(self.hosts.capacity, hosts.capacity))


class _Replay:
    """The :class:`~opendt.engine.rows.Integrable` of a schedule under another power model."""

    def __init__(self, sch: Schedule, hosts: HostTable) -> None:
        import copy

        from opendt.engine.segments import SegmentSet

        self.t0: int | None = sch.t0
        self.t_lo = sch.t_lo
        self.hosts = hosts
        self.carbon = sch.carbon
        self.unknown_carbon = False  # candidates are scored on power only
        self.carbon_from: int | None = None
        self.segs = SegmentSet.empty()
        self.export = copy.deepcopy(sch.export)
        self.activity = False  # candidates are scored on power only
        self.sched: Scheduler | None = None
        self._sch = sch

    def special_instants(self) -> set[int]:
        return self._sch.special

    def host_demand(self, s: SegmentSet) -> tuple[I64, I64, I64, F64]:  # the schedule's, whatever s
        return self._sch.demand

    def power_segments(self, h: I64, st: I64, en: I64, d: F64) -> tuple[I64, I64, I64, F64]:
        """As :meth:`opendt.engine.Engine.power_segments`, with this replay's power models."""
        u = np.minimum(d / self.hosts.capacity[h], 1.0)
        x = self.hosts.power.evaluate(h, u)
        x -= self.hosts.power.idle_power()[h]
        return self.hosts.cluster[h], st, en, x


def _replay(sch: Schedule, hosts: HostTable) -> pl.DataFrame:
    from opendt.engine.rows import integrate_window
    from opendt.engine.table import to_polars

    return to_polars(integrate_window(_Replay(sch, hosts), sch.until_rel, final=False))


def prepare(header: dict[str, Any], tables: dict[str, pl.DataFrame]) -> RoundBase:
    # decompressed and checked once here: every candidate of the round loads its own copy
    blob = unpack_snapshot(tables["snapshot"]["blob"][0]) if "snapshot" in tables else None
    return RoundBase(
        blob=blob,
        init_topology=header.get("init_topology"),
        carbon=tables.get("carbon"),
        tasks=tables["tasks"],
        fragments=tables["fragments"],
        until_ms=int(header["until_ms"]),
        interval_ms=int(header["export_interval_ms"]),
        apply_at_ms=None if header.get("apply_at_ms") is None else int(header["apply_at_ms"]),
        regrid=bool(header.get("regrid", True)),
        full=bool(header.get("full", False)),
    )


def _split(
    base: RoundBase, at_ms: int
) -> tuple[tuple[pl.DataFrame, pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]]:
    """Inputs before ``at_ms`` and after: tasks by submission; fragments go with their task, those of tasks
    the snapshot already knows go early (the twin had them by then)."""
    late = base.tasks.filter(pl.col("submission_ms") >= at_ms)
    frag_late = pl.col("id").is_in(late["id"].implode())
    return (base.tasks.filter(pl.col("submission_ms") < at_ms), base.fragments.filter(~frag_late)), (
        late,
        base.fragments.filter(frag_late),
    )


def _full_rows(rows: pl.DataFrame, after_ms: int) -> pl.DataFrame:
    """Rows at instants in (after_ms, …], summed over clusters (intensity: the first cluster's)."""
    cols = {
        "timestamp_absolute": pl.Int64,
        "power_draw": pl.Float64,
        "energy_usage": pl.Float64,
        "carbon_intensity": pl.Float64,
        "carbon_emission": pl.Float64,
    }
    if rows.is_empty():
        return pl.DataFrame(schema=cols)
    return (
        rows.filter(pl.col("timestamp_absolute") > after_ms)
        .group_by("timestamp_absolute", maintain_order=True)
        .agg(
            pl.col("power_draw").sum(),
            pl.col("energy_usage").sum(),
            pl.col("carbon_intensity").first(),
            pl.col("carbon_emission").sum(),
        )
        .sort("timestamp_absolute")
        .cast(cols)  # type: ignore[arg-type]
        .with_columns(pl.col("carbon_intensity", "carbon_emission").fill_nan(None))  # unknown: null
    )


TASK_STATS_SCHEMA = {
    "tasks_submitted": pl.Int64,
    "tasks_started": pl.Int64,
    "tasks_finished": pl.Int64,
    "tasks_waiting": pl.Int64,
    "tasks_requeued": pl.Int64,
    "wait_drained": pl.Boolean,
    "wait_p95_s": pl.Float64,
    "wait_mean_s": pl.Float64,
    "runtime_mean_s": pl.Float64,
}


def task_stats(engine: Engine, lo_ms: int, hi_ms: int, *, drain: bool = False) -> pl.DataFrame:
    """One row about the tasks of [lo_ms, hi_ms) (absolute).

    Waits: of the tasks submitted in the range, ``schedule − submission``; of the tasks a topology change
    sent back to the queue in the range (``tasks_requeued``: their host was removed and no other had room),
    ``restart − re-queue``. ``tasks_waiting``: those still queued at ``hi_ms``. Their wait is the wait so far,
    unless ``drain``: then the scheduler runs on past ``hi_ms`` with no further input until they have all
    started, which gives their exact start (``wait_drained``): the queue is strict FIFO with head-of-line
    blocking, so later submissions cannot overtake them, and a running task lasts at least its declared
    duration (:meth:`~opendt.engine.placement.Scheduler.drain`; its known fragments when the task frames had
    no duration). That needs NoDelay (under Perfect scaling completions come from the fluid model, and the
    wait so far is kept). ``drain`` consumes the engine's scheduler: call it last. Tasks that can never fit
    are left out. Run times: ``finish − schedule`` of the tasks finished in the range. Null where nothing
    qualifies."""
    from opendt.engine.placement import TERMINATED

    s = engine.sched
    if engine.t0 is None or not s.sub:
        return pl.DataFrame([{k: 0 if v == pl.Int64 else None for k, v in TASK_STATS_SCHEMA.items()}],
                            schema=TASK_STATS_SCHEMA)  # fmt: skip
    lo, hi = lo_ms - engine.t0, hi_ms - engine.t0
    sub, finish = np.asarray(s.sub), np.asarray(s.finish)
    start_at_hi = np.asarray(s.start)
    drained = drain and not s.external_completions
    if drained:
        s.drain()  # no input arrives: every queued task starts (or is found to never fit)
    start = np.asarray(s.start)
    state = np.asarray(s.state)
    live = state != TERMINATED
    back = {i: t for i, t in s.requeued_at.items() if lo <= t < hi}
    since = sub.copy()  # when each task's wait began: its submission, or its re-queue in the range
    requeued = np.zeros(sub.size, dtype=np.bool_)
    if back:
        idx = np.fromiter(back, dtype=np.int64, count=len(back))
        since[idx] = np.fromiter(back.values(), dtype=np.int64, count=len(back))
        requeued[idx] = True
    requeued &= live
    mine = (((sub >= lo) & (sub < hi)) | requeued) & live
    started = mine & (start_at_hi >= 0) & (start_at_hi < hi)
    resolved = mine & (start >= 0) if drained else started
    wait = (np.where(resolved, start, hi) - since)[mine] / 1000
    done = (start_at_hi >= 0) & (finish >= 0) & (finish > lo) & (finish <= hi)
    run = (finish - start_at_hi)[done] / 1000
    return pl.DataFrame(
        [
            {
                "tasks_submitted": int(((sub >= lo) & (sub < hi) & live).sum()),
                "tasks_started": int(started.sum()),
                "tasks_finished": int(done.sum()),
                "tasks_waiting": int((mine & ~started).sum()),
                "tasks_requeued": int(requeued.sum()),
                "wait_drained": drained,
                "wait_p95_s": float(np.percentile(wait, 95)) if wait.size else None,
                "wait_mean_s": float(wait.mean()) if wait.size else None,
                "runtime_mean_s": float(run.mean()) if run.size else None,
            }
        ],
        schema=TASK_STATS_SCHEMA,
    )


def run_candidate(
    base: RoundBase, topology: dict[str, Any], extra: dict[str, pl.DataFrame] | None = None
) -> pl.DataFrame:
    """The candidate's rows; with ``full`` bases, ``extra["stats"]`` gets :func:`task_stats` of the range.
    A calibration candidate (regridded, no pre-roll) whose hosts fit the round's :class:`Schedule` is a
    power-only replay of it."""
    import copy

    from opendt.engine import Engine
    from opendt.engine.hosts import build_hosts
    from opendt.models.topology import parse_topology

    topo = parse_topology(topology, source="candidate")
    replayable = base.regrid and not base.full and base.apply_at_ms is None
    if replayable and base.schedule is not None:
        hosts = build_hosts(topo)
        if base.schedule.fits(hosts):
            return _calibration_rows(_replay(base.schedule, hosts), base.interval_ms, base.schedule.t_lo)
    tasks, fragments = base.tasks, base.fragments
    warm: Engine | None = None
    if base.blob is not None:
        warm = load_snapshot(base.blob)
    elif base.apply_at_ms is not None and base.init_topology is not None:
        init = parse_topology(base.init_topology, source="initial topology")
        warm = Engine(init, export_interval_ms=base.interval_ms, carbon=base.carbon, unknown_carbon=True)
    if warm is not None:
        if base.apply_at_ms is not None:  # pre-roll with the base's own topology
            (pre_t, pre_f), (tasks, fragments) = _split(base, base.apply_at_ms)
            warm.advance(base.apply_at_ms, pre_t, pre_f, base.carbon)
        warm.set_topology(topo)
        if base.regrid:
            warm.set_export_interval(base.interval_ms)
        engine = warm
    else:
        engine = Engine(topo, export_interval_ms=base.interval_ms, carbon=base.carbon, unknown_carbon=True)
    start_rel = engine.t_lo
    before = (engine.segs, copy.deepcopy(engine.export))
    if replayable:
        engine.history = []
    carried = (float(engine.export.carried_energy.sum()), float(engine.export.carried_carbon.sum()))
    rows = engine.advance(base.until_ms, tasks, fragments, base.carbon)
    if base.full:
        lo = base.apply_at_ms if base.apply_at_ms is not None else -(2**62)
        if extra is not None:
            # the exact integral over [t_lo, until): the rows' energy, less what the first row carried from
            # before t_lo, plus what the interval in progress holds at until (the same for carbon)
            ended = (float(engine.export.carried_energy.sum()), float(engine.export.carried_carbon.sum()))
            exact = [
                (float(rows[c].sum()) if rows.height else 0.0) - carried[i] + ended[i]
                for i, c in enumerate(("energy_usage", "carbon_emission"))
            ]
            extra["stats"] = task_stats(engine, lo, base.until_ms, drain=True).with_columns(
                pl.lit(exact[0]).alias("range_energy_j"), pl.lit(exact[1]).alias("range_carbon_g")
            )
        return _full_rows(rows, lo)
    if replayable and engine.t0 is not None and engine.history is not None:
        from opendt.engine.segments import SegmentSet

        segs = SegmentSet.concat_all([before[0], *engine.history])
        base.schedule = Schedule(
            engine.hosts, engine.t0, start_rel, engine.t_lo, before[1], engine.carbon,
            engine.special_instants(), engine.host_demand(segs),
        )  # fmt: skip
    return _calibration_rows(rows, base.interval_ms, start_rel)


def _calibration_rows(rows: pl.DataFrame, interval_ms: int, start_rel: int) -> pl.DataFrame:
    """Rows whose whole interval lies in the lookback, summed over clusters."""
    if rows.is_empty():
        return pl.DataFrame(
            schema={"timestamp_absolute": pl.Int64, "power_draw": pl.Float64, "energy_usage": pl.Float64}
        )
    return (
        rows.filter(pl.col("timestamp") - interval_ms >= start_rel)
        .group_by("timestamp_absolute", maintain_order=True)
        .agg(pl.col("power_draw").sum(), pl.col("energy_usage").sum())
        .sort("timestamp_absolute")
    )


def handle(
    op: str,
    header: dict[str, Any],
    tables: dict[str, pl.DataFrame],
    engine: Engine | None,
    bases: dict[str, RoundBase],
) -> dict[str, pl.DataFrame]:
    """One ``cal.*`` request in a worker child; ``bases`` is the child's per-round state."""
    if op == "cal.snapshot":
        if engine is None:
            raise RuntimeError("worker not initialised")
        blob = snapshot(engine, str(header.get("archive", "none")))
        return {"snapshot": pl.DataFrame({"blob": [blob]}, schema={"blob": pl.Binary})}
    if op == "cal.prepare":
        bases.clear()  # one round at a time per worker: the previous base is dropped
        bases[str(header["round"])] = prepare(header, tables)
        return {}
    if op == "cal.candidate":
        base = bases.get(str(header["round"]))
        if base is None:
            raise RuntimeError(f"round {header['round']} not prepared in this worker")
        extra: dict[str, pl.DataFrame] = {}
        return {"rows": run_candidate(base, header["topology"], extra), **extra}
    raise ValueError(f"unknown op {op!r}")
