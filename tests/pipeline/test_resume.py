"""Exactly-once effect across a crash: ``opendt run`` killed with SIGKILL mid-run, then run again, gives the
results of an uninterrupted run, with no duplicate and no missing rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psutil
import pytest

from .. import runfiles
from ..opendc_standin import write_standin
from .conftest import assert_windows_contiguous, late_carbon, max_rel_diff, read_results, run_dir

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _opendt_run(
    wl: Path, data_dir: Path, log_path: Path, *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json", **(env_extra or {})})
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "opendt",
                "run",
                "--workload",
                str(wl),
                "--data-dir",
                str(data_dir),
                *args,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _events(log_path: Path) -> dict[str, dict[str, Any]]:
    """The last record of each event name in a JSON log."""
    out: dict[str, dict[str, Any]] = {}
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[rec["event"]] = rec
    return out


def _journal(data_dir: Path, name: str) -> pl.DataFrame | None:
    """A parquet file of the run under ``data_dir`` while the daemon may be writing it: read once, by bytes."""
    files = list((data_dir / "runs").glob(f"*/{name}")) if (data_dir / "runs").is_dir() else []
    return pl.read_parquet(files[0].read_bytes()) if files else None


def _durable_windows(data_dir: Path) -> int:
    """The windows of the run under ``data_dir`` the daemon has journaled so far (it may be appending)."""
    runs = list((data_dir / "runs").glob("*/windows.arrowlog")) if (data_dir / "runs").is_dir() else []
    return runfiles.journal(runs[0].parent).height if runs else 0


def _run_to_completion(
    wl: Path, data_dir: Path, log_path: Path, env_extra: dict[str, str] | None = None
) -> None:
    proc = _opendt_run(wl, data_dir, log_path, "--speed", "max", "--exit-when-done", env_extra=env_extra)
    try:
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _kill_9_when(
    proc: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool], timeout_s: float, what: str
) -> None:
    """SIGKILL ``proc`` once ``ready()`` holds (polled; the daemon must still run), within ``timeout_s``."""
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{what} in {timeout_s:g} s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_9_mid_run_then_rerun_equals_uninterrupted_run(tmp_path: Path, small_workload: Path) -> None:
    """1. `opendt run` at speed 1500 until at least 5 windows are durable, then SIGKILL (daemon, broker and
    engine worker go); 2. the journal shows a partial run; 3. `opendt run --exit-when-done` on the same data
    dir resumes the same run: the durable windows are replayed into the engine, not rewritten; 4. the
    results have no duplicate and no missing timestamp and equal an uninterrupted run's within 1e-9."""
    crashed = tmp_path / "crashed"
    proc = _opendt_run(small_workload, crashed, tmp_path / "first.log", "--speed", "1500")
    try:
        deadline = time.monotonic() + 60
        while _durable_windows(crashed) < 5:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no durable window in 60 s"
            time.sleep(0.05)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"orphans left: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    agg_before, before = read_results(crashed)
    assert before.height >= 5
    assert "replay_finished" not in _events(tmp_path / "first.log"), "the kill came after the replay ended"

    _run_to_completion(small_workload, crashed, tmp_path / "second.log")
    events = _events(tmp_path / "second.log")
    assert events["daemon_started"]["resumed_windows"] == before.height
    assert events["simulator_finished"]["replayed"] == before.height
    agg, windows = read_results(crashed)
    assert windows.head(before.height).equals(before), "durable windows were rewritten"
    assert agg.head(agg_before.height).equals(agg_before)
    assert windows.height > before.height
    assert_windows_contiguous(windows)
    assert windows["status"].unique().to_list() == ["ok"]

    clean = tmp_path / "clean"
    _run_to_completion(small_workload, clean, tmp_path / "clean.log")
    ref, ref_windows = read_results(clean)
    assert run_dir(clean).name == run_dir(crashed).name  # the deterministic run id
    assert agg["timestamp"].is_unique().all()
    assert agg["timestamp"].to_list() == ref["timestamp"].to_list()
    assert windows["window_start"].to_list() == ref_windows["window_start"].to_list()
    assert max_rel_diff(agg, ref, ("power_draw", "energy_usage", "carbon_emission")) <= 1e-9
    assert agg["tasks_completed"].to_list() == ref["tasks_completed"].to_list()  # none lost, none twice
    assert np.allclose(agg["cpu_work"], ref["cpu_work"], rtol=1e-9, atol=1e-6)


