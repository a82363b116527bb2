"""Phase B: powerSource export rows (OPENDC_SEMANTICS §8) from the engine's segments, for one window.

Rows come at ``k·Δ`` (relative ms, k ≥ 1). ``energy_usage`` is the exact integral over ``(t − Δ, t]``,
``carbon_emission`` the integral of intensity × power, ``power_draw`` and ``carbon_intensity`` the left
limit at ``t`` (except at the instants the engine samples after the events, see
``Engine.special_instants``). The run ends with OpenDC's final flush row at the last completion.

With ``activity`` (the twin's engine; not OpenDC's output files) two more columns per cluster and row:
``tasks_completed``, the tasks that completed in ``[t − Δ, t)`` (as OpenDC's service table counts them: its
``tasks_completed`` at ``t`` counts finish times < t; the flush row takes the rest, so the column sums to the
completed tasks), and ``cpu_work``, the CPU work the hosts delivered over ``(t − Δ, t]`` in GHz·s (10⁹
cycles): the integral of every host's demand capped at its capacity, from the same segments and grid as the
energy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .carbon import CarbonTrace
from .hosts import HostTable
from .integrate import CHUNK, integrate, integrate_many, value_at
from .power import F64, I64, distinct
from .segments import SegmentSet
from .table import Table, num, text

if TYPE_CHECKING:
    from .placement import Scheduler

J_PER_KWH = 3.6e6
GHZ_S_PER_MHZ_MS = 1e-6
ACTIVITY_COLUMNS = ("tasks_completed", "cpu_work")


@dataclass
class ExportGrid:
    """The export grid and what it carries between integrations: rows at ``k·interval`` (relative ms) for
    ``k ≥ next_k``, and the energy and carbon of the interval in progress per cluster. Only its own methods
    change it: :func:`integrate_window` through :meth:`emitted`, the engine through :meth:`resize` and
    :meth:`regrid`."""

    interval: int
    next_k: int
    carried_energy: F64
    carried_carbon: F64
    carried_work: F64

    @classmethod
    def start(cls, interval_ms: int, n_clusters: int) -> ExportGrid:
        """A grid from the run's start: the first row at ``interval``, nothing carried."""
        if interval_ms <= 0:
            raise ValueError("export_interval_ms must be > 0")
        return cls(int(interval_ms), 1, np.zeros(n_clusters), np.zeros(n_clusters), np.zeros(n_clusters))

    def resize(self, n_clusters: int) -> None:
        """Another number of clusters (matched by index only): the interval in progress restarts."""
        self.carried_energy = np.zeros(n_clusters)
        self.carried_carbon = np.zeros(n_clusters)
        self.carried_work = np.zeros(n_clusters)

    def regrid(self, interval_ms: int, t_lo: int) -> None:
        """Export every ``interval_ms`` from ``t_lo`` on: the first row after ``t_lo`` may cover less than a
        whole interval (tests/calibration/test_warm.py pins that a regridded warm start equals a one-shot
        run)."""
        if interval_ms <= 0:
            raise ValueError("export_interval_ms must be > 0")
        self.interval = int(interval_ms)
        self.next_k = t_lo // self.interval + 1
        self.resize(self.carried_energy.size)

    def emitted(self, rows: int, energy: F64, carbon: F64, work: F64) -> None:
        """``rows`` grid instants were exported; ``energy``, ``carbon`` and ``work`` are carried to the next
        one."""
        self.next_k += rows
        self.carried_energy, self.carried_carbon, self.carried_work = energy, carbon, work


class Integrable(Protocol):
    """What :func:`integrate_window` reads of the engine (:class:`~opendt.engine.engine.Engine`)."""

    t0: int | None
    t_lo: int
    hosts: HostTable
    carbon: list[CarbonTrace | None]
    unknown_carbon: bool
    carbon_from: int | None
    segs: SegmentSet
    export: ExportGrid
    activity: bool

    @property
    def sched(self) -> Scheduler | None:
        """Read only with ``activity`` (task completions)."""
        ...

    def special_instants(self) -> set[int]: ...

    def host_demand(self, s: SegmentSet) -> tuple[I64, I64, I64, F64]: ...

    def power_segments(self, h: I64, st: I64, en: I64, d: F64) -> tuple[I64, I64, I64, F64]: ...


def _table(
    ts: I64,
    t0: int,
    ci: I64,
    clusters: list[str],
    sources: list[str],
    values: list[F64],
    activity: tuple[I64, F64] | None = None,
) -> Table:
    """powerSource rows (float64 in memory; OpenDC's files hold float32), and the activity columns."""
    power, energy, intensity, carbon = values
    out = {
        "timestamp": num("i64", ts),
        "timestamp_absolute": num("i64", ts + t0),
        "cluster_name": text(clusters, ci),
        "source_name": text(sources, ci),
        "power_draw": num("f64", power),
        "energy_usage": num("f64", energy),
        "carbon_intensity": num("f64", intensity),
        "carbon_emission": num("f64", carbon),
    }
    if activity is not None:
        out["tasks_completed"] = num("i64", activity[0])
        out["cpu_work"] = num("f64", activity[1])
    return out


