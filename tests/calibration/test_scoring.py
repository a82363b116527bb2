"""Scoring functions: MAPE, RMSE, energy error, sampling interval, and like-with-like alignment."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from opendt.calibration.scoring import (
    align,
    energy_error,
    measured_total,
    predicted_at,
    rmse,
    sampling_interval_ms,
    score,
)
from opendt.metrics import mape


def test_metrics_on_known_values() -> None:
    """MAPE, RMSE and the energy error of a hand-computed example."""
    pred = np.array([110.0, 90.0, 100.0, 200.0])
    meas = np.array([100.0, 100.0, 100.0, 100.0])
    assert mape(pred, meas) == pytest.approx((10 + 10 + 0 + 100) / 4)
    assert rmse(pred, meas) == pytest.approx(math.sqrt((100 + 100 + 0 + 10000) / 4))
    assert energy_error(pred, meas) == pytest.approx(100.0 * 100 / 400)
    s = score(pred, meas)
    assert (s.get("mape"), s.get("rmse"), s.get("energy"), s.samples) == (s.mape, s.rmse, s.energy, 4)


def test_mape_skips_zero_measurements_and_is_nan_without_samples() -> None:
    """Samples measured at 0 W are left out of MAPE; no usable sample gives NaN (never a fake 0)."""
    assert mape(np.array([5.0, 110.0]), np.array([0.0, 100.0])) == pytest.approx(10.0)
    assert math.isnan(mape(np.array([1.0]), np.array([0.0])))
    assert math.isnan(rmse(np.zeros(0), np.zeros(0)))
    assert math.isnan(energy_error(np.array([1.0]), np.array([0.0])))


def test_sampling_interval_is_the_median_gap() -> None:
    """The meter interval is the median gap between distinct instants (a missing sample does not change it)."""
    assert sampling_interval_ms(np.array([30_000, 60_000, 90_000, 150_000, 180_000])) == 30_000
    assert sampling_interval_ms(np.array([30_000, 30_000])) is None


def test_prediction_is_compared_at_the_measured_instants() -> None:
    """``mean`` compares energy/Δ of (t − Δ, t], ``instant`` the power at t; only shared instants count."""
    rows = pl.DataFrame(
        {
            "timestamp_absolute": [30_000, 60_000, 90_000],
            "power_draw": [10.0, 20.0, 30.0],
            "energy_usage": [450.0, 600.0, 900.0],
        }
    )
    measured = measured_total(
        pl.DataFrame(
            {"timestamp_ms": [60_000, 60_000, 90_000, 120_000], "power_draw": [5.0, 10.0, 20.0, 99.0]}
        )
    )
    assert measured["power_draw"].to_list() == [15.0, 20.0, 99.0]
    pred, meas = align(measured, predicted_at(rows, 30_000, "mean"))
    assert pred.tolist() == [20.0, 30.0]
    assert meas.tolist() == [15.0, 20.0]
    pred_i, _ = align(measured, predicted_at(rows, 30_000, "instant"))
    assert pred_i.tolist() == [20.0, 30.0]
    assert mape(pred_i, meas) == pytest.approx((5 / 15 + 10 / 20) / 2 * 100)
