"""Phase B: powerSource export rows (OPENDC_SEMANTICS §8) from the engine's segments, for one window.

Rows come at ``k·Δ`` (relative ms, k ≥ 1). ``energy_usage`` is the exact integral over ``(t − Δ, t]``,
``carbon_emission`` the integral of intensity × power, ``power_draw`` and ``carbon_intensity`` the left
limit at ``t`` (except at the instants the engine samples after the events, see
``Engine.special_instants``). The run ends with OpenDC's final flush row at the last completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .carbon import CarbonTrace
from .hosts import HostTable
from .integrate import CHUNK, integrate, value_at
from .power import F64, I64, distinct
from .segments import SegmentSet
from .table import Table, num, text

J_PER_KWH = 3.6e6


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

    @classmethod
    def start(cls, interval_ms: int, n_clusters: int) -> ExportGrid:
        """A grid from the run's start: the first row at ``interval``, nothing carried."""
        if interval_ms <= 0:
            raise ValueError("export_interval_ms must be > 0")
        return cls(int(interval_ms), 1, np.zeros(n_clusters), np.zeros(n_clusters))

    def resize(self, n_clusters: int) -> None:
        """Another number of clusters (matched by index only): the interval in progress restarts."""
        self.carried_energy = np.zeros(n_clusters)
        self.carried_carbon = np.zeros(n_clusters)

    def regrid(self, interval_ms: int, t_lo: int) -> None:
        """Export every ``interval_ms`` from ``t_lo`` on: the first row after ``t_lo`` may cover less than a
        whole interval (tests/calibration/test_warm.py pins that a regridded warm start equals a one-shot
        run)."""
        if interval_ms <= 0:
            raise ValueError("export_interval_ms must be > 0")
        self.interval = int(interval_ms)
        self.next_k = t_lo // self.interval + 1
        self.resize(self.carried_energy.size)

    def emitted(self, rows: int, energy: F64, carbon: F64) -> None:
        """``rows`` grid instants were exported; ``energy`` and ``carbon`` are carried to the next one."""
        self.next_k += rows
        self.carried_energy, self.carried_carbon = energy, carbon


class Integrable(Protocol):
    """What :func:`integrate_window` reads of the engine (:class:`~opendt.engine.engine.Engine`)."""

    t0: int | None
    t_lo: int
    hosts: HostTable
    carbon: list[CarbonTrace | None]
    segs: SegmentSet
    export: ExportGrid

    def special_instants(self) -> set[int]: ...

    def host_demand(self, s: SegmentSet) -> tuple[I64, I64, I64, F64]: ...

    def power_segments(self, h: I64, st: I64, en: I64, d: F64) -> tuple[I64, I64, I64, F64]: ...


def _table(ts: I64, t0: int, ci: I64, clusters: list[str], sources: list[str], values: list[F64]) -> Table:
    """powerSource rows (float64 in memory; OpenDC's files hold float32)."""
    power, energy, intensity, carbon = values
    return {
        "timestamp": num("i64", ts),
        "timestamp_absolute": num("i64", ts + t0),
        "cluster_name": text(clusters, ci),
        "source_name": text(sources, ci),
        "power_draw": num("f64", power),
        "energy_usage": num("f64", energy),
        "carbon_intensity": num("f64", intensity),
        "carbon_emission": num("f64", carbon),
    }


def empty() -> Table:
    """A rows table with no rows."""
    z = np.zeros(0, dtype=np.int64)
    f = np.zeros(0, dtype=np.float64)
    return _table(z, 0, z, [], [], [f, f, f, f])


