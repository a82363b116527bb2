"""The OpenDC CLI contract of ``python -m opendt.engine``, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import host_spec, linear

ROOT = Path(__file__).resolve().parents[2]


def _workload(d: Path, durations: tuple[int, ...] = (30_000, 30_000)) -> None:
    d.mkdir(parents=True, exist_ok=True)
    tasks = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int32()),
            "submission_time": pa.array(
                [1_665_093_600_000, 1_665_093_601_500, 1_665_093_660_000], pa.int64()
            ),
            "duration": pa.array([60_000, 60_000, 0], pa.int64()),
            "cpu_count": pa.array([8, 8, 4], pa.int32()),
            "cpu_capacity": pa.array([16_000.0, 16_000.0, 1.0], pa.float64()),
            "mem_capacity": pa.array([100_000, 100_000, 100_000], pa.int64()),
        }
    )
    frags = pa.table(
        {
            "id": pa.array([1, 1, 2, 2], pa.int32()),
            "duration": pa.array([*durations, 30_000, 30_000], pa.int64()),
            "cpu_usage": pa.array([16_000.0, 8_000.0, 4_000.0, 0.0], pa.float64()),
        }
    )
    pq.write_table(tasks, d / "tasks.parquet")
    pq.write_table(frags, d / "fragments.parquet")


def _setup(tmp: Path, *, topo: dict[str, Any] | None = None, exp: dict[str, Any] | None = None) -> Path:
    _workload(tmp / "wl")
    carbon = pa.table({"timestamp": pa.array([1_665_093_000_000], pa.int64()), "carbon_intensity": [120.0]})
    (tmp / "inputs").mkdir()
    pq.write_table(carbon, tmp / "inputs" / "carbon.parquet")
    t = topo or {
        "clusters": [
            {
                "name": "C",
                "hosts": [host_spec("H", 2, 8, 2000.0, linear())],
                "powerSource": {"carbonTracePath": "inputs/carbon.parquet"},
            }
        ]
    }
    (tmp / "topology.json").write_text(json.dumps(t))
    e = {
        "name": "x",
        "topologies": [{"pathToFile": "topology.json"}],
        "workloads": [{"pathToFile": "wl", "type": "ComputeWorkload"}],
        "outputFolder": "out",
        "exportModels": [{"exportInterval": 30, "filesToExport": ["powerSource", "host", "task", "service"]}],
    }
    e.update(exp or {})
    (tmp / "exp.json").write_text(json.dumps(e))
    return tmp / "exp.json"


def _run(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opendt.engine", "--experiment-path", "exp.json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_cli_writes_opendc_files(tmp_path: Path) -> None:
    """A valid experiment writes the four parquet files with OpenDC's types, plus trackr.json."""
    _setup(tmp_path)
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "x" / "raw-output" / "0" / "seed=0"
    ps = pq.read_schema(out / "powerSource.parquet")
    assert ps.field("power_draw").type == pa.float32()
    assert ps.field("timestamp").type == pa.int64()
    assert pq.read_schema(out / "service.parquet").field("tasks_total").type == pa.int32()
    assert pq.read_schema(out / "task.parquet").field("task_id").type == pa.int32()
    assert pq.read_schema(out / "host.parquet").field("core_count").type == pa.int32()
    rows = pl.read_parquet(out / "powerSource.parquet")
    assert rows["timestamp"].to_list() == [30_000, 60_000, 62_000]
    assert rows["carbon_intensity"].to_list() == [120.0] * 3
    tasks = pl.read_parquet(out / "task.parquet").filter(pl.col("task_state") == "COMPLETED")
    assert sorted(tasks["finish_time"].to_list()) == [60_000, 62_000]
    trackr = json.loads((tmp_path / "out" / "x" / "trackr.json").read_text())
    assert trackr[0]["exportModel"]["filesToExportDict"]["battery"] is False


@pytest.mark.parametrize(
    ("topo", "exp", "needle"),
    [
        (None, {"bogus": 1}, "unknown key 'bogus'"),
        (None, {"workloads": [{"pathToFile": "nowhere", "type": "ComputeWorkload"}]}, "workload directory"),
        (None, {"topologies": [{"pathToFile": "missing.json"}]}, "topology file not found"),
        (None, {"allocationPolicies": [{"type": "prefab", "policyName": "Random"}]}, "allocation policy"),
        (None, {"failureModels": [{"type": "prefab", "prefabName": "G5k06Exp"}]}, "failure models"),
        (
            None,
            {"workloads": [{"pathToFile": "wl", "type": "ComputeWorkload", "sampleFraction": 0.5}]},
            "sample",
        ),
        (None, {"exportModels": [{"exportInterval": 0}]}, "exportInterval"),
        ({"clusters": [{"hosts": [host_spec("H", 1, 0, 2000.0, linear())]}]}, None, "coreCount"),
        (
            {"clusters": [{"hosts": [host_spec("H", 1, 8, 2000.0, {**linear(), "modelType": "x"})]}]},
            None,
            "modelType",
        ),
        (
            {
                "clusters": [
                    {"hosts": [host_spec("H", 1, 8, 2000.0, {**linear(), "modelType": "asymptotic"})]}
                ]
            },
            None,
            "asymUtil",
        ),
        (
            {
                "clusters": [
                    {
                        "hosts": [host_spec("H", 1, 8, 2000.0, linear())],
                        "powerSource": {"carbonTracePath": "no"},
                    }
                ]
            },
            None,
            "carbon trace not found",
        ),
    ],
)
def test_cli_rejects_invalid_input(
    tmp_path: Path, topo: dict[str, Any] | None, exp: dict[str, Any] | None, needle: str
) -> None:
    """Invalid or unsupported input: exit code ≠ 0 and a one-line error naming the problem, no traceback."""
    _setup(tmp_path, topo=topo, exp=exp)
    r = _run(tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert needle in lines[0]


def test_cli_rejects_negative_fragment_duration(tmp_path: Path) -> None:
    """A negative fragment duration is reported as such, with exit code ≠ 0."""
    _setup(tmp_path)
    _workload(tmp_path / "wl", durations=(30_000, -5))
    r = _run(tmp_path)
    assert r.returncode != 0
    assert "negative duration" in r.stderr
    assert "Traceback" not in r.stderr
