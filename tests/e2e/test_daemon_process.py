"""`opendt run` as a real process: broker + daemon start, answer, and stop cleanly on signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import polars as pl
import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
TOPO = {
    "clusters": [
        {"hosts": [{"count": 2, "cpu": {"coreCount": 8, "coreSpeed": 2000}, "memory": {"memorySize": 1000}}]}
    ]
}


def _tiny_workload(tmp: Path) -> Path:
    pl.DataFrame(
        {
            "id": ["a"],
            "submission_time": [datetime(2024, 1, 1)],
            "duration": [60_000],
            "cpu_count": [4],
            "cpu_capacity": [8000.0],
            "mem_capacity": [100],
        }
    ).write_parquet(tmp / "tasks.parquet")
    pl.DataFrame(
        {"id": ["a", "a"], "duration": [30_000, 30_000], "cpu_count": [4, 4], "cpu_usage": [1.0, 2.0]}
    ).write_parquet(tmp / "fragments.parquet")
    (tmp / "topology.json").write_text(json.dumps(TOPO))
    return tmp


def _start(tmp: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json"})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opendt",
            "run",
            "--workload",
            str(_tiny_workload(tmp)),
            "--data-dir",
            str(tmp),
            *args,
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    events: dict[str, str] = {}
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == "api_listening":
            events["url"] = rec["url"]
        if rec.get("event") == "daemon_started":
            events["kafka"] = rec["kafka"]
            break
        assert time.monotonic() < deadline, "daemon did not start in 60 s"
    assert "url" in events, "daemon exited before it started"
    # keep draining stderr so the daemon never blocks on a full pipe
    tail: list[str] = []
    threading.Thread(target=lambda: tail.extend(proc.stderr or []), daemon=True).start()
    events["_tail"] = tail  # type: ignore[assignment]
    return proc, events


def _close(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_starts_answers_and_stops_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    """1. `opendt run` starts the embedded broker and the API; 2. /health answers 200; 3. the signal stops it
    with exit 0 within 5 s; 4. no broker process is left behind."""
    proc, events = _start(tmp_path)
    try:
        with urllib.request.urlopen(events["url"] + "/health", timeout=5) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["status"] == "ok"
        with urllib.request.urlopen(events["url"] + "/api/status", timeout=5) as resp:
            status = json.loads(resp.read())
        assert status["status"] == "running"
        assert status["kafka"]["bootstrap_servers"] == events["kafka"]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("tansu" in c.name() for c in children), [c.name() for c in children]
        t0 = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 5
        _, alive = psutil.wait_procs(children, timeout=2)
        assert not alive, f"orphans left: {alive}"
    finally:
        _close(proc)


def test_run_killed_leaves_no_orphan_broker(tmp_path: Path) -> None:
    """SIGKILL of the daemon also takes the embedded broker down (no orphan)."""
    proc, _ = _start(tmp_path)
    children = psutil.Process(proc.pid).children(recursive=True)
    _close(proc)
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"orphans left: {alive}"


def test_run_with_invalid_workload_exits_nonzero_with_message(tmp_path: Path) -> None:
    """A workload that fails validation stops the daemon with exit 1 and a message naming the file."""
    bad = _tiny_workload(tmp_path)
    (bad / "fragments.parquet").write_bytes(b"garbage")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env["OPENDT_LOG__FORMAT"] = "json"
    res = subprocess.run(
        [sys.executable, "-m", "opendt", "run", "--workload", str(bad)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1
    assert "fragments.parquet: cannot read parquet" in res.stderr
    assert "Traceback" not in res.stderr


def test_broker_death_stops_the_daemon_with_an_error(tmp_path: Path) -> None:
    """If the embedded broker dies under a running twin, the daemon exits 1 naming the cause."""
    proc, _ = _start(tmp_path, "--speed", "1")
    try:
        tansu = [c for c in psutil.Process(proc.pid).children(recursive=True) if "tansu" in c.name()]
        assert tansu
        tansu[0].kill()
        assert proc.wait(timeout=30) == 1
    finally:
        _close(proc)
