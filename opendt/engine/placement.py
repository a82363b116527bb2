"""Phase A: OpenDC's default scheduler (OPENDC_SEMANTICS §4, §10.1), as a sequential discrete-event loop.

Mem policy = VCpuFilter(1.0) + RamFilter(1.5) + RamWeigher (most free memory, ties → lowest host index),
strict FIFO with head-of-line blocking, scheduling passes on the 1 s grid of simulation time, completions
before the pass at the same instant, and tasks that can never fit TERMINATED at their first pass.

Times are relative ms. ``run(until)`` processes every event strictly before ``until``; a running task's
completion is only decided once its end lies before ``until`` (in streaming mode a later fragment could
still extend it; such a fragment's trace time is at most the task's current end, so it would have arrived).
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from .hostindex import HostIndex, scan
from .hosts import HostTable

QUEUED, RUNNING, COMPLETED, TERMINATED = 0, 1, 2, 3
PASS_QUANTUM_MS = 1000
NEVER = 1 << 62


class Scheduler:
    """Task and host bookkeeping plus the FIFO queue; tasks are indexed in submission order."""

    def __init__(self, hosts: HostTable, *, streaming: bool) -> None:
        self.streaming = streaming
        self.sub: list[int] = []
        self.cores: list[int] = []
        self.mem: list[float] = []
        self.state: list[int] = []
        self.start: list[int] = []
        self.finish: list[int] = []
        self.host: list[int] = []
        self.dur: list[int] = []
        self.nonzero: list[bool] = []
        self.queue: deque[int] = deque()
        self.heap: list[tuple[int, int, int]] = []
        self.next_sub = 0
        self.pass_at = NEVER
        self.seq = 0
        self.ended = False
        self.external_completions = False  # Perfect scaling: the fluid model decides completions
        self.placed: list[int] = []  # placements since the caller last cleared it
        self.completions: list[tuple[int, int]] = []  # (time, cluster) of completions not exported yet
        self.requeued_at: dict[int, int] = {}  # task → when a topology change last sent it back to the queue
        self.declared: list[int] = []  # per task: its declared duration (ms), −1 unknown; see drain()
        self._freed = 0  # counts the events that free resources (completions, host changes)
        self._blocked: tuple[int, int] | None = None  # (queue head, _freed) when the head last did not fit
        self._set_hosts(hosts)
        self.free_cores = hosts.cores.copy()
        self.avail_mem = hosts.mem.copy()
        self.running = np.zeros(hosts.n, dtype=np.int64)
        self.shared = np.zeros(hosts.n, dtype=np.bool_)
        self._index = self._new_index()

    def _new_index(self) -> HostIndex:
        """The placement index over the current hosts and their free cores and memory."""
        h = self.hosts
        return HostIndex(h.cores, h.mem, self.mem_slack, self.free_cores, self.avail_mem)

    def __getstate__(self) -> dict[str, Any]:
        """Snapshots and copies leave the index out (it is rebuilt from the hosts' state, in linear time)."""
        state = dict(self.__dict__)
        state.pop("_index", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._index = self._new_index()

    def _set_hosts(self, hosts: HostTable) -> None:
        self.hosts = hosts
        self.max_cores = int(hosts.cores.max())
        self.max_mem = float(hosts.mem.max())
        self.mem_cap = hosts.mem
        self.mem_slack = hosts.mem * 0.5
        self._fit_cache: dict[tuple[int, float], bool] = {}
        self._mem_fit: dict[float, npt.NDArray[np.bool_]] = {}  # memory ≥ m, per host

    # -- input -------------------------------------------------------------------------------------------
    def add_task(self, sub: int, cores: int, mem: float) -> int:
        """Register a loaded task (submission order); returns its index."""
        self.declared.append(-1)
        self.sub.append(sub)
        self.cores.append(cores)
        self.mem.append(mem)
        self.state.append(QUEUED)
        self.start.append(-1)
        self.finish.append(-1)
        self.host.append(-1)
        self.dur.append(0)
        self.nonzero.append(False)
        return len(self.sub) - 1

    def add_tasks(
        self, subs: list[int], cores: list[int], mems: list[float], declared: list[int] | None = None
    ) -> int:
        """Register loaded tasks (submission order), with their declared durations (ms) when known; returns
        the index of the first one."""
        first = len(self.sub)
        n = len(subs)
        self.declared.extend([-1] * n if declared is None else declared)
        self.sub.extend(subs)
        self.cores.extend(cores)
        self.mem.extend(mems)
        self.state.extend([QUEUED] * n)
        self.start.extend([-1] * n)
        self.finish.extend([-1] * n)
        self.host.extend([-1] * n)
        self.dur.extend([0] * n)
        self.nonzero.extend([False] * n)
        return first

    def extend(self, task: int, dur: int, nonzero: bool) -> None:
        """Record newly known fragments of ``task`` (total duration ``dur``, any non-zero usage)."""
        self.dur[task] += dur
        self.nonzero[task] = self.nonzero[task] or nonzero
        if self.state[task] == RUNNING:
            self._push(self.start[task] + self._run_time(task), task)

    def extend_many(self, tasks: list[int], durs: list[int], nonzero: list[bool]) -> None:
        """:meth:`extend` for several tasks."""
        for task, d, nz in zip(tasks, durs, nonzero, strict=True):
            self.extend(task, d, nz)

    def _run_time(self, task: int) -> int:
        if not self.streaming and not self.nonzero[task]:
            return 0
        return self.dur[task]

    def _push(self, t: int, task: int) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, task))

    def _request_pass(self, t: int) -> None:
        if self.queue:
            p = -(-t // PASS_QUANTUM_MS) * PASS_QUANTUM_MS
            self.pass_at = min(self.pass_at, p)

    # -- the event loop ----------------------------------------------------------------------------------
    def run(self, until: int) -> None:
        """Process every event (completion, submission, pass) at a time < ``until``."""
        heap = self.heap
        n = len(self.sub)
        while True:
            t_sub = self.sub[self.next_sub] if self.next_sub < n else NEVER
            t_c = heap[0][0] if heap else NEVER
            t = min(t_sub, t_c, self.pass_at)
            if t >= until or t >= NEVER:
                return
            while heap and heap[0][0] == t:
                _, _, task = heapq.heappop(heap)
                if self.state[task] == RUNNING and self.start[task] + self._run_time(task) == t:
                    self._complete(task, t)
            self.step(t)

    def drain(self) -> None:
        """Run to the end with no further input, every running task lasting at least its declared duration
        (in streaming mode its fragments are known only up to now). Consumes the schedule: for statistics."""
        for task, d in enumerate(self.declared):
            if self.state[task] == RUNNING and d > self.dur[task]:
                self.extend(task, d - self.dur[task], False)
        self.run(NEVER)

    def next_event(self) -> int:
        """The next submission or pass time (completions excluded), NEVER when idle."""
        t_sub = self.sub[self.next_sub] if self.next_sub < len(self.sub) else NEVER
        return min(t_sub, self.pass_at)

    def step(self, t: int) -> None:
        """Submissions at ``t`` join the queue; run the pass due at ``t`` (completions come first)."""
        n = len(self.sub)
        while self.next_sub < n and self.sub[self.next_sub] <= t:
            self.queue.append(self.next_sub)
            self.next_sub += 1
            self._request_pass(t)
        if self.pass_at == t:
            self.pass_at = NEVER
            self._pass(t)

    def complete(self, task: int, t: int) -> None:
        """Mark ``task`` completed at ``t`` and free its host."""
        self._complete(task, t)

    def _complete(self, task: int, t: int) -> None:
        self._freed += 1
        h = self.host[task]
        self.state[task] = COMPLETED
        self.finish[task] = t
        self.completions.append((t, int(self.hosts.cluster[h])))
        self.free_cores[h] += self.cores[task]
        self.avail_mem[h] += self.mem[task]
        self._index.update(h)
        self.running[h] -= 1
        self._request_pass(t)

    def _pass(self, t: int) -> None:
        q = self.queue
        while q:
            task = q[0]
            if self._blocked == (task, self._freed):
                return  # the head did not fit and no resources were freed since: it still does not fit
            c = self.cores[task]
            m = self.mem[task]
            if c > self.max_cores or m > self.max_mem or not self._fits_empty(c, m):
                q.popleft()
                self.state[task] = TERMINATED
                self.finish[task] = t
                continue
            h = self._pick(c, m, self.free_cores, self.avail_mem)
            if h < 0:
                self._blocked = (task, self._freed)
                return
            q.popleft()
            self._place(task, h, t)

    def _pick(
        self,
        c: int,
        m: float,
        free: npt.NDArray[np.int64],
        avail: npt.NDArray[np.float64],
        allowed: npt.NDArray[np.bool_] | None = None,
    ) -> int:
        """The host a task of ``c`` cores and ``m`` memory goes to, given free cores and available memory per
        host (and, optionally, the hosts ``allowed``); −1 when none passes the filters.

        VCpuFilter and RamFilter (memory capacity, then available memory with the 1.5 overcommit), then the
        RamWeigher: most available memory among the hosts that pass, the lowest index on ties. The
        scheduler's own state is looked up in its index (hostindex.py), other states are scanned."""
        if allowed is None and free is self.free_cores and avail is self.avail_mem:
            h = self._index.pick(c, m)
            if h is not None:
                return h
        fits = self._mem_fit.get(m)
        if fits is None:
            fits = self.mem_cap >= m
            if len(self._mem_fit) < 64:  # a few distinct task memories (bounded: one array of hosts each)
                self._mem_fit[m] = fits
        return scan(c, m, free, avail, fits, self.mem_slack, allowed)

    def _fits_empty(self, c: int, m: float) -> bool:
        # OpenDC only compares against the largest host; a task fitting no single host would wait
        # forever there (the run never ends). We terminate it instead.
        key = (c, m)
        hit = self._fit_cache.get(key)
        if hit is None:
            hit = bool(np.any((self.hosts.cores >= c) & (self.mem_cap >= m)))
            self._fit_cache[key] = hit
        return hit

    def _place(self, task: int, h: int, t: int) -> None:
        self.state[task] = RUNNING
        self.start[task] = t
        self.host[task] = h
        self.free_cores[h] -= self.cores[task]
        self.avail_mem[h] -= self.mem[task]
        self._index.update(h)
        self.running[h] += 1
        if self.running[h] > 1:
            self.shared[h] = True
        self.placed.append(task)
        if not self.external_completions:
            self._push(t + self._run_time(task), task)

    # -- end of input and topology changes -----------------------------------------------------------------
    def end_time(self) -> int:
        """The last completion or termination time (the simulated horizon), or -1 without tasks."""
        return max(self.finish, default=-1)

    def all_done(self) -> bool:
        return self.next_sub == len(self.sub) and not self.queue and not any(s == RUNNING for s in self.state)

    def resize(self, hosts: HostTable, now: int, *, migrate: bool = True) -> tuple[list[int], dict[int, int]]:
        """Switch to a new host table. Hosts are matched by index; the tasks on removed hosts are moved.

        With ``migrate`` (not under Perfect scaling, whose fluid state is per host), a task on a removed host
        moves to a kept host of the same cluster that passes the placement filters, chosen as a placement
        would (RamWeigher: most available memory, then lowest index), oldest task first: it keeps its
        progress, as a live migration would (draining a host before switching it off). A task that fits
        nowhere goes back to the front of the queue and restarts from its first fragment later.

        Returns the re-queued tasks (in queue order) and the migrated ones (task → new host).
        """
        keep = hosts.n
        old_cluster = self.hosts.cluster
        moving = [i for i, s in enumerate(self.state) if s == RUNNING and self.host[i] >= keep]
        moving.sort(key=lambda i: (self.start[i], i))
        free = hosts.cores.copy()
        avail = hosts.mem.copy()
        running = np.zeros(hosts.n, dtype=np.int64)
        shared = np.zeros(hosts.n, dtype=np.bool_)
        shared[: min(keep, self.shared.size)] = self.shared[:keep]
        for i, s in enumerate(self.state):
            if s == RUNNING and self.host[i] < keep:
                h = self.host[i]
                free[h] -= self.cores[i]
                avail[h] -= self.mem[i]
                running[h] += 1
        requeue: list[int] = []
        migrated: dict[int, int] = {}
        self._set_hosts(hosts)  # the placement filters of the new hosts
        by_cluster: dict[int, HostIndex] = {}  # the kept hosts of each cluster a task moves within
        members = _members_by_cluster(hosts.cluster) if moving and migrate else []
        for i in moving:
            h = -1
            if migrate:
                k = int(old_cluster[self.host[i]])
                index = by_cluster.get(k)
                if index is None:
                    own = members[k] if k < len(members) else np.zeros(0, dtype=np.int64)
                    index = HostIndex(hosts.cores, hosts.mem, self.mem_slack, free, avail, own)
                    by_cluster[k] = index
                picked = index.pick(self.cores[i], self.mem[i])
                if picked is None:
                    picked = self._pick(self.cores[i], self.mem[i], free, avail, hosts.cluster == k)
                h = picked
            if h < 0:
                requeue.append(i)
                self.state[i] = QUEUED
                self.start[i] = -1
                self.host[i] = -1
                self.requeued_at[i] = now
                continue
            migrated[i] = h
            self.host[i] = h
            free[h] -= self.cores[i]
            avail[h] -= self.mem[i]
            if migrate:
                by_cluster[int(hosts.cluster[h])].update(h)
            running[h] += 1
            if running[h] > 1:
                shared[h] = True
        self.queue.extendleft(reversed(requeue))
        self._freed += 1
        self.free_cores, self.avail_mem, self.running, self.shared = free, avail, running, shared
        self._index = self._new_index()
        self._request_pass(now)
        return requeue, migrated


def _members_by_cluster(cluster: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
    """The hosts of each cluster (index order), in one sort."""
    if not cluster.size:
        return []
    order = np.argsort(cluster, kind="stable")
    counts = np.bincount(cluster)
    return np.split(order, np.cumsum(counts)[:-1])