def _intensity(eng: Integrable, t_abs: I64, *, right: bool) -> F64:
    out = np.zeros((eng.hosts.n_clusters, t_abs.size))
    for c, trace in enumerate(eng.carbon):
        if trace is not None:
            out[c] = trace.at(t_abs) if right else trace.before(t_abs)
    return out


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

    def power_at(t: int) -> F64:
        """Σ power above idle of the segments active at ``t``, per cluster."""
        act = (dem[1] <= t) & (dem[2] > t)
        owner, s, e, x = eng.power_segments(dem[0][act], dem[1][act], dem[2][act], dem[3][act])
        return value_at(owner, s, e, x, t, n_c)

    steps = [tr.steps_between(t_lo + t0, t_hi + t0) - t0 for tr in eng.carbon if tr is not None]
    grid = distinct(np.concatenate([np.array([t_lo, t_hi], dtype=np.int64), inst[inst > t_lo], *steps]))
    m = grid.size - 1
    if m > 0:
        widths = np.diff(grid)
        uniform = int(widths[0]) if bool(np.all(widths == widths[0])) else 0
        integral = np.zeros((n_c, m))
        left = np.zeros((n_c, m))
        for lo in range(0, dem[0].size, CHUNK):  # bincounts add up: chunks bound the temporaries
            part = slice(lo, lo + CHUNK)
            owner, s, e, x = eng.power_segments(dem[0][part], dem[1][part], dem[2][part], dem[3][part])
            b = integrate(owner, s, e, x, grid, n_c, uniform=uniform)
            integral += b.integral
            left += b.left
        energy = (integral + idle[:, None] * widths) * 1e-3
        carbon = _intensity(eng, grid[:-1] + t0, right=True) * energy / J_PER_KWH
        cum_e = np.cumsum(energy, axis=1)
        cum_c = np.cumsum(carbon, axis=1)
        left = idle[:, None] + left
    else:
        cum_e = cum_c = left = np.zeros((n_c, 0))

    # cumulative energy/carbon and left limits at every instant (instant == t_lo: a deferred sample)
    col = np.searchsorted(grid, inst) - 1
    z = np.zeros((n_c, 1))
    cum_e0 = np.concatenate((z, cum_e), axis=1)
    cum_c0 = np.concatenate((z, cum_c), axis=1)
    at_e, at_c = cum_e0[:, col + 1], cum_c0[:, col + 1]
    e_mat = np.diff(np.concatenate((z, at_e), axis=1), axis=1)
    c_mat = np.diff(np.concatenate((z, at_c), axis=1), axis=1)
    acc_e, acc_c = grid_state.carried_energy, grid_state.carried_carbon
    if inst.size:
        e_mat[:, 0] += acc_e
        c_mat[:, 0] += acc_c
        acc_e, acc_c = np.zeros(n_c), np.zeros(n_c)
    prev_e = at_e[:, -1] if inst.size else np.zeros(n_c)
    prev_c = at_c[:, -1] if inst.size else np.zeros(n_c)
    p_mat = left[:, np.maximum(col, 0)] if m > 0 else np.zeros((n_c, inst.size))
    times = inst.tolist()
    for k, g in enumerate(times):
        if g in special or g == t_lo:
            p_mat[:, k] = idle + power_at(g - (0 if g in special else 1))
    e_rows = list(e_mat.T)
    c_rows = list(c_mat.T)
    p_rows = list(p_mat.T)
    rest_e = acc_e + (cum_e[:, -1] if m > 0 else 0.0) - prev_e
    rest_c = acc_c + (cum_c[:, -1] if m > 0 else 0.0) - prev_c
    t_abs = inst + t0
    i_mat = _intensity(eng, t_abs, right=False)
    for k, g in enumerate(times):
        if g in special:
            i_mat[:, k] = _intensity(eng, t_abs[k : k + 1], right=True)[:, 0]
    intensity_t = list(i_mat.T)
    if final:
        flush_p = idle + power_at(t_hi - 1)
        on_grid = t_hi % dt == 0 and t_hi > 0 and (grid_state.next_k + len(times)) * dt > t_hi
        times.append(t_hi)
        p_rows.append(flush_p)
        intensity_t.append(_intensity(eng, np.array([t_hi + t0]), right=True)[:, 0])
        if on_grid:
            e_rows.append(np.zeros(n_c))
            c_rows.append(np.zeros(n_c))
        else:
            e_rows.append(rest_e)
            c_rows.append(rest_c)
        rest_e, rest_c = np.zeros(n_c), np.zeros(n_c)
    grid_state.emitted(int(inst.size), rest_e, rest_c)
    if not times:
        return empty()
    n_t = len(times)
    ts = np.repeat(np.array(times, dtype=np.int64), n_c)
    ci = np.tile(np.arange(n_c), n_t)
    return _table(
        ts,
        t0,
        ci,
        eng.hosts.cluster_names,
        eng.hosts.source_names,
        [np.stack(v, axis=1).T.reshape(-1) for v in (p_rows, e_rows, intensity_t, c_rows)],
    )
