"""What a newcomer hit trying OpenDT (issue 27 item 3), through the real `opendt` command as a process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from opendt.twin.results import WINDOW_SCHEMA

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_LOG__FORMAT": "json", **extra})
    return env


def opendt(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opendt", *args],
        cwd=REPO,
        env=env if env is not None else _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_replay_without_a_kafka_refuses_and_says_why() -> None:
    """Before: `opendt replay` started an embedded broker, streamed into it, stopped it and exited 0: the data
    was gone. Now: exit 2 with one line naming the setting, the option and `opendt broker`; nothing started."""
    res = opendt("replay", "--workload", str(DEMO), "--speed", "max")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    for needle in ("kafka.bootstrap_servers", "--bootstrap-servers", "opendt broker", "lost"):
        assert needle in last, (needle, last)
    assert "broker_started" not in res.stdout + res.stderr
    assert res.stdout == ""


def test_replay_help_explains_what_it_does() -> None:
    res = opendt("replay", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for needle in (
        "as the datacenter would",
        "dc.* topics",
        "opendt run --no-replay",
        "--bootstrap-servers",
        "opendt broker",
        "'max' for as fast as possible",
    ):
        assert needle in text, (needle, text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_broker_listens_on_the_port_given() -> None:
    """`opendt broker --port N` runs Tansu on N (before: no --port, a usage error), prints host:N, and a
    Ctrl-C stops it with exit 0."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "opendt", "broker", "--port", str(port)],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == f"127.0.0.1:{port}", line
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("value", ["compose-token-in-my-shell"])
def test_compose_token_variable_in_the_shell_is_left_alone(value: str) -> None:
    """OPENDT_API_TOKEN (compose's variable) exported in a shell made every local `opendt` exit 2 as an
    unknown setting; it is not a setting and is ignored (a misspelt setting is still refused)."""
    res = opendt("config", "show", env=_env(OPENDT_API_TOKEN=value))
    assert res.returncode == 0, res.stderr
    assert value not in res.stdout + res.stderr
    res = opendt("config", "show", env=_env(OPENDT_API__TOKN=value))
    assert res.returncode == 2
    assert "OPENDT_API__TOKN" in res.stderr