CALIBRATION = {
    "OPENDT_CALIBRATION__ENABLED": "true",
    "OPENDT_CALIBRATION__EVERY_S": "900",
    "OPENDT_CALIBRATION__LOOKBACK_S": "900",
    "OPENDT_CALIBRATION__APPLY_DELAY_S": "600",
    "OPENDT_CALIBRATION__GRID": '[{"parameter": "cpuPowerModel.calibrationFactor", "values": [2, 5, 8]}]',
    "OPENDT_CALIBRATION__REFINE_STEPS": "0",
}
ROUND_KEYS = ["round", "time", "apply_at", "status", "winner", "in_effect", "version", "winner_score"]


def test_kill_9_with_calibration_then_rerun_keeps_rounds_and_topologies(
    tmp_path: Path, small_workload: Path
) -> None:
    """With calibration on, SIGKILL once a round was applied (and, when the timing allows, another waits for
    its apply instant), then rerun: the earlier process's rounds stay in calibration.parquet (before, the
    first new round rewrote it with only its own), the twin keeps the calibrated topology after the replayed
    windows and new versions follow the saved ones (before, it fell back to the physical topology and
    version 1 was reused for a different topology), and the rounds, topology versions and results equal an
    uninterrupted run's."""
    crashed = tmp_path / "crashed"
    proc = _opendt_run(
        small_workload, crashed, tmp_path / "first.log", "--speed", "600", env_extra=CALIBRATION
    )

    def applied() -> bool:
        rounds = _journal(crashed, "calibration.parquet")
        status = [] if rounds is None else rounds["status"].to_list()
        return "applied" in status and ("chosen" in status or status.count("applied") >= 2)

    _kill_9_when(proc, tmp_path / "first.log", applied, 90, "no calibration round applied")
    rounds_before = _journal(crashed, "calibration.parquet")
    assert rounds_before is not None
    _, windows_before = read_results(crashed)
    assert windows_before["topology_version"].to_numpy().max() >= 1, (
        "the kill came before a calibrated window"
    )
    saved_before = {p.name: p.read_text() for p in (run_dir(crashed) / "topologies").glob("v*.json")}

    _run_to_completion(small_workload, crashed, tmp_path / "second.log", CALIBRATION)
    assert _events(tmp_path / "second.log")["topology_resumed"]["version"] >= 1
    rounds = _journal(crashed, "calibration.parquet")
    assert rounds is not None
    assert rounds["round"].is_unique().all()
    done = rounds_before.filter(pl.col("status") != "chosen").select(ROUND_KEYS)
    assert rounds.select(ROUND_KEYS).filter(pl.col("round").is_in(done["round"].implode())).equals(done)
    for name, text in saved_before.items():  # no version number reused for another topology
        assert (
            json.loads((run_dir(crashed) / "topologies" / name).read_text())["topology"]
            == json.loads(text)["topology"]
        )

    clean = tmp_path / "clean"
    _run_to_completion(small_workload, clean, tmp_path / "clean.log", CALIBRATION)
    ref_rounds = _journal(clean, "calibration.parquet")
    assert ref_rounds is not None
    assert "applied" in ref_rounds["status"].to_list()
    assert rounds.select(ROUND_KEYS).equals(ref_rounds.select(ROUND_KEYS))
    agg, windows = read_results(crashed)
    ref, ref_windows = read_results(clean)
    assert windows["topology_version"].to_list() == ref_windows["topology_version"].to_list()
    assert agg["timestamp"].to_list() == ref["timestamp"].to_list()
    assert max_rel_diff(agg, ref, ("power_draw", "energy_usage", "carbon_emission")) <= 1e-9
    assert agg["tasks_completed"].to_list() == ref["tasks_completed"].to_list()


