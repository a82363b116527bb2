"""`opendt runs` and `opendt serve` over run directories of the live twin's layout (issue 15's contract),
made here file by file: run.json (replay or Kafka source, the result-affecting settings), agg_results,
windows, measured.parquet (per source), saved topologies and optimizer.jsonl; and a directory without
run.json (older runs) read gracefully."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

REPO = Path(__file__).resolve().parents[2]
T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
TOPO = {
    "clusters": [
        {
            "name": "c",
            "hosts": [
                {
                    "name": "h",
                    "count": 2,
                    "cpu": {"coreCount": 8, "coreSpeed": 2000},
                    "memory": {"memorySize": 1000},
                    "cpuPowerModel": {
                        "modelType": "mse",
                        "idlePower": 30,
                        "maxPower": 190,
                        "calibrationFactor": 4,
                    },
                }
            ],
        }
    ]
}


def _ts(ms: list[int]) -> pl.Series:
    return pl.Series(ms).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")


def make_run(root: Path, run_id: str, source: dict[str, Any] | None, calibrated: bool = False) -> Path:
    """A finished run of 4 windows of 300 s (2 export rows each), measured power from two sources."""
    d = root / "runs" / run_id
    (d / "topologies").mkdir(parents=True)
    if source is not None:
        doc = {
            "run_id": run_id,
            "created": "2026-12-01T10:00:00Z",
            "opendt_version": "0.1.0",
            "source": source,
            "settings": {
                "windowing": {"window_s": 300, "queue_size": 8},
                "simulation": {"engine": "builtin", "export_interval_s": 150},
                "calibration": {"enabled": calibrated},
                "optimizer": {"enabled": True},
                "export_interval_s": 150,
            },
        }
        (d / "run.json").write_text(json.dumps(doc))
    starts = [T0 + w * 300_000 for w in range(4)]
    rows = [s + k * 150_000 for s in starts for k in (1, 2)]
    pl.DataFrame(
        {
            "timestamp": _ts(rows),
            "power_draw": [1000.0] * 8,
            "energy_usage": [150_000.0] * 8,
            "carbon_intensity": [200.0] * 8,
            "carbon_emission": [8.0] * 8,
            "topology_version": [0] * 4 + [1] * 4,
            "window_start": _ts([s for s in starts for _ in (1, 2)]),
        }
    ).write_parquet(d / "agg_results.parquet")
    pl.DataFrame(
        {
            "window_start": _ts(starts),
            "window_end": _ts([s + 300_000 for s in starts]),
            "status": ["ok", "ok", "failed", "ok"],
            "rows": [2, 2, 2, 2],  # as agg_results.parquet holds (checked on load)
            "tasks": [1, 0, 0, 0],
            "fragments": [10, 10, 0, 10],
            "power_samples": [4] * 4,  # as measured.parquet holds
            "topology_version": [0, 0, 1, 1],
            "latency_s": [0.01] * 4,
            "compute_s": [0.005] * 4,
            "attempts": [1, 1, 2, 1],
            "error": ["", "", "engine failed", ""],
        }
    ).write_parquet(d / "windows.parquet")
    # two meters, half each: the datacenter's measured power is their sum (800 W: MAPE 25 %)
    pl.DataFrame(
        {
            "timestamp": _ts([t for t in rows for _ in (0, 1)]),
            "source": ["pdu-a", "pdu-b"] * 8,
            "power_draw": [400.0] * 16,
            "energy_usage": [60_000.0] * 16,
            "window_start": _ts([s for s in starts for _ in range(4)]),
        }
    ).write_parquet(d / "measured.parquet")
    for v, source_name in ((0, "initial"), (1, "api")):
        topo = json.loads(json.dumps(TOPO))
        topo["clusters"][0]["hosts"][0]["count"] = 2 + v
        saved: dict[str, Any] = {"version": v, "source": source_name, "reason": f"v{v}", "timestamp_ms": T0}
        saved["topology"] = topo
        (d / "topologies" / f"v{v}.json").write_text(json.dumps(saved))
    (d / "optimizer.jsonl").write_text(
        json.dumps(
            {
                "record": "round", "round": 1, "start_ms": T0, "end_ms": T0 + 3_600_000, "base_version": 0,
                "status": "maintain", "note": "on target", "baseline": None, "baseline_score": None,
                "baseline_meets": {}, "proposal": None, "candidate": None, "candidate_meets": {}, "verdict": None,
                "tasks": None, "proposal_compute_s": None, "candidates": [], "duration_s": 0.1,
                "accepted_version": None,
            }
        )
        + "\n"
    )  # fmt: skip
    return d


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env["OPENDT_LOG__FORMAT"] = "json"
    return env


def _opendt(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "opendt", *args], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    return res


def test_runs_reads_the_run_directory_contract(tmp_path: Path) -> None:
    """`opendt runs` shows each run's workload (or Kafka source), settings summary, windows (failed apart)
    and the MAPE against measured.parquet's sources summed; `runs show --json` the details; a run without
    run.json is listed too."""
    replay = {"kind": "replay", "workload": "/data/w", "workload_name": "demo", "workload_sha1": "ab" * 20}
    kafka = {"kind": "kafka", "bootstrap_servers": "kafka:9092", "topics": {"tasks": "dc.tasks"}}
    make_run(tmp_path, "demo-0123456789", replay)
    time.sleep(0.05)
    make_run(tmp_path, "live-abcdefabcd", kafka, calibrated=True)
    make_run(tmp_path, "old-run", None)
    res = _opendt("runs", "--data-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: line for line in res.stdout.strip().splitlines()[1:]}
    assert set(rows) == {"demo-0123456789", "live-abcdefabcd", "old-run"}
    assert "demo" in rows["demo-0123456789"]
    assert "window 300s, export 150s, builtin, uncalibrated, optimizer" in rows["demo-0123456789"]
    assert "kafka kafka:9092" in rows["live-abcdefabcd"]
    assert "calibrated" in rows["live-abcdefabcd"]
    assert "3 (+1 failed)" in rows["demo-0123456789"]
    assert "25.00" in rows["demo-0123456789"]
    assert "(no run.json)" in rows["old-run"]
    doc = json.loads(_opendt("runs", "show", "live", "--json", "--data-dir", str(tmp_path)).stdout)
    assert doc["run_id"] == "live-abcdefabcd"
    assert doc["mape_pct"] == 25.0
    assert doc["mape_points"] == 8
    assert doc["windows_failed"] == 1
    assert doc["energy_kwh"] == 8 * 150_000 / 3.6e6
    assert doc["topology_versions"] == 2
    assert doc["optimizer_rounds"] == 1
    assert doc["run_json"]["source"]["kind"] == "kafka"
    assert doc["first"] == datetime.fromtimestamp(T0 / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def test_serve_a_run_of_the_contract(tmp_path: Path) -> None:
    """`opendt serve --run ID` over such a directory: measured power from measured.parquet (sources summed),
    the simulated topology of the highest saved version, the optimizer's journal, status of the run."""
    make_run(tmp_path, "live-abcdefabcd", {"kind": "kafka", "bootstrap_servers": "k:9092", "topics": {}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "opendt", "serve", "--run", "live", "--data-dir", str(tmp_path), "--port", "0"],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        url = ""
        for line in proc.stderr:
            if line.startswith("opendt: serving run live-abcdefabcd (4 windows)"):
                url = line.split("dashboard ", 1)[1].split()[0].rstrip("/")
                break
        assert url

        def get(path: str) -> Any:
            with urllib.request.urlopen(url + path, timeout=10) as r:
                return json.loads(r.read())

        power = get("/api/power?step_s=150")
        assert power["measured"][0][1] == 800.0
        assert power["metrics"]["mape_pct"] == 25.0
        topo = get("/api/topology")
        assert topo["simulated"]["version"] == 1
        assert topo["simulated"]["topology"]["clusters"][0]["hosts"][0]["count"] == 3
        assert topo["physical"]["clusters"][0]["hosts"][0]["count"] == 2
        opt = get("/api/optimizer")
        assert [h["round"] for h in opt["history"]] == [1]
        status = get("/api/status")
        assert status["run_id"] == "live-abcdefabcd"
        assert status["workload"]["start_ms"] == T0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for s in (proc.stdout, proc.stderr):
            if s is not None:
                s.close()
