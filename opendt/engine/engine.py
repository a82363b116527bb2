"""The stateful engine: window-by-window (causal) simulation that equals one run over the whole trace.

``advance(until, tasks, fragments)`` ingests the tasks and fragments whose trace time is before ``until``,
runs the scheduler over every event before ``until`` (placement.py), turns placed fragments into
per-host demand segments and integrates power, energy and carbon exactly from the previous ``until`` to
this one (integrate.py). Export rows up to ``until`` are final and returned; the energy of the export
interval in progress is carried over. The power model is evaluated at integration time, so a
``set_topology`` with the same hosts applies exactly from the instant of the last ``advance``.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import polars as pl

from opendt.models.topology import Topology

from . import rows
from .carbon import CarbonTrace
from .frames import normalize_fragments, normalize_tasks
from .hosts import HostTable, build_hosts
from .integrate import aggregate_demand
from .placement import NEVER, RUNNING, Scheduler
from .power import F64, I64
from .segments import FragmentStore, SegmentSet

Scaling = Literal["NoDelay", "Perfect"]


class Engine:
    """An OpenDC-compatible simulator that can be advanced window by window."""

    def __init__(
        self,
        topology: Topology,
        *,
        export_interval_ms: int = 150_000,
        carbon: pl.DataFrame | None = None,
        scaling: Scaling = "NoDelay",
        streaming: bool = True,
        carbon_by_cluster: list[CarbonTrace | None] | None = None,
    ) -> None:
        if export_interval_ms <= 0:
            raise ValueError("export_interval_ms must be > 0")
        if scaling not in ("NoDelay", "Perfect"):
            raise ValueError(f"unknown scaling policy {scaling!r}")
        if scaling == "Perfect":
            raise ValueError("use opendt.engine.simulate for Perfect scaling (the Engine is NoDelay)")
        self.topology = topology
        self.hosts: HostTable = build_hosts(topology)
        self.interval = int(export_interval_ms)
        self.streaming = streaming
        if carbon_by_cluster is not None:
            self.carbon = list(carbon_by_cluster)
        else:
            trace = CarbonTrace.from_frame(carbon) if carbon is not None else None
            self.carbon = [trace] * self.hosts.n_clusters
        self.sched = Scheduler(self.hosts, streaming=streaming)
        self.ids: list[str | int] = []
        self.index: dict[str | int, int] = {}
        self.frags = FragmentStore()
        self.segs = SegmentSet.empty()
        self.history: list[SegmentSet] | None = None
        self.t0: int | None = None
        self.t_lo = 0
        self.next_k = 1
        self.acc_energy = np.zeros(self.hosts.n_clusters)
        self.acc_carbon = np.zeros(self.hosts.n_clusters)
        self.finished = False

    # -- public API ---------------------------------------------------------------------------------------
    def advance(self, until_ms: int, tasks: pl.DataFrame, fragments: pl.DataFrame) -> pl.DataFrame:
        """Ingest new input (trace time < ``until_ms``, absolute) and return the rows now final."""
        if self.finished:
            raise RuntimeError("engine already finished")
        self._ingest(tasks, fragments)
        if self.t0 is None:
            return rows.empty()
        until = int(until_ms) - self.t0
        if until <= self.t_lo:
            return rows.empty()
        self.sched.run(until)
        self._place_fragments()
        return self._integrate(until, final=False)

    def finish(self) -> pl.DataFrame:
        """No more input: run to the last completion and return the remaining rows and the final flush."""
        if self.finished:
            raise RuntimeError("engine already finished")
        self.finished = True
        if self.t0 is None:
            return rows.empty()
        self.sched.ended = True
        self.sched.run(NEVER)
        self._place_fragments()
        t_end = self.sched.end_time()
        return self._integrate(max(t_end, self.t_lo), final=True)

    def set_topology(self, topology: Topology) -> None:
        """Use ``topology`` from the current instant on (the ``until`` of the last ``advance``).

        Same hosts (names, cores, memory): only power models and speeds change, exactly from now.
        Otherwise hosts are matched by index; tasks on removed hosts are stopped now and re-queued at the
        front of the queue, restarting from their first fragment.
        """
        new = build_hosts(topology)
        if new.n_clusters != self.hosts.n_clusters:
            if len({id(c) for c in self.carbon}) > 1:
                raise ValueError("cannot change the number of clusters with per-cluster carbon traces")
            self.carbon = [self.carbon[0]] * new.n_clusters
            # the interval in progress restarts per cluster (clusters are matched by index only)
            self.acc_energy = np.zeros(new.n_clusters)
            self.acc_carbon = np.zeros(new.n_clusters)
        if not new.same_structure(self.hosts):
            requeued = self.sched.resize(new, self.t_lo)
            if requeued:
                self.segs = self.segs.stop_tasks(np.array(requeued, dtype=np.int64), self.t_lo)
                self.frags.reopen(np.array(requeued, dtype=np.int64))
            self.segs = self.segs.on_hosts(new.n)
        else:
            self.sched.hosts = new
        self.topology = topology
        self.hosts = new

    def clone(self) -> Engine:
        """An independent copy of the whole state (warm start for calibration or what-if runs)."""
        return copy.deepcopy(self)

    @property
    def origin_ms(self) -> int | None:
        """T0: the first loaded task's submission (epoch ms), once known."""
        return self.t0

    # -- ingestion ----------------------------------------------------------------------------------------
    def _ingest(self, tasks: pl.DataFrame, fragments: pl.DataFrame) -> None:
        t = normalize_tasks(tasks) if tasks.height else None
        f = normalize_fragments(fragments) if fragments.height else None
        if t is not None:
            have = set(f["id"].unique().to_list()) if f is not None else set()
            t = t.filter(pl.col("id").is_in(list(have)) & ~pl.col("id").is_in(list(self.index)))
            if t.height:
                t = t.with_row_index("_row").sort(["submission_ms", "_row"])
                if self.t0 is None:
                    self.t0 = int(t["submission_ms"][0])
                subs = (t["submission_ms"].to_numpy() - self.t0).tolist()
                mems = np.floor(t["mem_capacity"].to_numpy() / 1000.0 + 0.5).tolist()
                for tid, sub, cores, mem in zip(
                    t["id"].to_list(), subs, t["cpu_count"].to_list(), mems, strict=True
                ):
                    self.index[tid] = self.sched.add_task(max(int(sub), self.t_lo), int(cores), float(mem))
                    self.ids.append(tid)
        if f is not None and self.index:
            self._ingest_fragments(f)

    def _task_of(self, f: pl.DataFrame) -> tuple[I64, np.typing.NDArray[np.bool_]]:
        """Task index of every fragment row (and which rows belong to a loaded task)."""
        col = f.get_column("id")
        if col.dtype.is_integer() and all(isinstance(k, int) for k in self.index):
            keys = np.fromiter(self.index.keys(), dtype=np.int64, count=len(self.index))
            vals = np.fromiter(self.index.values(), dtype=np.int64, count=len(self.index))
            order = np.argsort(keys)
            keys, vals = keys[order], vals[order]
            ids = col.to_numpy()
            pos = np.minimum(np.searchsorted(keys, ids), keys.size - 1)
            hit = keys[pos] == ids
            return vals[pos], hit
        keys_df = pl.DataFrame({"id": [str(k) for k in self.index], "task": list(self.index.values())})
        m = pl.DataFrame({"id": col.cast(pl.Utf8)}).join(keys_df, on="id", how="left", maintain_order="left")
        t = m.get_column("task")
        return t.fill_null(-1).to_numpy().astype(np.int64), t.is_not_null().to_numpy()

    def _ingest_fragments(self, f: pl.DataFrame) -> None:
        task, hit = self._task_of(f)
        dur = f.get_column("duration").to_numpy()
        use = f.get_column("cpu_usage").to_numpy()
        if not hit.all():
            task, dur, use = task[hit], dur[hit], use[hit]
        if task.size == 0:
            return
        run_start = np.flatnonzero(np.r_[True, task[1:] != task[:-1]])
        if np.unique(task[run_start]).size == run_start.size:
            order = None  # each task's rows are contiguous (the usual layout): no sort needed
            ts, ds, us, starts = task, dur, use, run_start
        else:
            order = np.argsort(task, kind="stable")
            ts, ds, us = task[order], dur[order], use[order]
            starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
        sizes = np.diff(np.r_[starts, ts.size])
        csum = np.cumsum(ds)
        uniq = ts[starts]
        known = np.array(self.sched.dur, dtype=np.int64)[uniq]
        excl = csum - ds + np.repeat(known - (csum[starts] - ds[starts]), sizes)
        if order is None:
            off = excl
        else:
            off = np.empty_like(excl)
            off[order] = excl
        totals = np.add.reduceat(ds, starts)
        nonzero = np.logical_or.reduceat(us > 0, starts)
        for i, d, nz in zip(uniq.tolist(), totals.tolist(), nonzero.tolist(), strict=True):
            self.sched.extend(i, int(d), bool(nz))
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
    def _special_instants(self) -> set[int]:
        """Export instants sampled after the events at that instant (OPENDC_SEMANTICS §8.6, §10.2.4).

        The carbon model requests the engine wake-up for its first step right at t = 0, so an export at that
        step sees the state after the step; every other instant sees the left limit.
        """
        out: set[int] = set()
        assert self.t0 is not None
        for trace in self.carbon:
            if trace is None:
                continue
            step = trace.first_step_after(self.t0)
            if step is not None and (step - self.t0) % self.interval == 0:
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

    def _integrate(self, t_hi: int, *, final: bool) -> pl.DataFrame:
        assert self.t0 is not None
        out = rows.integrate_window(self, t_hi, final=final)
        self.t_lo = t_hi
        self.segs = self.segs.keep_after(t_hi)
        return out

    def running_tasks(self) -> int:
        """Tasks currently placed and not finished (for status displays)."""
        return sum(1 for s in self.sched.state if s == RUNNING)