def empty(*, activity: bool = False) -> Table:
    """A rows table with no rows (with the activity columns when ``activity``)."""
    z = np.zeros(0, dtype=np.int64)
    f = np.zeros(0, dtype=np.float64)
    return _table(z, 0, z, [], [], [f, f, f, f], (z, f) if activity else None)


def _completions(sched: Scheduler, times: list[int], n_c: int, *, final: bool) -> I64:
    """Per cluster and exported instant, the tasks completed since the previous instant (``(n_c, len)``).

    A completion at τ counts at the first instant after it (the service table's ``finish < t``); in the final
    flush, every completion left. Counted completions leave ``sched.completions``; the others wait.
    """
    out = np.zeros((n_c, len(times)), dtype=np.int64)
    log = sched.completions
    if not log or not times:
        return out
    tau = np.fromiter((c[0] for c in log), dtype=np.int64, count=len(log))
    cluster = np.fromiter((c[1] for c in log), dtype=np.int64, count=len(log))
    k = np.searchsorted(np.array(times, dtype=np.int64), tau, side="right")
    if final:
        np.minimum(k, len(times) - 1, out=k)
    hit = k < len(times)
    np.add.at(out, (cluster[hit], k[hit]), 1)
    sched.completions = [c for c, h in zip(log, hit.tolist(), strict=True) if not h]
    return out


def _traces(eng: Integrable) -> list[tuple[CarbonTrace, I64]]:
    """Each distinct carbon trace with the clusters it serves (clusters usually share one: looking it up
    once per trace, not per cluster, keeps a window's cost linear with a small constant in clusters)."""
    by_id: dict[int, tuple[CarbonTrace, list[int]]] = {}
    for c, trace in enumerate(eng.carbon):
        if trace is not None:
            by_id.setdefault(id(trace), (trace, []))[1].append(c)
    return [(trace, np.array(cs, dtype=np.int64)) for trace, cs in by_id.values()]


def _intensity(eng: Integrable, t_abs: I64, *, right: bool, traces: list[tuple[CarbonTrace, I64]]) -> F64:
    """Per cluster, the intensity at (``right``) or just before each ``t_abs``; with ``unknown_carbon``, NaN
    where no step was in force (OpenDC: 0 without a trace, the first step before it)."""
    out = np.zeros((eng.hosts.n_clusters, t_abs.size))
    for trace, clusters in traces:
        out[clusters] = trace.at(t_abs) if right else trace.before(t_abs)
    if eng.unknown_carbon:
        since = eng.carbon_from
        if since is None:
            out[:] = np.nan
        else:
            out[:, t_abs < since if right else t_abs <= since] = np.nan
    return out


def _unknown(cum_u: F64, col: I64, c_mat: F64, rest_c: F64) -> None:
    """An emission over a piece of unknown intensity is unknown: NaN in every exported interval (``c_mat``)
    and carried remainder (``rest_c``) that holds such a piece (``cum_u``: the cumulative count of them)."""
    u_mat, rest_u = _split(cum_u, col, np.zeros(rest_c.size))
    c_mat[u_mat > 0] = np.nan
    rest_c[rest_u > 0] = np.nan


def _split(cum: F64, col: I64, carried: F64) -> tuple[F64, F64]:
    """Per exported instant (grid column ``col``), the increase of the cumulative ``cum`` since the previous
    one, the first one adding what was ``carried``; and what is left over for the next instant."""
    n_c = carried.size
    z = np.zeros((n_c, 1))
    at = np.concatenate((z, cum), axis=1)[:, col + 1]
    mat = np.diff(np.concatenate((z, at), axis=1), axis=1)
    acc = carried
    if col.size:
        mat[:, 0] += acc
        acc = np.zeros(n_c)
    prev = at[:, -1] if col.size else np.zeros(n_c)
    rest = acc + (cum[:, -1] if cum.shape[1] else 0.0) - prev
    return mat, rest


