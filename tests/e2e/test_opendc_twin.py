"""Issue 16 through the real `opendt` command: `opendt run --exit-when-done` with `simulation.engine: opendc`
on the demo equals the builtin twin (the honest stand-in in CI; the real OpenDC runner when
OPENDT_SIMULATION__OPENDC_BIN is set), and a configuration that cannot work fails at start with one line
naming the key (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from .. import runfiles
from ..opendc_standin import write_standin
from .test_cli_ux import _env, _one_line_error, opendt

COLUMNS = ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission")


def _results(data: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    (run,) = (data / "runs").iterdir()
    return runfiles.agg(run), runfiles.journal(run)


def _max_rel(got: pl.DataFrame, ref: pl.DataFrame) -> float:
    assert got["timestamp"].to_list() == ref["timestamp"].to_list()
    worst = 0.0
    for c in COLUMNS:
        scale = ref[c].abs().clip(lower_bound=1e-9)
        worst = max(worst, float(((got[c] - ref[c]).abs() / scale).max()))  # type: ignore[arg-type]
    return worst


@pytest.fixture(scope="module")
def builtin_demo(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """The builtin twin's results on the demo (`opendt run --speed max --exit-when-done`)."""
    data = tmp_path_factory.mktemp("builtin")
    res = opendt(
        "run", "--speed", "max", "--exit-when-done", "--data-dir", str(data), "--port", "0", timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    agg, windows = _results(data)
    assert windows["engine"].unique().to_list() == ["builtin"]
    return agg


def _run_opendc(data: Path, binary: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    res = opendt(
        "run",
        "--speed",
        "max",
        "--exit-when-done",
        "--data-dir",
        str(data),
        "--port",
        "0",
        env=_env(OPENDT_SIMULATION__ENGINE="opendc", OPENDT_SIMULATION__OPENDC_BIN=binary, **env),
        timeout=900,
    )
    return res, time.monotonic() - t0


def test_run_on_the_standin_equals_the_builtin_twin(builtin_demo: pl.DataFrame, tmp_path: Path) -> None:
    """The demo (34 h, 412 windows; all-zero tasks and an idle end) on the honest stand-in, 12 windows per
    run: every instant equal to the builtin twin's within 1e-9, every window stamped opendc, and the log
    shows the runs (one per batch) going through the pool."""
    standin = write_standin(tmp_path / "bin")
    res, _ = _run_opendc(tmp_path / "data", str(standin))
    assert res.returncode == 0, res.stderr[-3000:]
    agg, windows = _results(tmp_path / "data")
    assert _max_rel(agg, builtin_demo) <= 1e-9
    assert agg["tasks_completed"].to_list() == builtin_demo["tasks_completed"].to_list()
    assert windows["engine"].unique().to_list() == ["opendc"]
    assert windows["status"].unique().to_list() == ["ok"]
    runs = [json.loads(x) for x in res.stderr.splitlines() if '"event": "opendc_run"' in x]
    assert len(runs) >= windows.height // 12
    assert all(r["until_ms"] % 300_000 == 0 for r in runs)


@pytest.mark.skipif(
    not os.environ.get("OPENDT_SIMULATION__OPENDC_BIN"),
    reason="opt-in: set OPENDT_SIMULATION__OPENDC_BIN (and JAVA_HOME) to a real OpenDCExperimentRunner",
)
def test_run_on_the_real_opendc_equals_the_builtin_twin(builtin_demo: pl.DataFrame, tmp_path: Path) -> None:
    """The real OpenDC (float32 output) on the demo: within 1e-5 of the builtin twin per interval; prints the
    wall time per simulated hour."""
    binary = os.environ["OPENDT_SIMULATION__OPENDC_BIN"]
    extra = {k: v for k, v in os.environ.items() if k in ("JAVA_HOME", "OPENDT_SIMULATION__JAVA_HOME")}
    res, wall = _run_opendc(tmp_path / "data", binary, **extra)
    assert res.returncode == 0, res.stderr[-3000:]
    agg, windows = _results(tmp_path / "data")
    assert windows["engine"].unique().to_list() == ["opendc"]
    err = _max_rel(agg, builtin_demo)
    hours = windows.height * 300 / 3600
    print(
        f"real OpenDC on the demo: max rel error {err:.3g}, {wall:.1f} s wall, {wall / hours:.2f} s/simulated h"
    )
    assert err <= 1e-5


def test_engine_opendc_without_a_binary_fails_at_start(tmp_path: Path) -> None:
    """engine opendc without simulation.opendc_bin: exit 2, one line naming the key, no run directory."""
    res = opendt("run", "--data-dir", str(tmp_path), env=_env(OPENDT_SIMULATION__ENGINE="opendc"))
    _one_line_error(res, 2, "simulation.opendc_bin", "not set")
    assert not (tmp_path / "runs").exists()


def test_verify_without_a_binary_fails_at_start(tmp_path: Path) -> None:
    res = opendt("run", "--data-dir", str(tmp_path), env=_env(OPENDT_SIMULATION__VERIFY_EVERY_S="3600"))
    _one_line_error(res, 2, "simulation.verify_every_s", "simulation.opendc_bin")


@pytest.mark.parametrize("kind", ["missing", "not_executable", "broken", "old_java"])
def test_a_binary_that_cannot_run_fails_at_start(kind: str, tmp_path: Path) -> None:
    """A binary that does not exist, is not executable, or does not run (its interpreter is missing; a Java
    older than 21): exit 2 with one line naming simulation.opendc_bin and the path."""
    if kind == "missing":
        binary = tmp_path / "no" / "OpenDCExperimentRunner"
    elif kind == "not_executable":
        binary = write_standin(tmp_path / "bin")
        binary.chmod(0o644)
    else:
        binary = write_standin(tmp_path / "bin", kind)  # type: ignore[arg-type]
    env = _env(OPENDT_SIMULATION__ENGINE="opendc", OPENDT_SIMULATION__OPENDC_BIN=str(binary))
    res = opendt("run", "--data-dir", str(tmp_path / "data"), env=env)
    last = _one_line_error(res, 2, "simulation.opendc_bin", str(binary))
    assert not (tmp_path / "data" / "runs").exists()
    if kind == "old_java":  # the JVM's line whole: which class version, and which Java runs (issue 27)
        assert "class file version 65.0" in last, last
        assert "only recognizes class file versions up to 61.0); is Java 21 there" in last, last
