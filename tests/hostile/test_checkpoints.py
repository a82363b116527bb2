"""Checkpoints are data, never code: a crafted pickle in a checkpoint's ``engine.bin`` does not run on the next
resume (before: it ran a shell command as the daemon), and a checkpoint cut in half is skipped with one line
naming its file, for the next older one (before: a raw ZSTD error stopped every restart)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ..pipeline.conftest import max_rel_diff, read_results, run_dir, write_small_workload
from .conftest import REPO

pytestmark = pytest.mark.slow

ENV = {"OPENDT_CHECKPOINT__EVERY_S": "600"}


class _Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def opendt_run(wl: Path, data_dir: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json", **ENV})
    cmd = [sys.executable, "-m", "opendt", "run", "--workload", str(wl), "--data-dir", str(data_dir), *args]
    with log.open("wb") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=f)


def log_records(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def kill_after_checkpoints(wl: Path, data_dir: Path, log: Path, n: int) -> None:
    """``opendt run`` at speed 1500 until ``n`` checkpoints are on disk, then SIGKILL."""
    proc = opendt_run(wl, data_dir, log, "--speed", "1500")
    try:
        deadline = time.monotonic() + 90
        while len(list(data_dir.glob("runs/*/checkpoints/[0-9]*/state.json"))) < n:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{n} checkpoints not written in 90 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_to_end(wl: Path, data_dir: Path, log: Path) -> subprocess.CompletedProcess[bytes]:
    proc = opendt_run(wl, data_dir, log, "--speed", "max", "--exit-when-done")
    try:
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode)


def test_crafted_and_cut_checkpoints_are_skipped_for_an_older_one(tmp_path: Path) -> None:
    """1. A run killed once 4 checkpoints exist; 2. the newest checkpoint's engine.bin is replaced by a pickle
    that would ``touch`` a file when loaded, the one before it is cut in half; 3. the restart runs to the
    end: the file never appears, one ``checkpoint_skipped`` line names each bad engine.bin, the resume starts
    from the third-newest checkpoint, and the results equal an uninterrupted run's."""
    wl = write_small_workload(tmp_path / "wl", tasks=16, hours=2.0)
    crashed = tmp_path / "crashed"
    kill_after_checkpoints(wl, crashed, tmp_path / "first.log", 4)
    ckpts = sorted(
        (p for p in (run_dir(crashed) / "checkpoints").iterdir() if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    ckpts = [p for p in ckpts if (p / "state.json").exists()]
    assert len(ckpts) >= 4
    newest, second, third = ckpts[-1], ckpts[-2], ckpts[-3]
    marker = tmp_path / "pwned"
    (newest / "engine.bin").write_bytes(pickle.dumps(_Evil(marker)))
    blob = (second / "engine.bin").read_bytes()
    (second / "engine.bin").write_bytes(blob[: len(blob) // 2])

    res = run_to_end(wl, crashed, tmp_path / "second.log")
    records = log_records(tmp_path / "second.log")
    assert not marker.exists(), "the checkpoint ran a command"
    assert res.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    skipped = [r for r in records if r["event"] == "checkpoint_skipped"]
    assert sorted(r["file"] for r in skipped) == sorted(str(p / "engine.bin") for p in (newest, second))
    assert "Traceback" not in (tmp_path / "second.log").read_text()
    [resumed] = [r for r in records if r["event"] == "resumed"]
    assert resumed["checkpoint_ms"] == int(third.name)

    clean = tmp_path / "clean"
    assert run_to_end(wl, clean, tmp_path / "clean.log").returncode == 0
    agg, windows = read_results(crashed)
    ref, ref_windows = read_results(clean)
    assert windows["window_start"].to_list() == ref_windows["window_start"].to_list()
    assert agg["timestamp"].to_list() == ref["timestamp"].to_list()
    assert max_rel_diff(agg, ref, ("power_draw", "energy_usage", "carbon_emission")) <= 1e-9
    assert agg["tasks_completed"].to_list() == ref["tasks_completed"].to_list()
    assert np.allclose(agg["cpu_work"], ref["cpu_work"], rtol=1e-9, atol=1e-6)
