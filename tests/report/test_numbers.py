"""The report's numbers against the run files they come from, each computed here independently."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import polars as pl
import pytest

from opendt.commands.calibrate import prediction_mape
from opendt.engine import simulate
from opendt.report import load_runs
from opendt.report.figures_twin import axis_label
from opendt.workload import load_workload

from .. import runfiles
from .conftest import DEMO, CliReport, DemoRuns


def _agg(run: object) -> pl.DataFrame:
    assert isinstance(run, pathlib.Path)
    return runfiles.agg(run)


def _data(cli_report: CliReport, figure: str, series: str, run: str) -> pl.DataFrame:
    df = pl.read_csv(cli_report.out / "data" / f"{figure}.csv")
    return df.filter((pl.col("series") == series) & (pl.col("run") == run)).sort("timestamp_ms")


def test_printed_mape_equals_the_one_computed_from_the_parquet_files(
    cli_report: CliReport, demo_runs: DemoRuns
) -> None:
    """1. Each run's MAPE in report.json equals prediction_mape (the offline calibrator's) over its
    agg_results.parquet and the demo's consumption.parquet, and uses the same instants; 2. the command
    printed it (3 decimals) and the power figure's legend data agrees; 3. the energy error is Σ twin / Σ
    measured − 1 over those instants."""
    measured = load_workload(DEMO).consumption
    assert measured is not None
    runs = {r["label"]: r for r in cli_report.manifest["runs"]}
    for label, run in (("uncalibrated", demo_runs.uncalibrated_run), ("calibrated", demo_runs.calibrated)):
        agg = _agg(run)
        expect, n = prediction_mape(agg, measured)
        got = runs[label]
        assert got["mape_pct"] == pytest.approx(expect, rel=1e-12)
        assert got["matched"] == n > 800
        printed = re.search(rf"^{label}: \S+: MAPE ([0-9.]+) % over (\d+) instants", cli_report.stdout, re.M)
        assert printed is not None, cli_report.stdout
        assert (float(printed[1]), int(printed[2])) == (round(expect, 3), n)
        j = agg.select(pl.col("timestamp").dt.epoch("ms").alias("timestamp_ms"), "power_draw").join(
            measured.select("timestamp_ms", pl.col("power_draw").alias("m")), on="timestamp_ms"
        )
        err = (float(j["power_draw"].sum()) / float(j["m"].sum()) - 1) * 100
        assert got["energy_error_pct"] == pytest.approx(err, rel=1e-12)


def test_jobs_per_hour_sum_to_the_completed_tasks_of_the_service_table(
    cli_report: CliReport, demo_runs: DemoRuns
) -> None:
    """The job-completion figure's jobs per hour sum, for each run, to Σ tasks_completed of its
    agg_results.parquet and to the completed tasks of the OpenDC-compatible one-shot run's service table
    (its final tasks_completed); every hour is a whole number and none is negative."""
    wl = load_workload(DEMO)
    carbon = None if wl.carbon is None else wl.carbon.rename({"timestamp_ms": "timestamp"})
    service = simulate(wl.topology, wl.tasks, wl.fragments, export_interval_ms=150_000, carbon=carbon).service
    completed = int(service["tasks_completed"][-1])
    assert completed > 300
    for label, run in (("uncalibrated", demo_runs.uncalibrated_run), ("calibrated", demo_runs.calibrated)):
        jobs = _data(cli_report, "job_completion", "jobs_per_h", label)["value"]
        assert (jobs >= 0).all()
        assert (jobs == jobs.round(0)).all()
        assert int(jobs.sum()) == int(_agg(run)["tasks_completed"].sum()) == completed
        head = next(r for r in cli_report.manifest["runs"] if r["label"] == label)
        assert head["jobs"] == completed


def test_hourly_sums_equal_the_run_totals(cli_report: CliReport, demo_runs: DemoRuns) -> None:
    """Per run: the job-completion figure's energy per hour sums to Σ energy_usage (kWh), the sustainability
    figure's CPU work per hour to Σ cpu_work (in THz·s), and the carbon figure's emission per hour to
    Σ carbon_emission (kg); each matches report.json's totals."""
    heads = {r["label"]: r for r in cli_report.manifest["runs"]}
    for label, run in (("uncalibrated", demo_runs.uncalibrated_run), ("calibrated", demo_runs.calibrated)):
        agg = _agg(run)
        kwh = float(agg["energy_usage"].sum()) / 3.6e6
        work = float(agg["cpu_work"].sum()) / 1e3
        kg = float(agg["carbon_emission"].sum()) / 1e3
        assert _data(cli_report, "job_completion", "energy_kwh_per_h", label)["value"].sum() == pytest.approx(
            kwh
        )
        assert _data(cli_report, "sustainability", "cpu_work_thz_s_per_h", label)[
            "value"
        ].sum() == pytest.approx(work)
        assert _data(cli_report, "carbon", "emission_kg_per_h", label)["value"].sum() == pytest.approx(kg)
        assert (
            heads[label]["energy_kwh"],
            heads[label]["cpu_work_thz_s"],
            heads[label]["carbon_kg"],
        ) == pytest.approx((kwh, work, kg))
        assert work > 0


