"""Exactly-once effect across a crash: ``opendt run`` killed with SIGKILL mid-run, then run again, gives the
results of an uninterrupted run, with no duplicate and no missing rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import pytest

from .conftest import assert_windows_contiguous, max_rel_diff, read_results, run_dir

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _opendt_run(wl: Path, data_dir: Path, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json"})
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


def _durable_windows(data_dir: Path) -> int:
    runs = data_dir / "runs"
    if not runs.is_dir():
        return 0
    journals = list(runs.glob("*/windows.parquet"))
    # read once, by bytes: polars opens a path twice (metadata, then pages), which races with the
    # daemon's atomic replace of the file and can pair one version's footer with the next one's pages
    return pl.read_parquet(journals[0].read_bytes()).height if journals else 0


def _run_to_completion(wl: Path, data_dir: Path, log_path: Path) -> None:
    proc = _opendt_run(wl, data_dir, log_path, "--speed", "max", "--exit-when-done")
    try:
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
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
