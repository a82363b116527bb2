"""Per-cluster figures of a window (``/metrics``' cluster-labelled gauges) from the engine's rows."""

from __future__ import annotations

import polars as pl

from opendt.twin.loopstats import ClusterTotals, cluster_totals


def _rows(carbon: list[float | None]) -> pl.DataFrame:
    # two clusters, instants 1 and 2, and the duplicate final flush row of cluster b at instant 2
    return pl.DataFrame(
        {
            "timestamp_absolute": [1, 1, 2, 2, 2],
            "cluster_name": ["b", "a", "b", "a", "b"],
            "power_draw": [10.0, 20.0, 11.0, 21.0, 99.0],
            "energy_usage": [300.0, 600.0, 330.0, 630.0, 999.0],
            "carbon_emission": carbon,
        }
    )


def test_per_cluster_last_power_energy_and_carbon() -> None:
    got = cluster_totals(_rows([1.0, 2.0, 1.5, 2.5, 9.0]), 7)
    assert got == (
        ClusterTotals(
            window_start_ms=7, cluster="a", power_watts=21.0, energy_joules=1230.0, carbon_grams=4.5
        ),
        ClusterTotals(
            window_start_ms=7, cluster="b", power_watts=11.0, energy_joules=630.0, carbon_grams=2.5
        ),
    )


def test_unknown_carbon_is_none_and_no_rows_is_empty() -> None:
    got = cluster_totals(_rows([None] * 5), 0)
    assert [c.carbon_grams for c in got] == [None, None]
    got = cluster_totals(_rows([float("nan"), 2.0, 1.0, 2.5, 9.0]), 0)  # b unknown for its first interval
    assert [c.carbon_grams for c in got] == [4.5, None]
    assert cluster_totals(pl.DataFrame(), 0) == ()
