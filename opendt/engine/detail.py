"""host.parquet, task.parquet and service.parquet tables of a one-shot run (OPENDC_SEMANTICS §8.4–8.5).

Instants are the powerSource instants (the periodic exports plus the final flush). Point samples use the
left limit (events at an instant are applied after the export, the rule that holds for 99.99 % of SURF
rows); the flush row shows every task finished. ``cpu_time_*`` are integrals of the demand segments,
rounded per interval (OpenDC rounds per update, so they may differ by a few ms).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .hosts import HostTable
from .integrate import integrate_many
from .placement import TERMINATED
from .power import F64, I64, distinct
from .segments import SegmentSet
from .table import Col, Table, const, nulls, num, text

if TYPE_CHECKING:
    from .engine import Engine

EMBODIED_G_PER_MS = 1000.0 * 1000.0 / (5 * 365 * 24 * 3600 * 1000)


def _instants(power: Table) -> tuple[I64, np.typing.NDArray[np.bool_]]:
    """Every instant in row order (one per block of cluster rows) and whether it is the final flush.

    The flush is the last instant; on an on-grid end the last instant appears twice (regular row + flush).
    """
    clusters = power["cluster_name"].values
    n_c = int(distinct(clusters).size) if clusters.size else 1
    times: I64 = power["timestamp"].values[::n_c].astype(np.int64)
    flush = np.zeros(times.size, dtype=np.bool_)
    if times.size:
        flush[-1] = True
    return times, flush


def _task_arrays(eng: Engine) -> dict[str, np.typing.NDArray[np.int64]]:
    s = eng.sched
    return {
        "sub": np.array(s.sub, dtype=np.int64),
        "start": np.array(s.start, dtype=np.int64),
        "finish": np.array(s.finish, dtype=np.int64),
        "host": np.array(s.host, dtype=np.int64),
        "state": np.array(s.state, dtype=np.int64),
        "cores": np.array(s.cores, dtype=np.int64),
        "mem": np.array(s.mem, dtype=np.int64),
    }


def _count_before(values: I64, t: I64, *, inclusive: bool) -> I64:
    """How many ``values`` are < t (or ≤ t), for every instant."""
    out: I64 = np.searchsorted(np.sort(values), t, side="right" if inclusive else "left").astype(np.int64)
    return out


def service_table(eng: Engine, power: Table) -> Table:
    """One row per instant: host and task counters (the flush row shows every task finished)."""
    times, flush = _instants(power)
    a = _task_arrays(eng)
    placed = a["start"] >= 0
    term = a["state"] == TERMINATED
    decided = np.where(placed, a["start"], a["finish"])
    total = _count_before(a["sub"], times, inclusive=True)
    pending = total - _count_before(decided, times, inclusive=False)
    active = _count_before(a["start"][placed], times, inclusive=False) - _count_before(
        a["finish"][placed], times, inclusive=False
    )
    completed = _count_before(a["finish"][~term], times, inclusive=False)
    terminated = _count_before(a["finish"][term], times, inclusive=False)
    pending[flush] = 0
    active[flush] = 0
    completed[flush] = int((~term).sum())
    terminated[flush] = int(term.sum())
    n = times.size
    return {
        "timestamp": num("i64", times),
        "timestamp_absolute": num("i64", times + (eng.t0 or 0)),
        "hosts_up": const("i32", eng.hosts.n, n),
        "hosts_down": const("i32", 0, n),
        "tasks_total": num("i32", total),
        "tasks_pending": num("i32", pending),
        "tasks_active": num("i32", active),
        "tasks_completed": num("i32", completed),
        "tasks_terminated": num("i32", terminated),
    }


def _left_values(owner: I64, s: I64, e: I64, vs: list[F64], times: I64, n: int) -> list[tuple[F64, F64]]:
    """Per channel: (integral per bin, left limit at each instant) per owner over the grid [0, times…]."""
    grid = distinct(np.r_[np.int64(0), times])
    widths = np.diff(grid)
    uniform = int(widths[0]) if widths.size and bool(np.all(widths == widths[0])) else 0
    pos = np.searchsorted(grid, times) - 1
    return [
        (b.integral[:, pos], b.left[:, pos])
        for b in integrate_many(owner, s, e, vs, grid, n, uniform=uniform)
    ]


@dataclass(frozen=True)
class HostSeries:
    """The host table's values before they become rows: instant-major matrices (instant × host)."""

    hosts: HostTable
    t0: int
    times: I64
    width: F64  # ms covered by each row
    matrices: dict[str, np.typing.NDArray[Any]]  # column name → (instants × hosts) in the column's dtype

    @property
    def n_instants(self) -> int:
        return int(self.times.size)


