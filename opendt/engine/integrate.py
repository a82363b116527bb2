"""Exact integrals of piecewise-constant signals over a grid of breakpoints, without a global sort.

A signal is a set of segments ``[s, e)`` carrying a value ``v`` for an owner (host or cluster); the owner's
signal is the sum of its active segments. For grid ``g_0 < g_1 < … < g_m`` we want, per owner and bin
``j`` = ``(g_{j-1}, g_j]``, the integral and the left limit at ``g_j``. Each segment becomes two slope
events (+v at s, −v at e). An event at τ in ``[g_{j-1}, g_j)`` contributes ``δ·(g_j − τ)`` to bin ``j``
and ``δ·(g_k − g_{k-1})`` to every later bin ``k``: a ``bincount`` plus a ``cumsum`` (O(n), no sort).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .power import F64, I64

CHUNK = 1 << 19  # segments per pass of integrate_many


@dataclass(frozen=True)
class Binned:
    """``integral[o, j-1]`` over bin ``j`` (value × ms) and ``left[o, j-1]`` = limit just before ``g_j``."""

    integral: F64
    left: F64


def integrate(owner: I64, s: I64, e: I64, v: F64, grid: I64, n_owner: int, *, uniform: int = 0) -> Binned:
    """Integrate the segments over ``grid`` (segments before ``grid[0]`` are clamped to it).

    ``uniform`` > 0 declares ``grid`` = ``grid[0] + k·uniform`` so bins are found by division. Back-to-back
    segments of one owner (a task's fragment chain) share one event: the step ``v_k − v_{k−1}``.
    """
    return integrate_many(owner, s, e, [v], grid, n_owner, uniform=uniform)[0]


def integrate_many(
    owner: I64, s: I64, e: I64, values: list[F64], grid: I64, n_owner: int, *, uniform: int = 0
) -> list[Binned]:
    """``integrate`` for several value channels of the same segments (the events are shared).

    Segments are taken ``CHUNK`` at a time (the sums are linear), which bounds the temporaries.
    """
    m = grid.size - 1
    size = n_owner * (m + 2)  # bin m + 1 collects the events at or after the grid's end (dropped)
    sums = [(np.zeros(size), np.zeros(size)) for _ in values]
    for lo in range(0, s.size, CHUNK):
        part = slice(lo, lo + CHUNK)
        _accumulate(owner[part], s[part], e[part], [v[part] for v in values], grid, n_owner, uniform, sums)
    lengths = np.diff(grid).astype(np.float64)
    out = []
    for a_flat, b_flat in sums:
        a = a_flat.reshape(n_owner, m + 2)[:, : m + 1]
        b = b_flat.reshape(n_owner, m + 2)[:, : m + 1]
        slope = np.cumsum(a, axis=1, dtype=np.float64)
        integral = slope[:, :-1] * lengths + b[:, 1:]
        left: F64 = np.ascontiguousarray(slope[:, 1:], dtype=np.float64)
        out.append(Binned(integral=integral, left=left))
    return out


def _accumulate(
    owner: I64,
    s: I64,
    e: I64,
    values: list[F64],
    grid: I64,
    n_owner: int,
    uniform: int,
    sums: list[tuple[F64, F64]],
) -> None:
    """Add the slope events of the segments to ``sums``: per channel, Σδ and Σδ·(bin end − τ) per bin."""
    m = grid.size - 1
    g0, g_end = int(grid[0]), int(grid[-1])
    if s.size == 0:
        return
    clamp = int(s.min()) < g0
    if clamp:
        s = np.maximum(s, g0)
    if clamp or int(s.max()) >= g_end or not bool((e > s).all()):
        keep = (e > s) & (s < g_end)
        owner, s, e, values = owner[keep], s[keep], e[keep], [v[keep] for v in values]
    n = s.size
    # one event per segment start (the step from the previous segment when chained) and per chain end
    chained = (s[1:] == e[:-1]) & (owner[1:] == owner[:-1])
    last = np.ones(n, dtype=np.bool_)
    np.logical_not(chained, out=last[:-1])
    tau = np.concatenate((s, e[last]))
    own = np.concatenate((owner, owner[last])) if n_owner > 1 else owner[:0]
    deltas = []
    for v in values:
        d = np.empty(tau.size)
        d[:n] = v
        np.subtract(d[1:n], v[:-1], out=d[1:n], where=chained)
        np.negative(v[last], out=d[n:])
        deltas.append(d)
    del chained, last
    if uniform > 0:
        tau -= g0
        j, r = np.divmod(tau, uniform)
        j += 1
        np.minimum(j, m + 1, out=j)
        gap = np.subtract(uniform, r, dtype=np.float64)
        del r
    else:
        j = np.searchsorted(grid, tau, side="right")
        gap = (grid[np.minimum(j, m)] - tau).astype(np.float64)
    del tau
    if n_owner > 1:
        own *= m + 2
        j += own
        del own
    size = n_owner * (m + 2)
    for delta, (a, b) in zip(deltas, sums, strict=True):
        a += np.bincount(j, weights=delta, minlength=size)
        delta *= gap
        b += np.bincount(j, weights=delta, minlength=size)


def value_at(owner: I64, s: I64, e: I64, v: F64, t: int, n_owner: int) -> F64:
    """The right-continuous value at instant ``t`` (segments with ``s ≤ t < e``), per owner."""
    act = (s <= t) & (e > t)
    out: F64 = np.bincount(owner[act], weights=v[act], minlength=n_owner).astype(np.float64)
    return out


def aggregate_demand(host: I64, s: I64, e: I64, use: F64) -> tuple[I64, I64, I64, F64]:
    """Sum overlapping segments per host into non-overlapping demand segments (host, s, e, demand)."""
    if host.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0, dtype=np.float64)
    tau = np.concatenate((s, e))
    delta = np.concatenate((use, -use))
    hh = np.concatenate((host, host))
    order = np.lexsort((tau, hh))
    tau, delta, hh = tau[order], delta[order], hh[order]
    # cumulative demand per host: the running sum minus its value before the host's first event
    csum = np.cumsum(delta)
    first = np.r_[True, hh[1:] != hh[:-1]]
    base = np.maximum.accumulate(np.where(first, np.arange(hh.size), 0))
    level = csum - (csum[base] - delta[base])
    last_at_time = np.r_[(tau[1:] != tau[:-1]) | (hh[1:] != hh[:-1]), True]
    idx = np.flatnonzero(last_at_time)
    nxt = idx[1:]
    cur = idx[:-1]
    same = hh[cur] == hh[nxt]
    cur, nxt = cur[same], nxt[same]
    lv = level[cur]
    lv = np.where(np.abs(lv) < 1e-9, 0.0, lv)
    return hh[cur], tau[cur], tau[nxt], lv
