"""A disk that fills up stops the twin with one clear error (exit 1), leaves every file readable, and a
restart once space is freed resumes where it stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from opendt.twin.tables import AGG

from .. import runfiles
from .live import Proc, env, max_rel_diff, plain_run, run_dir

COLUMNS = ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission")


def _mount(path: Path, size: str, *, remount: bool = False) -> bool:
    opts = f"remount,size={size}" if remount else f"size={size}"
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, check=False
    )
    return res.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1.5 MB tmpfs (needs root and mount, as CI and the sessions have; skipped otherwise)."""
    path = tmp_path / "disk"
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or not _mount(path, "1536k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_stops_the_twin_cleanly_and_a_restart_resumes(small_disk: Path, tmp_path: Path) -> None:
    """1. the demo runs with its data on a 1.5 MB disk: it fills mid-run; 2. the daemon exits 1 with one
    daemon_failed line saying the disk is full and what to do, no traceback; 3. every parquet file of the run
    still reads, no temporary file is left, and result rows without a journal entry belong at most to the
    window whose write failed (a reload drops them); 4. the disk is
    grown to 64 MB and the same command resumes: it finishes with exit 0 and results equal a plain run."""
    args = ["run", "--speed", "max", "--exit-when-done", "--data-dir", str(small_disk)]
    first = Proc(args, env())
    assert first.wait(300) == 1, first.tail()
    failed = first.all("daemon_failed")
    assert len(failed) == 1, first.tail()
    assert "no space left on the device" in failed[0]["error"]
    assert "exception" not in failed[0]
    assert not any("Traceback" in line for line in first.lines)
    run = run_dir(small_disk)
    assert not list(run.rglob("*.tmp"))
    journal = runfiles.journal(run)
    assert 0 < journal.height < 413
    # only the window whose write failed may have rows without a journal entry (cut off on load)
    orphans = set(runfiles.frame_starts(run, AGG)) - set(journal["window_start"].dt.epoch("ms").to_list())
    assert orphans <= set(journal["window_end"].dt.epoch("ms").tail(1).to_list())
    assert _mount(small_disk, "64m", remount=True)
    again = Proc(args, env())
    assert again.wait(300) == 0, again.tail()
    resumed = again.event("resumed")
    assert resumed["until_ms"] == int(journal["window_end"].dt.epoch("ms").max())  # type: ignore[arg-type]
    reference = plain_run(tmp_path / "plain")
    final = runfiles.agg(run_dir(small_disk))
    assert final["timestamp"].to_list() == reference["timestamp"].to_list()
    assert max_rel_diff(final, reference, COLUMNS) <= 1e-9
    assert runfiles.journal(run_dir(small_disk))["window_start"].is_unique().all()