def host_series(eng: Engine, power: Table, segs: SegmentSet) -> HostSeries:
    """Integrate the host demand segments: power, energy, demand, usage and CPU times per host and instant.

    Intermediate matrices are dropped as soon as their output is built (this is the CLI's memory peak);
    so are the segments, unless the caller keeps them.
    """
    times, flush = _instants(power)
    hosts = eng.hosts
    n = hosts.n
    h, st, en, d = eng.host_demand(segs)
    del segs
    u = d / hosts.capacity[h]
    over = bool((u > 1.0).any())
    np.minimum(u, 1.0, out=u)
    idle = hosts.power.idle_power()
    x = hosts.power.evaluate(h, u)
    x -= idle[h]
    # channels: power above idle, demand and (only with over-demand) supply / capacity
    binned = _left_values(h, st, en, [x, d, u] if over else [x, d], times, n)
    del h, st, en, d, u, x
    (e_int, p_left), (d_int, d_left) = binned[0], binned[1]
    act_int = binned[2][0] if over else None
    del binned
    prev = np.r_[np.int64(0), times[:-1]]
    width = (times - prev).astype(np.float64)
    dup = np.r_[False, times[1:] == times[:-1]]
    width[flush & dup] = 0.0
    cap = hosts.capacity[:, None]
    f32, i64 = np.float32, np.int64

    def t(m: np.typing.NDArray[Any], dtype: type[np.generic]) -> np.typing.NDArray[Any]:
        return np.ascontiguousarray(m.T, dtype=dtype)  # instant-major: rows of one instant are contiguous

    out: dict[str, np.typing.NDArray[Any]] = {}
    out["power_draw"] = t(idle[:, None] + p_left, f32)
    del p_left
    e_int[:, dup] = 0.0
    out["energy_usage"] = t((e_int + idle[:, None] * width) * 1e-3, f32)
    del e_int
    demand = np.where(flush[None, :], 0.0, d_left)
    del d_left
    out["cpu_demand"] = t(demand, f32)
    np.minimum(demand, cap, out=demand)  # now the usage
    out["cpu_usage"] = t(demand, f32)
    demand /= cap
    out["cpu_utilization"] = t(demand, f32)
    del demand
    busy = d_int
    busy /= cap  # ∫ demand / capacity
    act = busy if act_int is None else act_int  # ∫ supply / capacity
    steal = busy - act
    act[:, dup] = 0.0
    steal[:, dup] = 0.0
    out["cpu_time_active"] = t(np.rint(act), i64)
    out["cpu_time_idle"] = t(np.rint(width[None, :] - act), i64)
    out["cpu_time_steal"] = t(np.rint(steal), i64)
    del busy, act, act_int, steal
    a = _task_arrays(eng)
    ok = a["start"] >= 0
    # running at instant t: start < t ≤ finish → instants [first after start, first after finish)
    steps = np.zeros((n, times.size + 1), dtype=np.int64)
    np.add.at(steps, (a["host"][ok], np.searchsorted(times, a["start"][ok], side="right")), 1)
    np.add.at(steps, (a["host"][ok], np.searchsorted(times, a["finish"][ok], side="right")), -1)
    running = np.cumsum(steps, axis=1)[:, :-1]
    running[:, flush] = 0
    out["tasks_running"] = t(running, np.int32)
    order = (
        "tasks_running",
        "cpu_usage",
        "cpu_demand",
        "cpu_utilization",
        "cpu_time_active",
        "cpu_time_idle",
        "cpu_time_steal",
        "power_draw",
        "energy_usage",
    )
    return HostSeries(hosts, eng.t0 or 0, times, width, {k: out[k] for k in order})


