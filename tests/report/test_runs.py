"""Which runs and measurements the report reads: a run still in progress, a run with nothing durable yet,
measured.arrowlog before the workload's consumption.parquet, and no measurement at all."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from opendt.report import build_report, load_runs
from opendt.twin.appendlog import AppendLog
from opendt.twin.results import MEASURED_SCHEMA, WINDOW_SCHEMA
from opendt.workload import load_workload

from .. import runfiles
from .conftest import DEMO, FIGURES, DemoRuns, opendt, opendt_env


def _windows(run_dir: Path) -> pl.DataFrame | None:
    return runfiles.journal(run_dir) if (run_dir / "windows.arrowlog").exists() else None


@pytest.mark.slow
def test_report_of_a_run_in_progress_draws_what_is_durable(tmp_path: Path) -> None:
    """1. `opendt run` replays the demo day at 1500× (about a minute); 2. once 40 windows are durable,
    `opendt report` runs on its data directory while the twin goes on writing; 3. the report covers a prefix
    of the run: between the windows durable before and after it, fewer than the day's 413, and no figure
    point (twin or measured) lies past the last durable window it read; 4. the daemon then stops cleanly."""
    data = tmp_path / "data"
    with (tmp_path / "run.log").open("wb") as log:
        daemon = subprocess.Popen(
            opendt("run", "--speed", "1500", "--data-dir", data), env=opendt_env(), stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert daemon.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "40 windows not durable in 120 s"
            runs = list((data / "runs").glob("*")) if (data / "runs").is_dir() else []
            w = _windows(runs[0]) if runs else None
            if w is not None and w.height >= 40:
                break
            time.sleep(0.2)
        before = w.height
        out = tmp_path / "out"
        proc = subprocess.run(
            [*opendt("report", data, "--workload", DEMO, "--out", out, "--format", "png,html")],
            env=opendt_env(),
            capture_output=True,
            text=True,
            timeout=240,
        )
        after = _windows(runs[0])
        assert after is not None
        assert daemon.poll() is None, "the run ended before the report: not in progress"
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "report.json").read_text())
    (head,) = manifest["runs"]
    assert before <= head["windows"] <= after.height < 413
    end = head["span_ms"][1]
    assert end == int(after["window_end"].dt.epoch("ms").sort()[head["windows"] - 1])
    for f in manifest["figures"]:
        pts = pl.read_csv(out / f["data"])
        if f["name"] == "window_latency":
            assert pts["timestamp_ms"].max() < end  # window starts
        elif pts.height:
            assert pts["timestamp_ms"].max() <= end, f["name"]
    assert (out / "power_prediction.png").stat().st_size > 20_000
    assert head["mape_pct"] is not None


def test_nothing_durable_yet_still_gives_every_figure(tmp_path: Path) -> None:
    """A run directory whose journal is still empty: every figure is drawn (saying there is no durable window
    yet), the numbers are empty, nothing fails."""
    run = tmp_path / "runs" / "demo-0000000000"
    run.mkdir(parents=True)
    pl.DataFrame(schema=WINDOW_SCHEMA).write_parquet(run / "windows.parquet")
    report = build_report(load_runs([tmp_path], workload=DEMO), tmp_path / "out", ("png", "html"))
    assert [f["name"] for f in report.manifest["figures"]] == list(FIGURES)
    (head,) = report.headlines
    assert (head.windows, head.matched, head.mape_pct, head.jobs) == (0, 0, None, 0)
    assert all((tmp_path / "out" / f"{name}.png").stat().st_size > 5_000 for name in FIGURES)


def test_measured_parquet_comes_before_the_workload(demo_runs: DemoRuns, tmp_path: Path) -> None:
    """1. With measured.arrowlog in the run directory (timestamp UTC ms, power_draw W, as the twin receives
    them, some samples twice) the report uses it, whatever --workload says, and finds the same MAPE and
    measured energy as from the workload's consumption.parquet; 2. with neither, the MAPE is unknown and
    every figure is still drawn."""
    measured = load_workload(DEMO).consumption
    assert measured is not None
    run = tmp_path / "run"
    shutil.copytree(demo_runs.uncalibrated_run, run)
    (run / "measured.arrowlog").unlink()  # a run made before the twin recorded what it received
    (ref,) = load_runs([run], workload=DEMO)
    expect = build_report([ref], tmp_path / "ref", ("png",)).headlines[0]
    no_power = tmp_path / "empty-workload"
    no_power.mkdir()
    alone = build_report(load_runs([run]), tmp_path / "alone", ("png",))
    assert alone.runs[0].measured_source == "none"
    assert alone.headlines[0].mape_pct is None
    assert [f["name"] for f in alone.manifest["figures"]] == list(FIGURES)
    own_power = measured.select(
        pl.from_epoch("timestamp_ms", "ms").dt.replace_time_zone("UTC").alias("timestamp"),
        pl.lit("dc").alias("source"),
        "power_draw",
        pl.lit(None, pl.Float64).alias("energy_usage"),
        pl.from_epoch(pl.col("timestamp_ms") // 300_000 * 300_000, "ms")
        .dt.replace_time_zone("UTC")
        .alias("window_start"),
    )
    writer = AppendLog(run / "measured.arrowlog", MEASURED_SCHEMA)
    for (start,), part in pl.concat([own_power, own_power.head(50)]).group_by(
        "window_start", maintain_order=True
    ):
        assert isinstance(start, datetime)
        writer.append(int(start.timestamp() * 1000), part)  # 50 samples redelivered
    (own,) = load_runs([run], workload=no_power)
    assert own.measured_source == "measured.arrowlog"
    got = build_report([own], tmp_path / "own", ("png",)).headlines[0]
    assert (got.mape_pct, got.matched, got.measured_energy_kwh) == (
        expect.mape_pct,
        expect.matched,
        expect.measured_energy_kwh,
    )