def integrate_window(eng: Integrable, t_hi: int, *, final: bool) -> Table:
    """Integrate ``(eng.t_lo, t_hi]`` and return the export rows that became final."""
    assert eng.t0 is not None
    grid_state = eng.export
    t0, dt, t_lo = eng.t0, grid_state.interval, eng.t_lo
    n_c = eng.hosts.n_clusters
    special = eng.special_instants()
    ks = np.arange(grid_state.next_k, t_hi // dt + 1, dtype=np.int64)
    inst = ks * dt
    if not final and inst.size and int(inst[-1]) == t_hi and t_hi in special:
        inst = inst[:-1]
    idle = eng.hosts.idle_by_cluster()
    dem = eng.host_demand(eng.segs)
    capacity = eng.hosts.capacity

    def power_at(t: int) -> F64:
        """Σ power above idle of the segments active at ``t``, per cluster."""
        act = (dem[1] <= t) & (dem[2] > t)
        owner, s, e, x = eng.power_segments(dem[0][act], dem[1][act], dem[2][act], dem[3][act])
        return value_at(owner, s, e, x, t, n_c)

    traces = _traces(eng)
    steps = [tr.steps_between(t_lo + t0, t_hi + t0) - t0 for tr, _ in traces]
    grid = distinct(np.concatenate([np.array([t_lo, t_hi], dtype=np.int64), inst[inst > t_lo], *steps]))
    m = grid.size - 1
    cum_w = np.zeros((n_c, max(m, 0)))
    cum_u = np.zeros((n_c, max(m, 0)))
    if m > 0:
        widths = np.diff(grid)
        uniform = int(widths[0]) if bool(np.all(widths == widths[0])) else 0
        integral = np.zeros((n_c, m))
        left = np.zeros((n_c, m))
        for lo in range(0, dem[0].size, CHUNK):  # bincounts add up: chunks bound the temporaries
            part = slice(lo, lo + CHUNK)
            h, d = dem[0][part], dem[3][part]
            owner, s, e, x = eng.power_segments(h, dem[1][part], dem[2][part], d)
            if eng.activity:  # the delivered MHz (demand capped at capacity) share the power's events
                used = np.minimum(d, capacity[h])
                b, work = integrate_many(owner, s, e, [x, used], grid, n_c, uniform=uniform)
                cum_w += work.integral
            else:
                b = integrate(owner, s, e, x, grid, n_c, uniform=uniform)
            integral += b.integral
            left += b.left
        energy = (integral + idle[:, None] * widths) * 1e-3
        carbon = _intensity(eng, grid[:-1] + t0, right=True, traces=traces) * energy / J_PER_KWH
        cum_e = np.cumsum(energy, axis=1)
        if eng.unknown_carbon:
            unknown = np.isnan(carbon)
            cum_u = np.cumsum(unknown, axis=1, dtype=np.float64)
            carbon[unknown] = 0.0
        cum_c = np.cumsum(carbon, axis=1)
        cum_w = np.cumsum(cum_w * GHZ_S_PER_MHZ_MS, axis=1)
        left = idle[:, None] + left
    else:
        cum_e = cum_c = left = np.zeros((n_c, 0))

    # cumulative energy/carbon/work and left limits at every instant (instant == t_lo: a deferred sample)
    col = np.searchsorted(grid, inst) - 1
    e_mat, rest_e = _split(cum_e, col, grid_state.carried_energy)
    c_mat, rest_c = _split(cum_c, col, grid_state.carried_carbon)
    if eng.unknown_carbon:
        _unknown(cum_u, col, c_mat, rest_c)
    w_mat, rest_w = _split(cum_w, col, grid_state.carried_work)
    p_mat = left[:, np.maximum(col, 0)] if m > 0 else np.zeros((n_c, inst.size))
    times = inst.tolist()
    for k, g in enumerate(times):
        if g in special or g == t_lo:
            p_mat[:, k] = idle + power_at(g - (0 if g in special else 1))
    e_rows = list(e_mat.T)
    c_rows = list(c_mat.T)
    w_rows = list(w_mat.T)
    p_rows = list(p_mat.T)
    t_abs = inst + t0
    i_mat = _intensity(eng, t_abs, right=False, traces=traces)
    for k, g in enumerate(times):
        if g in special:
            i_mat[:, k] = _intensity(eng, t_abs[k : k + 1], right=True, traces=traces)[:, 0]
    intensity_t = list(i_mat.T)
    if final:
        flush_p = idle + power_at(t_hi - 1)
        on_grid = t_hi % dt == 0 and t_hi > 0 and (grid_state.next_k + len(times)) * dt > t_hi
        times.append(t_hi)
        p_rows.append(flush_p)
        intensity_t.append(_intensity(eng, np.array([t_hi + t0]), right=True, traces=traces)[:, 0])
        if on_grid:
            e_rows.append(np.zeros(n_c))
            c_rows.append(np.where(np.isnan(intensity_t[-1]), np.nan, 0.0))  # nothing emitted, if known
            w_rows.append(np.zeros(n_c))
        else:
            e_rows.append(rest_e)
            c_rows.append(rest_c)
            w_rows.append(rest_w)
        rest_e, rest_c, rest_w = np.zeros(n_c), np.zeros(n_c), np.zeros(n_c)
    grid_state.emitted(int(inst.size), rest_e, rest_c, rest_w)
    done = None
    if eng.activity:
        assert eng.sched is not None
        done = _completions(eng.sched, times, n_c, final=final)
    if not times:
        return empty(activity=eng.activity)
    n_t = len(times)
    ts = np.repeat(np.array(times, dtype=np.int64), n_c)
    ci = np.tile(np.arange(n_c), n_t)
    activity = None
    if done is not None:
        activity = (done.T.reshape(-1), np.stack(w_rows, axis=1).T.reshape(-1))
    return _table(
        ts,
        t0,
        ci,
        eng.hosts.cluster_names,
        eng.hosts.source_names,
        [np.stack(v, axis=1).T.reshape(-1) for v in (p_rows, e_rows, intensity_t, c_rows)],
        activity,
    )