def host_rows(hs: HostSeries, lo: int, hi: int) -> Table:
    """The host table rows of instants ``lo … hi − 1`` (instant-major, hosts in topology order)."""
    hosts = hs.hosts
    n = hosts.n
    times = hs.times[lo:hi]
    width = hs.width[lo:hi]
    nt = times.size
    rows = n * nt
    m = hs.matrices

    def col(name: str) -> np.typing.NDArray[Any]:
        return m[name][lo:hi].reshape(-1)

    def rep(v: np.typing.NDArray[Any]) -> np.typing.NDArray[Any]:
        return np.tile(v, nt)

    return {
        "timestamp": num("i64", np.repeat(times, n)),
        "timestamp_absolute": num("i64", np.repeat(times + hs.t0, n)),
        "host_name": text(hosts.names, rep(np.arange(n, dtype=np.int32))),
        "cluster_name": text(hosts.cluster_names, rep(hosts.cluster.astype(np.int32))),
        "core_count": num("i32", rep(hosts.cores.astype(np.int32))),
        "mem_capacity": num("i64", rep(hosts.mem.astype(np.int64))),
        "tasks_terminated": const("i32", 0, rows),
        "tasks_running": num("i32", col("tasks_running")),
        "tasks_error": const("i32", 0, rows),
        "tasks_invalid": const("i32", 0, rows),
        "cpu_capacity": num("f32", rep(hosts.capacity.astype(np.float32))),
        "cpu_usage": num("f32", col("cpu_usage")),
        "cpu_demand": num("f32", col("cpu_demand")),
        "cpu_utilization": num("f32", col("cpu_utilization")),
        "cpu_time_active": num("i64", col("cpu_time_active")),
        "cpu_time_idle": num("i64", col("cpu_time_idle")),
        "cpu_time_steal": num("i64", col("cpu_time_steal")),
        "cpu_time_lost": const("i64", 0, rows),
        "power_draw": num("f32", col("power_draw")),
        "energy_usage": num("f32", col("energy_usage")),
        "embodied_carbon": num("f32", np.repeat((width * EMBODIED_G_PER_MS).astype(np.float32), n)),
        "uptime": num("i64", np.repeat(width.astype(np.int64), n)),
        "downtime": const("i64", 0, rows),
        "boot_time": const("i64", hs.t0, rows),
    }


def host_table(eng: Engine, power: Table, segs: SegmentSet) -> Table:
    """One row per host per instant: power, energy, demand, usage and CPU times."""
    hs = host_series(eng, power, segs)
    return host_rows(hs, 0, hs.n_instants)


STATES = ("PROVISIONING", "RUNNING", "COMPLETED", "TERMINATED")
_INT = re.compile(r"[+-]?\d+")


def _task_ids(ids: list[str | int], task: I64) -> Col:
    """OpenDC's int32 task ids; ids that are not all int32 numbers (streaming input) stay strings."""
    try:
        values = [int(i) if isinstance(i, int) or _INT.fullmatch(i) else None for i in ids]
    except TypeError:
        values = [None]
    if all(v is not None and -(2**31) <= v < 2**31 for v in values):
        return num("i32", np.array(values, dtype=np.int32)[task])
    return text([str(i) for i in ids], task)


def _demand_at(segs: SegmentSet, task: I64, q: I64) -> F64:
    """The demand of ``task[i]`` at ``q[i]`` (its segment with ``start ≤ q < end``; 0 if none).

    The segments of a task are contiguous and in time order (as the engine stores them); the search runs
    over (block, start) keys, a block being one task's run of segments.
    """
    out = np.zeros(task.size)
    n = segs.n
    if n == 0 or task.size == 0:
        return out
    s_task, s_start, s_end, s_use = segs.task, segs.start, segs.end, segs.use
    runs = np.flatnonzero(np.r_[True, s_task[1:] != s_task[:-1]])
    if distinct(s_task[runs]).size != runs.size:  # a task's segments are not contiguous
        order = np.lexsort((s_start, s_task))
        s_task, s_start, s_end, s_use = s_task[order], s_start[order], s_end[order], s_use[order]
        runs = np.flatnonzero(np.r_[True, s_task[1:] != s_task[:-1]])
    block = np.repeat(np.arange(runs.size), np.diff(np.r_[runs, n]))
    rank = np.full(int(max(int(s_task.max()), int(task.max()))) + 1, -1, dtype=np.int64)
    rank[s_task[runs]] = np.arange(runs.size)
    q_block = rank[task]
    s_time, q_time = s_start, q
    lo = min(int(s_start.min()), int(q.min()))
    span = max(int(s_start.max()), int(q.max())) - lo + 2
    if runs.size * span >= 1 << 62:  # (block, ms) keys would overflow: rank the times instead
        times = distinct(np.concatenate((s_start, q)))
        s_time, q_time = np.searchsorted(times, s_start), np.searchsorted(times, q)
        lo, span = 0, times.size + 1
    keys = block * span + (s_time - lo)
    if not bool((keys[1:] >= keys[:-1]).all()):  # not in time order within a task
        order = np.argsort(keys, kind="stable")
        keys, block = keys[order], block[order]
        s_start, s_end, s_use = s_start[order], s_end[order], s_use[order]
    idx = np.searchsorted(keys, q_block * span + (q_time - lo), side="right") - 1
    ok = (q_block >= 0) & (idx >= 0)
    idx = np.maximum(idx, 0)
    ok &= (block[idx] == q_block) & (s_start[idx] <= q) & (s_end[idx] > q)
    out[ok] = s_use[idx[ok]]
    return out


