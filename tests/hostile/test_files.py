"""A workload whose topology file is outside the model's bounds (the issue's coreCount 2⁶² with cpu.count 4, or
100,000 hosts) is refused at once: ``opendt run`` exits 1 with a message naming the file and the field, no
traceback, nothing simulated. A run's results file that disagrees with its window journal stops the restart
the same way."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from structlog.testing import capture_logs

from opendt.daemon import run_daemon
from opendt.settings import Settings

from ..pipeline.conftest import run_dir, write_small_workload
from .conftest import DEMO, REPO


@pytest.mark.parametrize(
    ("host", "field"),
    [
        ({"cpu": {"coreCount": 2**62, "count": 4, "coreSpeed": 2400}}, "cpu.coreCount"),
        ({"count": 100_000}, "count"),
        (
            {"cpuPowerModel": {"modelType": "mse", "idlePower": 30, "maxPower": 1e9, "calibrationFactor": 4}},
            "maxPower",
        ),
    ],
)
def test_out_of_bounds_topology_file_refuses_to_start(
    tmp_path: Path, host: dict[str, Any], field: str
) -> None:
    """``opendt run`` on it: exit 1 within a minute, stderr names topology.json and the field, no traceback,
    no window written."""
    workload = tmp_path / "wl"
    shutil.copytree(DEMO, workload)
    doc = json.loads((workload / "topology.json").read_text())
    doc["clusters"][0]["hosts"][0].update(host)
    (workload / "topology.json").write_text(json.dumps(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_LOG__FORMAT": "json", "OPENDT_API__PORT": "0"})
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "opendt",
            "run",
            "--workload",
            str(workload),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    assert "topology.json" in res.stderr
    assert field in res.stderr
    assert "Traceback" not in res.stderr
    assert not list((tmp_path / "data").glob("runs/*/windows.parquet"))


async def test_results_files_are_checked_against_the_journal_on_load(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A finished run; then its agg_results.parquet is deleted, replaced by an older copy (rows missing), or
    holds rows twice: each restart stops at once with exit 1 and one ``daemon_failed`` line naming the file
    and the way out (before: loaded silently, 286 / 266 rows missing, duplicates kept). Restored, the run
    resumes and exits 0."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload)
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True) == 0
    agg_path = run_dir(settings.data_dir) / "agg_results.parquet"
    good = agg_path.read_bytes()
    agg = pl.read_parquet(agg_path)
    cases = {
        "deleted": None,
        "stale": agg.head(agg.height - 7),
        "doubled": pl.concat([agg, agg.tail(3)]),
    }
    for what, df in cases.items():
        if df is None:
            agg_path.unlink()
        else:
            df.write_parquet(agg_path)
        with capture_logs() as logs:
            async with asyncio.timeout(60):
                assert await run_daemon(settings, exit_when_done=True) == 1, what
        [failed] = [e for e in logs if e["event"] == "daemon_failed"]
        assert "agg_results.parquet" in failed["error"], (what, failed)
        assert ("does not exist" if what == "deleted" else "disagrees with windows.parquet") in failed[
            "error"
        ]
        assert "--fresh" in failed["error"]
        assert "exc_info" not in failed, "a traceback for an error whose message says it all"
        agg_path.write_bytes(good)
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True) == 0
    assert pl.read_parquet(agg_path).equals(agg)
