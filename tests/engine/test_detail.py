"""Helpers of the detail tables checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from opendt.engine.detail import _demand_at
from opendt.engine.segments import SegmentSet


def _brute(segs: SegmentSet, task: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.zeros(task.size)
    for i, (k, x) in enumerate(zip(task.tolist(), q.tolist(), strict=True)):
        hit = (segs.task == k) & (segs.start <= x) & (segs.end > x)
        out[i] = segs.use[hit][0] if hit.any() else 0.0
    return out


@pytest.mark.parametrize("layout", ["grouped", "interleaved", "reversed", "huge times"])
def test_demand_at_any_segment_layout(layout: str) -> None:
    """The demand in force is found whether a task's segments are grouped, interleaved or out of order
    (and when (task, ms) keys would overflow int64)."""
    rng = np.random.default_rng(3)
    tasks, starts, ends, uses = [], [], [], []
    for k in rng.permutation(40).tolist():
        t = int(rng.integers(0, 5_000))
        for _ in range(int(rng.integers(1, 8))):
            d = int(rng.integers(1, 900))
            tasks.append(k)
            starts.append(t)
            ends.append(t + d)
            uses.append(float(rng.uniform(0, 100)))
            t += d + int(rng.integers(0, 2)) * 50  # some gaps
    order = np.arange(len(tasks))
    if layout == "interleaved":
        order = np.argsort(np.array(starts), kind="stable")
    elif layout == "reversed":
        order = order[::-1]
    segs = SegmentSet(
        np.zeros(order.size, dtype=np.int64),
        np.array(starts)[order],
        np.array(ends)[order],
        np.array(uses)[order],
        np.array(tasks)[order],
    )
    task = rng.integers(0, 45, size=2_000)  # some tasks have no segments
    q = rng.integers(-10, 12_000, size=2_000)
    if layout == "huge times":
        q[::7] = 1 << 61
    assert np.array_equal(_demand_at(segs, task, q), _brute(segs, task, q))
