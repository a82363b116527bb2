"""The stateful engine: window-by-window (causal) simulation that equals one run over the whole trace.

``advance(until, tasks, fragments)`` ingests the tasks and fragments whose trace time is before ``until``,
runs the scheduler over every event before ``until`` (placement.py), turns placed fragments into
per-host demand segments and integrates power, energy and carbon exactly from the previous ``until`` to
this one (integrate.py). Export rows up to ``until`` are final and returned; the energy of the export
interval in progress is carried over. The power model is evaluated at integration time, so a
``set_topology`` with the same hosts applies exactly from the instant of the last ``advance``.

polars is imported only by the methods that take or return frames, so the CLI (simulate.py) runs without it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from . import rows
from .carbon import CarbonTrace
from .frames import FragmentInput, TaskInput, fragment_columns, task_input
from .hosts import HostTable, build_hosts
from .integrate import aggregate_demand
from .placement import NEVER, RUNNING, Scheduler
from .power import F64, I64, distinct
from .segments import FragmentStore, SegmentSet
from .table import Table, to_polars

if TYPE_CHECKING:
    import polars as pl

    from .topology import TopologyLike

Scaling = Literal["NoDelay", "Perfect"]


def _offsets(dur: I64, runs: I64, base: I64, totals: I64) -> I64:
    """Each row's offset in its run: ``base[r]`` plus the durations of the run's earlier rows.

    Run ``r`` starts at row ``runs[r]`` and its durations sum to ``totals[r]``. One running sum over the
    durations shifted by a row, corrected at each run start so that the sum restarts at ``base[r]``.
    """
    x = np.empty_like(dur)
    x[0] = 0
    x[1:] = dur[:-1]
    x[runs] += base - np.r_[np.int64(0), base[:-1] + totals[:-1]]
    np.cumsum(x, out=x)
    return x


def _run_starts(ids: npt.NDArray[Any]) -> I64:
    """First row of every run of equal consecutive values."""
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])


FRAGMENT_ORDER = ["submission_ms", "id", "index"]
"""The order in which :meth:`Engine.advance` takes a call's fragments."""


