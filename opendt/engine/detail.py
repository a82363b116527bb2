"""host.parquet, task.parquet and service.parquet tables of a one-shot run (OPENDC_SEMANTICS §8.4–8.5).

Instants are the powerSource instants (the periodic exports plus the final flush). Point samples use the
left limit (events at an instant are applied after the export, the rule that holds for 99.99 % of SURF
rows); the flush row shows every task finished. ``cpu_time_*`` are integrals of the demand segments,
rounded per interval (OpenDC rounds per update, so they may differ by a few ms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .integrate import integrate_many
from .placement import TERMINATED
from .power import F64, I64
from .segments import SegmentSet

if TYPE_CHECKING:
    from .engine import Engine

EMBODIED_G_PER_MS = 1000.0 * 1000.0 / (5 * 365 * 24 * 3600 * 1000)


def _instants(power: pl.DataFrame) -> tuple[I64, np.typing.NDArray[np.bool_]]:
    """Distinct instants in row order and whether each is the final flush (the last, repeated or not)."""
    ts = power.get_column("timestamp").unique(maintain_order=True).to_numpy().astype(np.int64)
    flush = np.zeros(ts.size, dtype=np.bool_)
    if ts.size:
        flush[-1] = True
    n_rows = power.height // max(1, power.get_column("cluster_name").n_unique())
    times = ts.tolist()
    if n_rows > ts.size:  # on-grid end: the last instant appears twice (regular row + flush)
        times.append(times[-1])
        flush = np.r_[np.zeros(ts.size, dtype=np.bool_), True]
    return np.array(times, dtype=np.int64), flush


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


def _masked(values: I64, mask: np.typing.NDArray[np.bool_]) -> pl.Series:
    """An Int64 series that is null where ``mask`` is false."""
    d = pl.DataFrame({"v": pl.Series(values, dtype=pl.Int64), "m": pl.Series(mask, dtype=pl.Boolean)})
    return d.select(pl.when(pl.col("m")).then(pl.col("v")).alias("v")).to_series()


def _count_before(values: I64, t: I64, *, inclusive: bool) -> I64:
    """How many ``values`` are < t (or ≤ t), for every instant."""
    out: I64 = np.searchsorted(np.sort(values), t, side="right" if inclusive else "left").astype(np.int64)
    return out


def service_frame(eng: Engine, power: pl.DataFrame) -> pl.DataFrame:
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
    i32 = pl.Int32
    return pl.DataFrame(
        {
            "timestamp": times,
            "timestamp_absolute": times + (eng.t0 or 0),
            "hosts_up": pl.Series(np.full(times.size, eng.hosts.n), dtype=i32),
            "hosts_down": pl.Series(np.zeros(times.size), dtype=i32),
            "tasks_total": pl.Series(total, dtype=i32),
            "tasks_pending": pl.Series(pending, dtype=i32),
            "tasks_active": pl.Series(active, dtype=i32),
            "tasks_completed": pl.Series(completed, dtype=i32),
            "tasks_terminated": pl.Series(terminated, dtype=i32),
        }
    )


def _left_values(owner: I64, s: I64, e: I64, vs: list[F64], times: I64, n: int) -> list[tuple[F64, F64]]:
    """Per channel: (integral per bin, left limit at each instant) per owner over the grid [0, times…]."""
    grid = np.unique(np.r_[np.int64(0), times])
    widths = np.diff(grid)
    uniform = int(widths[0]) if widths.size and bool(np.all(widths == widths[0])) else 0
    pos = np.searchsorted(grid, times) - 1
    return [
        (b.integral[:, pos], b.left[:, pos])
        for b in integrate_many(owner, s, e, vs, grid, n, uniform=uniform)
    ]


def host_frame(eng: Engine, power: pl.DataFrame, segs: SegmentSet) -> pl.DataFrame:
    """One row per host per instant: power, energy, demand, usage and CPU times."""
    times, flush = _instants(power)
    hosts = eng.hosts
    n = hosts.n
    h, st, en, d = eng.host_demand(segs)
    cap = hosts.capacity[h]
    sup = np.minimum(d, cap)
    idle = hosts.power.idle_power()
    x = hosts.power.evaluate(h, np.minimum(d / cap, 1.0)) - idle[h]
    (e_int, p_left), (_, d_left), (act, _), (steal, _) = _left_values(
        h, st, en, [x, d, sup / cap, (d - sup) / cap], times, n
    )
    prev = np.r_[np.int64(0), times[:-1]]
    width = (times - prev).astype(np.float64)
    width[flush & (np.r_[False, times[1:] == times[:-1]])] = 0.0
    dup = np.r_[False, times[1:] == times[:-1]]
    e_int[:, dup] = 0.0
    act[:, dup] = 0.0
    steal[:, dup] = 0.0
    energy = (e_int + idle[:, None] * width) * 1e-3
    a = _task_arrays(eng)
    ok = a["start"] >= 0
    # running at instant t: start < t ≤ finish → instants [first after start, first after finish)
    steps = np.zeros((n, times.size + 1), dtype=np.int64)
    np.add.at(steps, (a["host"][ok], np.searchsorted(times, a["start"][ok], side="right")), 1)
    np.add.at(steps, (a["host"][ok], np.searchsorted(times, a["finish"][ok], side="right")), -1)
    running = np.cumsum(steps, axis=1)[:, :-1]
    running[:, flush] = 0
    demand = np.where(flush[None, :], 0.0, d_left)
    p_draw = idle[:, None] + p_left
    usage = np.minimum(demand, hosts.capacity[:, None])
    active = np.rint(act).astype(np.int64)
    nt = times.size

    def col(m: np.typing.NDArray[Any]) -> np.typing.NDArray[Any]:
        return m.T.reshape(-1)  # instant-major rows

    def rep(v: np.typing.NDArray[Any]) -> np.typing.NDArray[Any]:
        return np.tile(v, nt)

    f32 = pl.Float32
    return pl.DataFrame(
        {
            "timestamp": np.repeat(times, n),
            "timestamp_absolute": np.repeat(times, n) + (eng.t0 or 0),
            "host_name": pl.Series(hosts.names, dtype=pl.Utf8).gather(rep(np.arange(n))),
            "cluster_name": pl.Series(hosts.cluster_names, dtype=pl.Utf8).gather(rep(hosts.cluster)),
            "core_count": pl.Series(rep(hosts.cores), dtype=pl.Int32),
            "mem_capacity": rep(hosts.mem.astype(np.int64)),
            "tasks_terminated": pl.Series(np.zeros(n * nt), dtype=pl.Int32),
            "tasks_running": pl.Series(col(running), dtype=pl.Int32),
            "tasks_error": pl.Series(np.zeros(n * nt), dtype=pl.Int32),
            "tasks_invalid": pl.Series(np.zeros(n * nt), dtype=pl.Int32),
            "cpu_capacity": pl.Series(rep(hosts.capacity), dtype=f32),
            "cpu_usage": pl.Series(col(usage), dtype=f32),
            "cpu_demand": pl.Series(col(demand), dtype=f32),
            "cpu_utilization": pl.Series(col(usage / hosts.capacity[:, None]), dtype=f32),
            "cpu_time_active": col(active),
            "cpu_time_idle": col(np.rint(width[None, :] - act).astype(np.int64)),
            "cpu_time_steal": col(np.rint(steal).astype(np.int64)),
            "cpu_time_lost": np.zeros(n * nt, dtype=np.int64),
            "power_draw": pl.Series(col(p_draw), dtype=f32),
            "energy_usage": pl.Series(col(energy), dtype=f32),
            "embodied_carbon": pl.Series(
                rep(np.zeros(n)) + np.repeat(width, n) * EMBODIED_G_PER_MS, dtype=f32
            ),
            "uptime": np.repeat(width.astype(np.int64), n),
            "downtime": np.zeros(n * nt, dtype=np.int64),
            "boot_time": pl.Series(np.full(n * nt, eng.t0 or 0), dtype=pl.Int64),
        }
    )


def task_frame(eng: Engine, power: pl.DataFrame) -> pl.DataFrame:
    """One row per task per instant from its submission to the first instant after it finished."""
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
    state = np.where(
        done, np.where(terminated, "TERMINATED", "COMPLETED"), np.where(running, "RUNNING", "PROVISIONING")
    )
    names = pl.Series([*eng.hosts.names, ""], dtype=pl.Utf8)
    cap = np.r_[eng.hosts.capacity, 0.0]
    hidx = np.where(placed & (start < t), host, -1)
    limit = np.where(running, cap[hidx], 0.0)
    prev = np.where(pos > 0, times[np.maximum(pos - 1, 0)], 0)
    up = np.where(
        running | (done & placed), np.clip(np.minimum(t, finish) - np.maximum(prev, start), 0, None), 0
    )
    up = np.where(placed, up, 0)
    ids = eng.ids
    str_ids = pl.Series([str(i) for i in ids], dtype=pl.Utf8).gather(task)
    int_ids = str_ids.cast(pl.Int32, strict=False)
    if int_ids.null_count():  # OpenDC ids are int32; keep non-numeric ids (streaming input) as strings
        int_ids = str_ids
    n = task.size
    null_i = pl.Series([None] * n, dtype=pl.Int64)
    return pl.DataFrame(
        {
            "timestamp": t,
            "timestamp_absolute": t + (eng.t0 or 0),
            "task_id": int_ids,
            "task_name": [""] * n,
            "host_name": names.gather(np.where(hidx < 0, len(names) - 1, hidx)),
            "mem_capacity": a["mem"][task],
            "cpu_count": pl.Series(a["cores"][task], dtype=pl.Int32),
            "cpu_limit": pl.Series(limit, dtype=pl.Float32),
            "cpu_usage": pl.Series(np.zeros(n), dtype=pl.Float32),
            "cpu_demand": pl.Series(np.zeros(n), dtype=pl.Float32),
            "cpu_time_active": up // 1000,
            "cpu_time_idle": np.zeros(n, dtype=np.int64),
            "cpu_time_steal": np.zeros(n, dtype=np.int64),
            "cpu_time_lost": np.zeros(n, dtype=np.int64),
            "gpu_count": pl.Series(np.zeros(n), dtype=pl.Int32),
            "gpu_limit": pl.Series(np.zeros(n), dtype=pl.Float32),
            "gpu_usage": pl.Series(np.zeros(n), dtype=pl.Float32),
            "gpu_demand": pl.Series(np.zeros(n), dtype=pl.Float32),
            "gpu_time_active": null_i,
            "gpu_time_idle": null_i,
            "gpu_time_steal": null_i,
            "gpu_time_lost": null_i,
            "uptime": up,
            "downtime": np.zeros(n, dtype=np.int64),
            "num_failures": np.zeros(n, dtype=np.int64),
            "num_pauses": np.zeros(n, dtype=np.int64),
            "schedule_time": _masked(start, placed & ((start < t) | fl)),
            "submission_time": a["sub"][task],
            "finish_time": _masked(finish, done),
            "task_state": state.tolist(),
        }
    )