def _supply(eng: Engine, host: I64, t: I64, demand: F64) -> F64:
    """What each running task receives: its demand up to the host's capacity, shared by max-min fairness
    (OPENDC_SEMANTICS §5.3) among the tasks on one host at one instant when they ask for more."""
    cap = eng.hosts.capacity[host]
    supply = np.minimum(demand, cap)
    shared = eng.sched.shared[host]
    if not shared.any():
        return supply
    from .perfect import max_min

    rows = np.flatnonzero(shared)
    order = rows[np.lexsort((t[rows], host[rows]))]
    h, tt = host[order], t[order]
    bounds = np.flatnonzero(np.r_[True, (h[1:] != h[:-1]) | (tt[1:] != tt[:-1]), True])
    total = np.add.reduceat(demand[order], bounds[:-1])
    for k in np.flatnonzero(total > cap[order[bounds[:-1]]]).tolist():
        group = order[bounds[k] : bounds[k + 1]]
        supply[group] = max_min(demand[group].tolist(), float(cap[group[0]]))
    return supply


def task_table(eng: Engine, power: Table, segs: SegmentSet | None = None) -> Table:
    """One row per task per instant from its submission to the first instant after it finished.

    With the demand segments, ``cpu_demand`` is the task's demand at the instant, sampled like the
    powerSource's power (the left limit, except at the instants the engine samples after the events) and
    ``cpu_usage`` what it receives; without the segments both are 0.
    """
    times, flush = _instants(power)
    a = _task_arrays(eng)
    nt = a["sub"].size
    first = np.searchsorted(times, a["sub"], side="left")
    last = np.searchsorted(times, a["finish"], side="right")
    last = np.minimum(last, times.size - 1)
    count = np.maximum(last - first + 1, 0)
    task = np.repeat(np.arange(nt), count)
    pos = np.arange(task.size) - np.repeat(np.cumsum(count) - count, count) + np.repeat(first, count)
    t = times[pos]
    fl = flush[pos]
    start, finish, host = a["start"][task], a["finish"][task], a["host"][task]
    placed = start >= 0
    done = (finish < t) | fl
    running = placed & (start < t) & ~done
    terminated = a["state"][task] == TERMINATED
    state = np.where(done, np.where(terminated, 3, 2), np.where(running, 1, 0))
    n_hosts = eng.hosts.n
    cap = np.r_[eng.hosts.capacity, 0.0]
    hidx = np.where(placed & (start < t), host, -1)
    limit = np.where(running, cap[hidx], 0.0)
    prev = np.where(pos > 0, times[np.maximum(pos - 1, 0)], 0)
    up = np.where(
        running | (done & placed), np.clip(np.minimum(t, finish) - np.maximum(prev, start), 0, None), 0
    )
    up = np.where(placed, up, 0)
    n = task.size
    demand = np.zeros(n)
    usage = np.zeros(n)
    if segs is not None:
        rows = np.flatnonzero(running)
        after = np.isin(t[rows], np.array(sorted(eng.special_instants()), dtype=np.int64))
        demand[rows] = _demand_at(segs, task[rows], t[rows] - 1 + after)
        usage[rows] = _supply(eng, host[rows], t[rows], demand[rows])
    return {
        "timestamp": num("i64", t),
        "timestamp_absolute": num("i64", t + (eng.t0 or 0)),
        "task_id": _task_ids(eng.ids, task),
        "task_name": text([""], np.zeros(n, dtype=np.int32)),
        "host_name": text([*eng.hosts.names, ""], np.where(hidx < 0, n_hosts, hidx)),
        "mem_capacity": num("i64", a["mem"][task]),
        "cpu_count": num("i32", a["cores"][task]),
        "cpu_limit": num("f32", limit),
        "cpu_usage": num("f32", usage),
        "cpu_demand": num("f32", demand),
        "cpu_time_active": num("i64", up // 1000),
        "cpu_time_idle": const("i64", 0, n),
        "cpu_time_steal": const("i64", 0, n),
        "cpu_time_lost": const("i64", 0, n),
        "gpu_count": const("i32", 0, n),
        "gpu_limit": const("f32", 0.0, n),
        "gpu_usage": const("f32", 0.0, n),
        "gpu_demand": const("f32", 0.0, n),
        "gpu_time_active": nulls("i64", n),
        "gpu_time_idle": nulls("i64", n),
        "gpu_time_steal": nulls("i64", n),
        "gpu_time_lost": nulls("i64", n),
        "uptime": num("i64", up),
        "downtime": const("i64", 0, n),
        "num_failures": const("i64", 0, n),
        "num_pauses": const("i64", 0, n),
        "schedule_time": num("i64", start, valid=placed & ((start < t) | fl)),
        "submission_time": num("i64", a["sub"][task]),
        "finish_time": num("i64", finish, valid=done),
        "task_state": text(STATES, state),
    }
