"""The calibrator driven offline (``opendt calibrate``): rounds, failures, skips, journal and CLI output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
from structlog.testing import capture_logs

from opendt.commands.calibrate import calibrate_offline

from .conftest import cf_settings, crashing_command, write_demo_prefix

H = 3_600_000


async def test_failing_candidate_does_not_stop_the_round(tmp_path: Path) -> None:
    """1. The candidate with calibrationFactor 5 kills its worker process in every round; 2. each round
    still scores the other candidates, records that one as failed with the error, and picks a winner;
    3. the hidden factor 6.5 is found among the survivors (7 or 6) in the first round."""
    wl = write_demo_prefix(tmp_path / "wl", 3.0)
    settings = cf_settings(tmp_path, [3.0, 5.0, 6.0, 7.0, 9.0])
    result = await calibrate_offline(wl, settings, out=tmp_path / "run", pool_command=crashing_command())
    scored = [r for r in result.rounds if r.status != "skipped"]
    assert len(scored) >= 2
    for r in scored:
        assert r.failed == 1
        (bad,) = [s for s in r.scores if s.status == "failed"]
        assert bad.params == "cpuPowerModel.calibrationFactor=5.0"
        assert "worker died" in bad.error
        ran = {s.params.split("=")[1] for s in r.scores if s.status in ("ok", "incumbent")}
        assert {"3.0", "6.0", "7.0", "9.0"} <= ran
    assert scored[0].status == "applied"
    assert scored[0].winner["cpuPowerModel.calibrationFactor"] in (6.0, 7.0)


async def test_round_without_measured_power_is_skipped_with_a_log_line(tmp_path: Path) -> None:
    """1. The meter is silent during hour 1–2 (lookback 1 h); 2. the round at the end of that hour logs
    ``calibration_skipped`` with the reason and is journaled as skipped; 3. the rounds around it run."""
    wl = write_demo_prefix(tmp_path / "wl", 4.0, drop_power=(0.9, 2.1))
    settings = cf_settings(tmp_path, [4.0, 6.0, 8.0], lookback_s=3600)
    with capture_logs() as logs:
        result = await calibrate_offline(wl, settings, out=tmp_path / "run")
    skipped = [e for e in logs if e["event"] == "calibration_skipped"]
    assert skipped
    assert skipped[0]["reason"] == "no measured power in the lookback"
    statuses = [r.status for r in result.rounds]
    assert "skipped" in statuses
    assert any(s in ("applied", "kept") for s in statuses[statuses.index("skipped") + 1 :])
    journal = pl.read_parquet(tmp_path / "run" / "calibration.parquet")
    assert journal["status"].to_list() == statuses
    assert (
        journal.filter(pl.col("status") == "skipped")["reason"].to_list()[0]
        == "no measured power in the lookback"
    )


async def test_journal_records_every_round_and_the_value_series(tmp_path: Path) -> None:
    """Each journal row has the round's times, candidates and scores; ``value`` is the factor in effect
    after the round (the applied winner, else the previous value), and versions increase."""
    wl = write_demo_prefix(tmp_path / "wl", 3.0)
    settings = cf_settings(tmp_path, [4.0, 6.5, 9.0], apply_delay_s=300)
    result = await calibrate_offline(wl, settings, out=tmp_path / "run")
    df = pl.read_parquet(tmp_path / "run" / "calibration.parquet")
    assert df.height == len(result.rounds) >= 2
    assert (df["time"].dt.epoch("ms") % H == 0).all()
    assert ((df["time"] - df["lookback_start"]).dt.total_milliseconds() <= 3 * H).all()
    assert (df["apply_at"] - df["time"]).dt.total_milliseconds().to_list() == [300_000] * df.height
    prev = 4.0
    for row in df.iter_rows(named=True):
        assert len(row["scores"]) == row["candidates"] + row["rejected"]
        if row["status"] == "applied":
            prev = json.loads(row["winner"])["cpuPowerModel.calibrationFactor"]
        assert row["value"] == prev
    versions = df["version"].drop_nulls().to_list()
    assert versions == sorted(versions)
    assert versions
    assert result.mape_pct < 5.0


def test_calibrate_cli_prints_rounds_and_the_whole_trace_mape(tmp_path: Path) -> None:
    """``opendt calibrate --workload DIR --out DIR`` (a real process) prints one line per round and the
    final whole-trace MAPE, writes the journal, and exits 0."""
    wl = write_demo_prefix(tmp_path / "wl", 2.0)
    env = {**os.environ, "OPENDT_CALIBRATION__VALUES": "[4, 6.5]"}
    cmd = [sys.executable, "-m", "opendt", "--log-level", "warning", "calibrate", "--workload", str(wl)]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "round    1" in proc.stdout
    assert "MAPE calibrated" in proc.stdout
    assert "uncalibrated" in proc.stdout
    assert (tmp_path / "run" / "calibration.parquet").exists()