class Engine:
    """An OpenDC-compatible simulator that can be advanced window by window."""

    unknown_carbon: bool = False
    """The twin's engine: a time before the first carbon step received (none yet: all of it) has unknown
    intensity and emission (NaN), never OpenDC's 0 without a trace nor its first step extended backwards."""
    carbon_from: int | None = None
    """The first step of the shared carbon trace (absolute ms; None: no trace yet), kept when it is pruned."""

    def __init__(
        self,
        topology: TopologyLike,
        *,
        export_interval_ms: int = 150_000,
        carbon: pl.DataFrame | None = None,
        scaling: Scaling = "NoDelay",
        streaming: bool = True,
        carbon_by_cluster: list[CarbonTrace | None] | None = None,
        activity: bool = True,
        unknown_carbon: bool = False,
    ) -> None:
        if scaling not in ("NoDelay", "Perfect"):
            raise ValueError(f"unknown scaling policy {scaling!r}")
        if scaling == "Perfect":
            raise ValueError("use opendt.engine.simulate for Perfect scaling (the Engine is NoDelay)")
        self.topology = topology
        self.hosts: HostTable = build_hosts(topology)
        self.streaming = streaming
        if carbon_by_cluster is not None:
            self.carbon = list(carbon_by_cluster)
        else:
            trace = CarbonTrace.from_frame(carbon) if carbon is not None else None
            self.carbon = [trace] * self.hosts.n_clusters
        self.unknown_carbon = unknown_carbon
        self.carbon_from = min((int(c.times[0]) for c in self.carbon if c is not None), default=None)
        self.sched = Scheduler(self.hosts, streaming=streaming)
        self.ids: list[str | int] = []
        self.index: dict[str | int, int] = {}
        self.frags = FragmentStore()
        self.segs = SegmentSet.empty()
        self.history: list[SegmentSet] | None = None
        self.t0: int | None = None
        self.t_lo = 0
        self.export = rows.ExportGrid.start(export_interval_ms, self.hosts.n_clusters)
        self.first_step: int | None = None
        """The first carbon step after T0, once known (a streamed trace is pruned behind the integration)."""
        self.activity = activity
        """Rows carry ``tasks_completed`` and ``cpu_work`` (rows.py); off for OpenDC's output files."""
        self.finished = False

    # -- public API ---------------------------------------------------------------------------------------
    def advance(
        self,
        until_ms: int,
        tasks: pl.DataFrame,
        fragments: pl.DataFrame,
        carbon: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """Ingest new input (trace time < ``until_ms``, absolute; ``carbon``: intensity steps received since
        the last call, see :meth:`add_carbon`) and return the rows now final."""
        if self.finished:
            raise RuntimeError("engine already finished")
        if carbon is not None and carbon.height:
            trace = CarbonTrace.from_frame(carbon)
            self.add_carbon(trace.times, trace.values)
        if fragments.height > 1 and set(FRAGMENT_ORDER) <= set(fragments.columns):
            # one order whatever the fetches were: a fragment read before its task is held and comes after
            # the others (opendt/stream/orphans.py), so the same stream fetched otherwise (another broker,
            # another load) gave another order, and results differing in the last bits. (Here, in the
            # engine's process, not in the daemon's threads: a polars sort there deadlocked against a
            # concurrent IPC write.)
            fragments = fragments.sort(FRAGMENT_ORDER, maintain_order=True)
        self.ingest_frames(tasks, fragments)
        if self.t0 is None:
            return to_polars(rows.empty(activity=self.activity))
        until = int(until_ms) - self.t0
        if until <= self.t_lo:
            return to_polars(rows.empty(activity=self.activity))
        self.sched.run(until)
        self._place_fragments()
        return to_polars(self.integrate(until, final=False))

    def finish(self, until_ms: int | None = None) -> pl.DataFrame:
        """No more input: run to the last completion and return the remaining rows and the final flush; with
        ``until_ms`` (absolute), rows no further than it (the twin's bound on the tail past the stream)."""
        return to_polars(self.finish_table(until_ms))

    def finish_table(self, until_ms: int | None = None) -> Table:
        """:meth:`finish` as a :class:`~opendt.engine.table.Table` (no polars)."""
        if self.finished:
            raise RuntimeError("engine already finished")
        self.finished = True
        if self.t0 is None:
            return rows.empty(activity=self.activity)
        self.sched.ended = True
        self.sched.run(NEVER)
        self._place_fragments()
        t_end = self.sched.end_time()
        if until_ms is not None:
            t_end = min(t_end, until_ms - self.t0)
        return self.integrate(max(t_end, self.t_lo), final=True)

    def set_topology(self, topology: TopologyLike) -> None:
        """Use ``topology`` from the current instant on (the ``until`` of the last ``advance``).

        Same hosts (names, cores, memory): only power models and speeds change, exactly from now.
        Otherwise hosts are matched by index. A task on a removed host migrates, keeping its progress, to a
        kept host of its cluster with room for it (chosen as a placement would; not under Perfect scaling);
        one that fits nowhere is stopped now and re-queued at the front of the queue, restarting from its
        first fragment (:meth:`Scheduler.resize <opendt.engine.placement.Scheduler.resize>`).
        """
        new = build_hosts(topology)
        if new.n_clusters != self.hosts.n_clusters:
            if len({id(c) for c in self.carbon}) > 1:
                raise ValueError("cannot change the number of clusters with per-cluster carbon traces")
            self.carbon = [self.carbon[0]] * new.n_clusters
            self.export.resize(new.n_clusters)  # clusters are matched by index only
            self.sched.completions.clear()  # the interval in progress restarts (its completions too)
        if not new.same_structure(self.hosts):
            migrate = not self.sched.external_completions
            requeued, migrated = self.sched.resize(new, self.t_lo, migrate=migrate)
            if migrated:
                self.segs = self.segs.move_tasks(migrated, self.t_lo)
            if requeued:
                self.segs = self.segs.stop_tasks(np.array(requeued, dtype=np.int64), self.t_lo)
                self.frags.reopen(np.array(requeued, dtype=np.int64))
            self.segs = self.segs.on_hosts(new.n)
        else:
            self.sched.hosts = new
        self.topology = topology
        self.hosts = new

    def add_carbon(self, times: I64, values: F64) -> None:
        """Carbon-intensity steps received so far by a streaming twin (``dc.carbon``): steps after the last
        known one extend the one trace every cluster shares. The trace is kept from the step in force at
        the last integrated instant on, so it stays bounded however long the twin runs."""
        if times.size == 0:
            return
        if len({id(c) for c in self.carbon}) > 1:
            raise ValueError("per-cluster carbon traces cannot be extended by a stream")
        cur = self.carbon[0]
        trace = CarbonTrace.from_arrays(times, values) if cur is None else cur.extended(times, values)
        if self.carbon_from is None:
            self.carbon_from = int(trace.times[0])
        if self.t0 is not None:
            self.special_instants()  # the first step after T0 is remembered before older steps are dropped
            trace = trace.since(self.t0 + self.t_lo)
        self.carbon = [trace] * self.hosts.n_clusters

    @property
    def interval(self) -> int:
        """The export interval (ms)."""
        return self.export.interval

    def set_export_interval(self, interval_ms: int) -> None:
        """Export every ``interval_ms`` from the current instant on (the first row may be partial)."""
        self.export.regrid(interval_ms, self.t_lo)
        self.sched.completions.clear()  # as the energy: the first row counts from now

    def clone(self) -> Engine:
        """An independent copy of the whole state (warm start for calibration or what-if runs)."""
        return copy.deepcopy(self)

    @property
    def origin_ms(self) -> int | None:
        """T0: the first loaded task's submission (epoch ms), once known."""
        return self.t0

    # -- ingestion ----------------------------------------------------------------------------------------
    def ingest_frames(self, tasks: pl.DataFrame, fragments: pl.DataFrame, *, merge: bool = False) -> None:
        """Ingest polars frames (the library API); see :meth:`ingest`."""
        t = task_input(tasks) if tasks.height else None
        if not fragments.height:
            return  # a task is loaded with its first fragments
        ids, dur, use = fragment_columns(fragments)
        if t is not None:
            have = ids.unique()
            self._add_tasks(t, have.to_numpy() if t.ids.dtype != object else np.array(have.to_list(), object))
        if self.index:
            task = self._task_index_series(ids)
            runs = _run_starts(task)
            self._add_runs(runs, task[runs], dur, use, merge=merge)

    def ingest(
        self, tasks: TaskInput | None, fragments: FragmentInput | None, *, merge: bool = False
    ) -> None:
        """Ingest checked arrays: tasks with at least one fragment here and not yet known, then fragments.

        ``merge`` joins consecutive fragments of a task with the same usage into one (the demand signal is the
        same); only for runs that never restart a task from its first fragment (one-shot NoDelay).
        """
        if fragments is None or fragments.n == 0:
            return  # a task is loaded with its first fragments
        runs = _run_starts(fragments.ids)
        if tasks is not None and tasks.n:
            self._add_tasks(tasks, fragments.ids[runs])
        if self.index:
            run_task = self._run_tasks(fragments.ids[runs])
            self._add_runs(runs, run_task, fragments.duration, fragments.cpu_usage, merge=merge)

    def _add_tasks(self, t: TaskInput, have: npt.NDArray[Any]) -> None:
        """Register the tasks whose id is in ``have`` and not known yet, in submission order."""
        index = self.index
        keys = t.ids.tolist()
        known = np.fromiter((k in index for k in keys), dtype=np.bool_, count=t.n)
        if t.ids.dtype == object or have.dtype == object:  # np.isin on object arrays: quadratic time
            present = set(have.tolist())
            wanted = np.fromiter((k in present for k in keys), dtype=np.bool_, count=t.n)
        else:
            wanted = np.isin(t.ids, have)
        rows = np.flatnonzero(wanted & ~known)
        if rows.size == 0:
            return
        rows = rows[np.argsort(t.submission_ms[rows], kind="stable")]
        if self.t0 is None:
            self.t0 = int(t.submission_ms[rows[0]])
        subs = np.maximum(t.submission_ms[rows] - self.t0, self.t_lo)
        mems = np.floor(t.mem_capacity[rows] / 1000.0 + 0.5)
        ids = t.ids[rows].tolist()
        declared = None if t.duration_ms is None else t.duration_ms[rows].tolist()
        first = self.sched.add_tasks(subs.tolist(), t.cpu_count[rows].tolist(), mems.tolist(), declared)
        index.update(zip(ids, range(first, first + len(ids)), strict=True))
        self.ids.extend(ids)

    def _run_tasks(self, ids: npt.NDArray[Any]) -> I64:
        """Task index of each id (−1: not a loaded task)."""
        index = self.index
        if ids.size > 8192 and ids.dtype != object and self._int_ids():
            keys = np.fromiter(index.keys(), dtype=np.int64, count=len(index))
            vals = np.fromiter(index.values(), dtype=np.int64, count=len(index))
            order = np.argsort(keys)
            keys, vals = keys[order], vals[order]
            ids = ids.astype(np.int64, copy=False)
            pos = np.minimum(np.searchsorted(keys, ids), keys.size - 1)
            out: I64 = np.where(keys[pos] == ids, vals[pos], -1)
            return out
        return np.fromiter((index.get(k, -1) for k in ids.tolist()), dtype=np.int64, count=ids.size)

    _all_int: tuple[int, bool] = (0, True)
    """(tasks checked, all of their ids ints): the check is incremental, not a pass over every task known
    in every window (a class default, so snapshots without it load)."""

    def _int_ids(self) -> bool:
        """Every known task id is an int."""
        checked, ok = self._all_int
        if ok and checked < len(self.ids):
            ok = all(isinstance(k, int) for k in self.ids[checked:])
        self._all_int = (len(self.ids), ok)
        return ok

    def _task_index_series(self, col: pl.Series) -> I64:
        """Task index of every fragment of a polars id column (string ids are matched by a join)."""
        import polars as pl

        if col.dtype.is_integer() and self._int_ids():
            ids = col.to_numpy()
            runs = _run_starts(ids)
            return np.repeat(self._run_tasks(ids[runs]), np.diff(np.r_[runs, ids.size]))
        keys_df = pl.DataFrame({"id": [str(k) for k in self.index], "task": list(self.index.values())})
        m = pl.DataFrame({"id": col.cast(pl.Utf8)}).join(keys_df, on="id", how="left", maintain_order="left")
        out: I64 = m.get_column("task").fill_null(-1).to_numpy().astype(np.int64)
        return out

    def _add_runs(self, runs: I64, run_task: I64, dur: I64, use: F64, *, merge: bool) -> None:
        """Add fragments given as runs: rows ``runs[k]`` up to the next run belong to task ``run_task[k]``.

        Fragments of unknown tasks (−1) are dropped. Each fragment gets its offset from its task's start;
        a task's fragments must be consecutive in the store, so interleaved input is sorted by task (stable).
        """
        n = dur.size
        sizes = np.diff(np.r_[runs, n])
        loaded = run_task >= 0
        if not loaded.all():
            rows = np.repeat(loaded, sizes)
            dur, use, run_task, sizes = dur[rows], use[rows], run_task[loaded], sizes[loaded]
            runs = np.r_[np.int64(0), np.cumsum(sizes)[:-1]] if sizes.size else sizes
            n = dur.size
        if n == 0:
            return
        unsorted: tuple[I64, I64, I64, F64] | None = None  # (sort order, task, dur, use) as given
        if distinct(run_task).size != run_task.size:  # a task's rows are not consecutive: sort them
            task = np.repeat(run_task, sizes)
            order = np.argsort(task, kind="stable")
            unsorted = (order, task, dur, use)
            task, dur, use = task[order], dur[order], use[order]
            runs = _run_starts(task)
            run_task, sizes = task[runs], np.diff(np.r_[runs, n])
        totals = np.add.reduceat(dur, runs)
        nonzero = np.logical_or.reduceat(use > 0, runs)
        self.sched.extend_many(run_task.tolist(), totals.tolist(), nonzero.tolist())
        before = np.array(self.sched.dur, dtype=np.int64)[run_task] - totals  # known before this batch
        if merge:
            change = use[1:] != use[:-1]
            change[runs[1:] - 1] = True
            first = np.flatnonzero(np.r_[True, change])
            del change
            dur, use = np.add.reduceat(dur, first), use[first]
            runs = np.searchsorted(first, runs)
            del first
            unsorted = None  # merged fragments are stored in task order
        sizes = np.diff(np.r_[runs, dur.size])
        offset = _offsets(dur, runs, before, totals)
        if unsorted is None:
            self.frags.add(np.repeat(run_task, sizes), offset, dur, use)
        else:  # keep the input order
            order, task, dur, use = unsorted
            off = np.empty_like(offset)
            off[order] = offset
            self.frags.add(task, off, dur, use)

    def _place_fragments(self) -> None:
        self.sched.placed.clear()
        start = np.array(self.sched.start, dtype=np.int64)
        host = np.array(self.sched.host, dtype=np.int64)
        new = self.frags.take_placed(start, host)
        if new.n:
            self.segs = self.segs.concat(new)
            if self.history is not None:
                self.history.append(new)

    # -- integration and export rows ------------------------------------------------------------------------
    def special_instants(self) -> set[int]:
        """Export instants sampled after the events at that instant (OPENDC_SEMANTICS §8.6, §10.2.4).

        The carbon model requests the engine wake-up for its first step right at t = 0, so an export at that
        step sees the state after the step; every other instant sees the left limit.
        """
        out: set[int] = set()
        assert self.t0 is not None
        shared = len({id(c) for c in self.carbon}) == 1
        for trace in self.carbon:
            if trace is None:
                continue
            if shared:  # a streamed trace may have been pruned: its first step after T0 is remembered
                if self.first_step is None:
                    self.first_step = trace.first_step_after(self.t0)
                step = self.first_step
            else:
                step = trace.first_step_after(self.t0)
            if step is not None and (step - self.t0) % self.export.interval == 0:
                out.add(step - self.t0)
        return out

    def power_segments(self, h: I64, st: I64, en: I64, d: F64) -> tuple[I64, I64, I64, F64]:
        """Power above idle of non-overlapping host demand segments: (cluster owner, s, e, W)."""
        hosts = self.hosts
        u = np.minimum(d / hosts.capacity[h], 1.0)
        x = hosts.power.evaluate(h, u)
        x -= hosts.power.idle_power()[h]
        return hosts.cluster[h], st, en, x

    def host_demand(self, s: SegmentSet) -> tuple[I64, I64, I64, F64]:
        """Non-overlapping per-host demand segments (host, s, e, MHz): shared hosts are summed."""
        shared = self.sched.shared[s.host] if s.n else np.zeros(0, dtype=np.bool_)
        if not shared.any():
            return s.host, s.start, s.end, s.use
        sh = aggregate_demand(s.host[shared], s.start[shared], s.end[shared], s.use[shared])
        solo = ~shared
        h: I64 = np.concatenate((s.host[solo], sh[0]))
        st: I64 = np.concatenate((s.start[solo], sh[1]))
        en: I64 = np.concatenate((s.end[solo], sh[2]))
        d: F64 = np.concatenate((s.use[solo], sh[3]))
        return h, st, en, d

    def integrate(self, t_hi: int, *, final: bool) -> Table:
        """Integrate power, energy and carbon up to ``t_hi`` (relative ms); the export rows now final."""
        assert self.t0 is not None
        out = rows.integrate_window(self, t_hi, final=final)
        self.t_lo = t_hi
        self.segs = self.segs.keep_after(t_hi)
        return out

    def running_tasks(self) -> int:
        """Tasks currently placed and not finished (for status displays)."""
        return sum(1 for s in self.sched.state if s == RUNNING)
