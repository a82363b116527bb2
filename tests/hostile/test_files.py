"""A workload whose topology file is outside the model's bounds (the issue's coreCount 2⁶² with cpu.count 4, or
100,000 hosts) is refused at once: ``opendt run`` exits 1 with a message naming the file and the field, no
traceback, nothing simulated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