def test_runs_show_is_bounded_whatever_the_run_holds(tmp_path: Path) -> None:
    """`opendt runs show` of a long run printed every input frame and checkpoint file on one line (94 KB on
    SURF); now each subdirectory is one entry (file count and size) and the output stays small."""
    run = tmp_path / "runs" / "surf-0123456789"
    (run / "inputs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    pl.DataFrame(schema=WINDOW_SCHEMA).write_parquet(run / "windows.parquet")
    for k in range(2016):
        (run / "inputs" / f"window-{k:05d}.parquet").write_bytes(b"x" * 10)
    for k in range(168):
        (run / "checkpoints" / f"ckpt-{k:04d}.json").write_bytes(b"{}")
    res = opendt("runs", "show", "surf", "--data-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert len(res.stdout) < 4000, len(res.stdout)
    files = next(line for line in res.stdout.splitlines() if line.startswith("files"))
    assert "inputs/ (2,016 files, 20,160 B)" in files, files
    assert "checkpoints/ (168 files, 336 B)" in files, files
    assert "windows.parquet (" in files, files


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/api/status", timeout=10) as r:
        doc: dict[str, Any] = json.loads(r.read())
        return doc


@pytest.mark.slow
def test_ctrl_c_says_the_run_stopped_early_and_a_restart_counts_every_window(tmp_path: Path) -> None:
    """Before: a Ctrl-C part of the way printed "replay done: all N windows simulated; the twin keeps serving"
    and a summary without a word of it; a restart said "all 148 windows simulated" for a run of 412. Now:
    "stopped early: N of 412 windows durable", the summary says so too, and the resumed run counts the
    windows of both processes; the energy line says whose energy it is and its error against the measured."""
    env = _env(OPENDT_LOG__LEVEL="warning")
    args = [sys.executable, "-m", "opendt", "run", "--port", "0", "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [*args, "--speed", "1440"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        url = re.search(r"dashboard (http://\S+?)/ ", first)
        assert url is not None, first
        deadline = time.monotonic() + 120
        while _status(url.group(1))["simulation"]["windows_durable"] < 20:
            assert time.monotonic() < deadline, "no 20 windows in 120 s"
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    early = re.search(r"opendt: stopped early: (\d+) of 412 windows durable", err)
    assert early is not None, err[-3000:]
    done_before = int(early.group(1))
    assert 20 <= done_before < 412
    assert "replay done" not in err
    assert out.startswith(f"opendt run stopped early: {done_before} of 412 windows durable"), out
    assert "None" not in out

    res = subprocess.run(
        [*args, "--speed", "max", "--exit-when-done"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    again = f"opendt: replay done: all 412 windows simulated ({412 - done_before} by this process, {done_before} before it)"
    assert again in res.stderr, res.stderr[-3000:]
    assert res.stdout.startswith("opendt run done:"), res.stdout
    energy = next(line for line in res.stdout.splitlines() if line.strip().startswith("energy"))
    assert re.search(r"[\d,.]+ kWh simulated \(vs measured: [+-]\d+\.\d\d %\)", energy), energy


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real `opendt run --speed max --exit-when-done` of the demo at the default log level: its data
    directory (one finished run) and what it printed on stderr."""
    data = tmp_path_factory.mktemp("finished")
    res = opendt(
        "run", "--speed", "max", "--exit-when-done", "--port", "0", "--data-dir", str(data), timeout=300
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return data, res.stderr


@pytest.fixture(scope="module")
def finished_run(demo_run: tuple[Path, str]) -> Path:
    return demo_run[0]


def test_the_console_is_not_flooded_with_routine_lines(demo_run: tuple[Path, str]) -> None:
    """A checkpoint_saved line per trace hour (168 on SURF) and every line of the broker's output crossed the
    progress bar at the default level; they are debug now: a demo run prints a bounded handful of lines."""
    events = [json.loads(line)["event"] for line in demo_run[1].splitlines() if line.startswith("{")]
    assert "daemon_started" in events  # the JSON log of the run (OPENDT_LOG__FORMAT=json here)
    assert "checkpoint_saved" not in events
    assert "broker_output" not in events
    assert len(events) < 40, sorted(set(events))


def test_serve_shows_the_window_counts_of_a_finished_run(finished_run: Path) -> None:
    """`opendt serve`'s dashboard showed "— simulated, — failed, — durable" for a finished run: /api/status
    had no `simulation`. Now it has the journal's counts (and /metrics with it)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "opendt", "serve", "--data-dir", str(finished_run), "--port", "0"],
        cwd=REPO, env=_env(OPENDT_LOG__LEVEL="warning"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        url = re.search(r"dashboard (http://\S+?)/ ", first)
        assert url is not None, first
        sim = _status(url.group(1))["simulation"]
        assert (sim["windows_simulated"], sim["windows_failed"], sim["windows_durable"]) == (412, 0, 412)
        assert sim["done"] is True
        assert sim["latency_p50_s"] is not None
        with urllib.request.urlopen(f"{url.group(1)}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert "opendt_windows_simulated_total 412.0" in metrics
        assert "opendt_window_latency_seconds_count 412.0" in metrics
        # no window simulated by this process: the clusters' sum from the journal, without a cluster label
        assert re.search(r"^opendt_predicted_power_watts [0-9.e+]+$", metrics, re.M), metrics
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == 0


def test_report_writes_html_and_takes_a_run_id(finished_run: Path, tmp_path: Path) -> None:
    """`opendt report` wrote no report.html unless asked (the README presents it), and refused the run id
    that `runs show` and `serve --run` accept. Now: PNG and HTML by default, and a run id (or prefix) is
    looked up under --data-dir; an unknown one is one line, exit 2."""
    (run,) = (finished_run / "runs").iterdir()
    out = tmp_path / "report"
    res = opendt(
        "report", run.name[:6], "--data-dir", str(finished_run), "--out", str(out), env=_env(), timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "report.html").is_file()
    assert (out / "power_prediction.png").is_file()
    assert f"open {out / 'report.html'}" in res.stdout
    res = opendt("report", "no-such-run", "--data-dir", str(finished_run), "--out", str(out), env=_env())
    assert res.returncode == 2
    assert "no run 'no-such-run'" in res.stderr.strip().splitlines()[-1]