def test_rolling_mape_and_five_minute_means_from_the_files(
    cli_report: CliReport, demo_runs: DemoRuns
) -> None:
    """1. The MAPE-over-time value at the last instant is the MAPE of the matched instants of the trailing
    6 h; 2. a 5-minute twin mean of the power figure is that bucket's Σ energy_usage / its seconds."""
    measured = load_workload(DEMO).consumption
    assert measured is not None
    agg = _agg(demo_runs.uncalibrated_run).with_columns(
        pl.col("timestamp").dt.epoch("ms").alias("timestamp_ms")
    )
    rolling = _data(cli_report, "mape_over_time", "rolling_mape_pct", "uncalibrated")
    last = int(rolling["timestamp_ms"][-1])
    j = agg.join(measured.select("timestamp_ms", pl.col("power_draw").alias("m")), on="timestamp_ms").filter(
        (pl.col("timestamp_ms") > last - 6 * 3_600_000) & (pl.col("timestamp_ms") <= last) & (pl.col("m") > 0)
    )
    expect = float(((j["power_draw"] - j["m"]).abs() / j["m"]).mean()) * 100  # type: ignore[arg-type]
    assert float(rolling["value"][-1]) == pytest.approx(expect, rel=1e-9)
    five = _data(cli_report, "power_prediction", "power_5min_kw", "uncalibrated")
    mid = five[five.height // 2]
    t = int(mid["timestamp_ms"][0])
    rows = agg.filter(
        (pl.col("timestamp_ms") - 75_000 >= t) & (pl.col("timestamp_ms") - 75_000 < t + 300_000)
    )
    assert rows.height == 2  # two 150 s rows per 5 minutes
    assert float(mid["value"][0]) == pytest.approx(float(rows["energy_usage"].sum()) / 300 / 1e3, rel=1e-12)


def test_calibration_figure_follows_the_journal(cli_report: CliReport, demo_runs: DemoRuns) -> None:
    """The calibrated-parameter series is calibration.parquet's value in effect after each round, one
    point per round, from the instant it applies when the winner was applied; the uncalibrated run has
    none; the axis says the values are the parameter's own (the applied topologies hold them), not
    multiples."""
    cal = pl.read_parquet(demo_runs.calibrated / "calibration.parquet").sort("round")
    series = _data(cli_report, "calibration", "cpuPowerModel.calibrationFactor", "calibrated")
    when = np.where(cal["status"] == "applied", cal["apply_at"].dt.epoch("ms"), cal["time"].dt.epoch("ms"))
    values = [json.loads(v)["cpuPowerModel.calibrationFactor"] for v in cal["in_effect"]]
    assert series["timestamp_ms"].to_list() == when.tolist()
    assert series["value"].to_list() == values
    assert _data(cli_report, "calibration", "cpuPowerModel.calibrationFactor", "uncalibrated").is_empty()
    assert "applied" in cal["status"].to_list()
    runs = load_runs([demo_runs.calibrated])
    assert axis_label(runs, "cpuPowerModel.calibrationFactor") == "calibrationFactor (unitless)"