def test_kill_9_on_the_opendc_engine_then_rerun_equals_the_builtin_twin(
    tmp_path: Path, small_workload: Path
) -> None:
    """simulation.engine opendc (the honest stand-in, 4 windows per run): SIGKILL mid-run, possibly inside a
    batch whose run had already extended the OpenDC history; the rerun resumes (durable windows not
    rewritten) and the results equal an uninterrupted builtin twin's within 1e-9, none lost or twice."""
    standin = write_standin(tmp_path / "bin")
    env = {
        "OPENDT_SIMULATION__ENGINE": "opendc",
        "OPENDT_SIMULATION__OPENDC_BIN": str(standin),
        "OPENDT_SIMULATION__OPENDC_EVERY_WINDOWS": "4",
    }
    crashed = tmp_path / "crashed"
    proc = _opendt_run(small_workload, crashed, tmp_path / "first.log", "--speed", "1500", env_extra=env)
    _kill_9_when(
        proc, tmp_path / "first.log", lambda: _durable_windows(crashed) >= 6, 60, "no 6 durable windows"
    )
    agg_before, before = read_results(crashed)
    _run_to_completion(small_workload, crashed, tmp_path / "second.log", env_extra=env)
    assert _events(tmp_path / "second.log")["daemon_started"]["resumed_windows"] == before.height
    agg, windows = read_results(crashed)
    assert windows.head(before.height).equals(before), "durable windows were rewritten"
    assert agg.head(agg_before.height).equals(agg_before)
    assert windows["engine"].unique().to_list() == ["opendc"]
    assert windows["status"].unique().to_list() == ["ok"]
    assert_windows_contiguous(windows)

    clean = tmp_path / "clean"
    _run_to_completion(small_workload, clean, tmp_path / "clean.log")
    ref, _ = read_results(clean)
    assert agg["timestamp"].to_list() == ref["timestamp"].to_list()
    assert max_rel_diff(agg, ref, ("power_draw", "energy_usage", "carbon_emission")) <= 1e-9
    assert agg["tasks_completed"].to_list() == ref["tasks_completed"].to_list()


def test_kill_9_before_and_after_the_first_carbon_step_keeps_unknown_and_known(
    tmp_path: Path, small_workload: Path
) -> None:
    """A carbon feed that starts 37 min into the trace: the windows before its first step have unknown
    emissions (null), the later ones known. SIGKILL before the first step arrived (the checkpoints hold an
    engine that never had carbon), rerun and SIGKILL again after it (they now hold one that has), rerun to the
    end: unknown stays unknown and known stays known, row for row as an uninterrupted run."""
    first_step = late_carbon(small_workload, 37)
    env = {"OPENDT_CHECKPOINT__EVERY_S": "900"}
    crashed = tmp_path / "crashed"
    proc = _opendt_run(small_workload, crashed, tmp_path / "first.log", "--speed", "1500", env_extra=env)
    _kill_9_when(proc, tmp_path / "first.log", lambda: _durable_windows(crashed) >= 5, 60, "no 5 windows")
    agg, _ = read_results(crashed)
    assert agg.height > 0
    assert agg["carbon_emission"].null_count() == agg.height, "the first kill came after the first step"
    proc = _opendt_run(small_workload, crashed, tmp_path / "second.log", "--speed", "1500", env_extra=env)
    _kill_9_when(proc, tmp_path / "second.log", lambda: _durable_windows(crashed) >= 14, 60, "no 14 windows")
    agg, _ = read_results(crashed)
    assert agg["carbon_emission"].is_not_null().any(), "the second kill came before the first step"
    assert "replay_finished" not in _events(tmp_path / "second.log"), "the kill came after the replay ended"
    _run_to_completion(small_workload, crashed, tmp_path / "third.log", env)
    agg, windows = read_results(crashed)
    assert windows["status"].unique().to_list() == ["ok"]
    assert_windows_contiguous(windows)

    clean = tmp_path / "clean"
    _run_to_completion(small_workload, clean, tmp_path / "clean.log", env)
    ref, _ = read_results(clean)
    assert agg["timestamp"].to_list() == ref["timestamp"].to_list()
    t = agg["timestamp"].dt.epoch("ms")
    unknown = (t - 150_000 < first_step).to_list()  # an export interval (150 s) holding time before the step
    assert any(unknown)
    assert not all(unknown)
    for frame in (agg, ref):
        assert frame["carbon_emission"].is_null().to_list() == unknown
        assert frame.filter(~pl.Series(unknown))["carbon_emission"].min() > 0  # type: ignore[operator]
        assert frame["carbon_intensity"].is_null().to_list() == (t <= first_step).to_list()
    assert (
        max_rel_diff(agg, ref, ("power_draw", "energy_usage", "carbon_emission", "carbon_intensity")) <= 1e-9
    )
