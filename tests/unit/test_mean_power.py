"""The twin's mean power per step (``/api/power``'s ``simulated_mean``, what the dashboard draws): energy over
the time the export rows cover, as the report plots it. SURF's last export instant follows its last task's
end (7.2 kW after ~16 kW): the instant series drops there, the mean does not read it as a drop."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from opendt.api.readmodel import downsample, simulated_mean_power
from opendt.metrics import interval_widths, mean_power

DT = 30_000


def _tail() -> pl.DataFrame:
    # SURF's last rows (export every 30 s): ~16 kW, then the instant after the last task (energy of the
    # interval 11.9 kW × 30 s)
    ts = np.arange(1, 41, dtype=np.int64) * DT
    power = np.full(40, 16_000.0)
    power[-1] = 7_241.6
    energy = np.full(40, 16_000.0 * 30)
    energy[-1] = 357_298.75
    return pl.DataFrame({"timestamp_ms": ts, "power_draw": power, "energy_usage": energy})


def test_widths_are_the_interval_and_a_short_final_gap() -> None:
    assert interval_widths(np.array([30, 60, 90, 100], np.int64)).tolist() == [30, 30, 30, 10]
    assert interval_widths(np.array([0, 30, 90], np.int64)).tolist() == [30, 30, 30]  # a gap: still Δ
    assert interval_widths(np.array([5], np.int64)).tolist() == [0]
    assert interval_widths(np.array([], np.int64)).tolist() == []


def test_the_final_instant_is_not_a_drop_in_the_mean() -> None:
    sim = _tail()
    step = 600_000  # 10 min: the last row (at 20 min) starts a bucket of its own in the instant series
    instants = downsample(sim, "power_draw", 0, 10**9, step)
    assert instants[-1][0] == 1_200_000  # what the dashboard drew before: the instant after the last task
    assert instants[-1][1] == pytest.approx(7_241.6)
    means = simulated_mean_power(sim, 0, 10**9, step)
    # by interval midpoint: the last interval ends the 2nd bucket
    assert [t for t, _ in means] == [0, 600_000]
    assert means[0][1] == pytest.approx(16_000.0)
    assert means[1][1] == pytest.approx((19 * 16_000.0 * 30 + 357_298.75) / (20 * 30))
    assert means[1][1] > 15_500


def test_a_short_final_row_weighs_by_its_time() -> None:
    ts = np.array([30_000, 60_000, 90_000, 100_000], np.int64)  # the final flush 10 s after the last row
    energy = np.array([300_000.0, 300_000.0, 300_000.0, 50_000.0])  # 10, 10, 10 kW, then 5 kW
    t, w = mean_power(ts, energy, 0, 10**9, 60_000)
    assert t.tolist() == [0, 60_000]  # midpoints 15 s, 45 s | 75 s, 95 s
    assert w.tolist() == pytest.approx([10_000.0, 350_000.0 / 40])
