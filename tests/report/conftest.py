"""Report test inputs, made once per session by real processes on the demo workload (no ../shared needed):

- ``demo_runs``: an uncalibrated run of the daemon (``opendt run --speed max --exit-when-done``; its data
  directory, the run under ``runs/``) and a calibrated run of the offline path (``opendt calibrate --out``,
  a run directory; calibrationFactor 4 / 6.5 / 9), made at the same time;
- ``cli_report``: ``opendt report`` on both (png, svg, html) and what it printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
FIGURES = (
    "power_prediction",
    "mape_over_time",
    "sustainability",
    "job_completion",
    "calibration",
    "carbon",
    "window_latency",
)


def opendt_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's OPENDT_* settings, API on a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    return {**env, "OPENDT_API__PORT": "0", **extra}


def opendt(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "opendt", "--log-level", "warning", *map(str, args)]


@dataclass(frozen=True)
class DemoRuns:
    uncalibrated: Path
    """A data directory (the daemon's run is under runs/)."""
    calibrated: Path
    """A run directory (``opendt calibrate --out``)."""

    @property
    def uncalibrated_run(self) -> Path:
        (run,) = (self.uncalibrated / "runs").iterdir()
        return run


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> DemoRuns:
    """Both demo runs, made concurrently as real processes (the daemon with its broker; the offline
    calibrator with its candidate workers)."""
    base = tmp_path_factory.mktemp("report-runs")
    runs = DemoRuns(base / "uncalibrated", base / "calibrated")
    cal_env = opendt_env(
        OPENDT_CALIBRATION__GRID='[{"parameter": "cpuPowerModel.calibrationFactor", "values": [4, 6.5, 9]}]',
        OPENDT_CALIBRATION__REFINE_STEPS="0",
    )
    with (base / "run.log").open("wb") as log1, (base / "calibrate.log").open("wb") as log2:
        daemon = subprocess.Popen(
            opendt("run", "--speed", "max", "--exit-when-done", "--data-dir", runs.uncalibrated),
            env=opendt_env(),
            stdout=log1,
            stderr=log1,
        )
        offline = subprocess.Popen(
            opendt("calibrate", "--workload", DEMO, "--out", runs.calibrated),
            env=cal_env,
            stdout=log2,
            stderr=log2,
        )
        try:
            assert daemon.wait(timeout=280) == 0, (base / "run.log").read_text()[-3000:]
            assert offline.wait(timeout=280) == 0, (base / "calibrate.log").read_text()[-3000:]
        finally:
            for p in (daemon, offline):
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return runs


@dataclass(frozen=True)
class CliReport:
    out: Path
    stdout: str
    manifest: dict[str, Any]


@pytest.fixture(scope="session")
def cli_report(demo_runs: DemoRuns, tmp_path_factory: pytest.TempPathFactory) -> CliReport:
    """``opendt report UNCALIBRATED CALIBRATED --workload data/demo --format png,svg,html`` (a real process)."""
    out = tmp_path_factory.mktemp("report") / "out"
    cmd = opendt("report", demo_runs.uncalibrated, demo_runs.calibrated, "--workload", DEMO, "--out", out)
    proc = subprocess.run([*cmd, "--format", "png,svg,html"], env=opendt_env(), capture_output=True, text=True,
                          timeout=280)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return CliReport(out, proc.stdout, json.loads((out / "report.json").read_text()))
