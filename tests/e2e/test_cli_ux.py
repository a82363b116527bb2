"""The operator's experience of the CLI (issue 18), through the real `opendt` command as a process: one-line
errors with exit 2 for usage and configuration mistakes, no traceback and no secret anywhere, configuration
errors that name their source and suggest the key, options where a user puts them, progress, summaries,
`runs` and `serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
SECRET = "tok-4f7c1e-never-printed"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_LOG__FORMAT": "json", **extra})
    return env


def opendt(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
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


def _one_line_error(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The process failed with ``code``, printed no traceback, and its stderr's last line names each needle."""
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, (n, last)
    return last


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_busy_port_is_one_line_exit_2_and_no_secret(tmp_path: Path, busy_port: int) -> None:
    """Items 4, 5: `opendt run` on a busy API port exits 2 at once with one line naming the port and the fix
    (no traceback, the token nowhere in the output); at --log-level debug the token is not printed either."""
    env = _env(OPENDT_API__TOKEN=SECRET, OPENDT_API__PORT=str(busy_port))
    t0 = time.monotonic()
    res = opendt("run", "--data-dir", str(tmp_path), env=env)
    last = _one_line_error(res, 2, str(busy_port), "in use", "--port")
    assert time.monotonic() - t0 < 30
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert SECRET not in res.stdout + res.stderr
    res = opendt("run", "--data-dir", str(tmp_path), "--log-level", "debug", env=env)
    assert res.returncode == 2
    assert SECRET not in res.stdout + res.stderr
    assert last.split(":", 1)[1] in res.stderr


def test_config_show_masks_the_token() -> None:
    """Item 4: `opendt config show` prints every key but masks api.token."""
    res = opendt("config", "show", env=_env(OPENDT_API__TOKEN=SECRET))
    assert res.returncode == 0, res.stderr
    assert SECRET not in res.stdout
    assert "token: '**********'" in res.stdout


def test_a_failing_run_logs_no_traceback_and_no_locals(tmp_path: Path) -> None:
    """Items 4, 5: a workload that fails inside the daemon ends with one error line (exit 1) and log lines
    without a traceback; at debug the traceback is shown, still without local variables (the settings)."""
    bad = tmp_path / "wl"
    bad.mkdir()
    for f in ("tasks.parquet", "fragments.parquet", "topology.json"):
        (bad / f).write_bytes((DEMO / f).read_bytes())
    (bad / "fragments.parquet").write_bytes(b"garbage")
    env = _env(OPENDT_API__TOKEN=SECRET, OPENDT_API__PORT="0")
    res = opendt("run", "--workload", str(bad), "--data-dir", str(tmp_path), env=env)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert '"frames"' not in res.stderr
    assert "fragments.parquet" in res.stderr
    assert SECRET not in res.stdout + res.stderr
    res = opendt("run", "--workload", str(bad), "--data-dir", str(tmp_path), "--log-level", "debug", env=env)
    assert res.returncode == 1
    assert '"frames"' in res.stderr or "Traceback" in res.stderr  # the traceback, at debug
    assert '"locals"' not in res.stderr
    assert SECRET not in res.stdout + res.stderr


def test_missing_workload_and_bad_values_are_usage_errors(tmp_path: Path) -> None:
    """Item 5: a missing workload directory, a directory that is not a workload, a bad option value: one
    line each, exit 2, for run, replay, calibrate and simulate alike."""
    missing = str(tmp_path / "nope")
    for cmd in (["run"], ["replay"], ["calibrate"]):
        _one_line_error(opendt(*cmd, "--workload", missing), 2, missing, "does not exist")
    _one_line_error(opendt("simulate", "--workload", missing, "--out", str(tmp_path / "o")), 2, missing)
    (tmp_path / "empty").mkdir()
    _one_line_error(opendt("run", "--workload", str(tmp_path / "empty")), 2, "lacks", "tasks.parquet")
    _one_line_error(opendt("run", "--speed", "fast"), 2, "speed", "'max'")
    _one_line_error(opendt("run", "--port", "99999"), 2, "port")
    _one_line_error(opendt("serve", "--data-dir", str(tmp_path)), 2, "no runs")


def test_config_errors_name_their_source_and_suggest_the_key(tmp_path: Path) -> None:
    """Item 6: a bad value names the environment variable (or file) that holds it, without internal union
    names; a typo suggests the closest key; --config is accepted after the subcommand; --speed MAX works."""
    res = opendt("config", "show", env=_env(OPENDT_REPLAY__SPEED="fast"))
    last = _one_line_error(res, 2, "replay.speed", "environment variable OPENDT_REPLAY__SPEED", "'max'")
    assert "default.yaml" not in last
    assert "literal" not in res.stderr
    assert "float" not in res.stderr
    res = opendt("config", "show", env=_env(OPENDT_API__PROT="9000"))
    _one_line_error(res, 2, "OPENDT_API__PROT", "OPENDT_API__PORT", "api.port")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api:\n  prot: 9000\nreplay:\n  speed: -1\n")
    res = opendt("config", "show", "--config", str(cfg))  # after the subcommand
    assert res.returncode == 2
    assert f"api.prot: unknown key in {cfg} (did you mean api.port?)" in res.stderr
    assert f"replay.speed = -1 (from {cfg})" in res.stderr
    cfg.write_text("api:\n  port: 9123\n")
    for args in (["--config", str(cfg), "config", "show"], ["config", "show", "--config", str(cfg)]):
        res = opendt(*args)
        assert res.returncode == 0, res.stderr
        assert "port: 9123" in res.stdout
    res = opendt("config", "show", env=_env(OPENDT_REPLAY__SPEED="MAX"))
    assert "speed: max" in res.stdout
    res = opendt("--version")
    assert res.returncode == 0
    assert res.stdout.startswith("opendt ")


def test_simulate_with_a_topology_elsewhere(tmp_path: Path) -> None:
    """Item 7: `simulate --topology FILE` resolves the carbon trace against the workload directory (as
    documented), and a carbon path that exists nowhere is named with the file that holds it."""
    topo = json.loads((DEMO / "topology.json").read_text())
    for c in topo["clusters"]:
        c["powerSource"] = {"carbonTracePath": "carbon.parquet"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "t.json").write_text(json.dumps(topo))
    res = opendt(
        "simulate",
        "--workload",
        str(DEMO),
        "--topology",
        str(elsewhere / "t.json"),
        "--out",
        str(tmp_path / "o"),
    )
    assert res.returncode == 0, res.stderr
    assert "carbon" in res.stdout
    assert "kg CO2" in res.stdout
    assert "MAPE" in res.stdout
    for c in topo["clusters"]:
        c["powerSource"] = {"carbonTracePath": "nowhere.parquet"}
    (elsewhere / "bad.json").write_text(json.dumps(topo))
    res = opendt(
        "simulate",
        "--workload",
        str(DEMO),
        "--topology",
        str(elsewhere / "bad.json"),
        "--out",
        str(tmp_path / "o2"),
    )
    _one_line_error(res, 2, str(elsewhere / "bad.json"), "nowhere.parquet", str(DEMO))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`opendt run --speed max --exit-when-done` of the demo, once for the module."""
    data = tmp_path_factory.mktemp("data")
    res = opendt(
        "run", "--speed", "max", "--exit-when-done", "--data-dir", str(data), "--port", "0", timeout=300
    )
    return data, res


def test_run_prints_url_progress_done_and_summary(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Item 9: the run prints the dashboard URL once it serves, progress as structured lines (no terminal),
    that the replay is done, and a summary (windows, MAPE, energy, carbon, results) at the end."""
    data, res = demo_run
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert "opendt: twin running: dashboard http://127.0.0.1:" in res.stderr
    assert "opendt: replay done: all" in res.stderr
    progress = [json.loads(line) for line in res.stderr.splitlines() if '"event": "progress"' in line]
    assert progress
    assert all({"percent", "done", "rate_per_s", "eta_s"} <= set(p) for p in progress)
    out = res.stdout
    assert "opendt run done:" in out
    for key in ("windows", "MAPE", "energy", "carbon", "results"):
        assert f"  {key}" in out, out
    assert "% over" in out  # the MAPE against the demo's measured power
    assert str(data / "runs") in out


def test_runs_list_show_rm(demo_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    """Item 10: `opendt runs` lists the run (id, workload, windows, MAPE), `runs show ID` (a prefix is enough)
    details it, `runs rm ID` deletes it (a copy here), an unknown id is a one-line usage error."""
    data, _ = demo_run
    [run_dir] = (data / "runs").iterdir()
    res = opendt("runs", "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    header, row = res.stdout.strip().splitlines()
    assert header.split()[:3] == ["RUN", "WORKLOAD", "SETTINGS"]
    assert row.startswith(run_dir.name)
    assert "demo" in row
    res = opendt("runs", "show", run_dir.name[:6], "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    assert f"run       {run_dir.name}" in res.stdout
    assert "MAPE" in res.stdout
    res = opendt("runs", "show", run_dir.name, "--json", "--data-dir", str(data))
    doc = json.loads(res.stdout)
    assert doc["windows_ok"] > 400
    assert doc["mape_pct"] > 0
    copy = tmp_path / "runs" / run_dir.name
    copy.mkdir(parents=True)
    for f in run_dir.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    res = opendt("runs", "rm", run_dir.name, "--data-dir", str(tmp_path))  # no daemon holds its lock
    assert res.returncode == 0, res.stderr
    assert not copy.exists()
    _one_line_error(opendt("runs", "show", "zzz", "--data-dir", str(data)), 2, "zzz")


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_a_finished_run(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Item 10: `opendt serve --run ID` serves the API, the Grafana datasource and the dashboard read-only
    over the finished run; what-ifs are answered from the run's stored inputs and checkpoints (issue 26), a
    range outside them is a 422 naming start; SIGINT stops it (and its what-if worker) with exit 0."""
    data, _ = demo_run
    [run_dir] = (data / "runs").iterdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opendt",
            "serve",
            "--run",
            run_dir.name,
            "--data-dir",
            str(data),
            "--port",
            "0",
        ],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        url = ""
        deadline = time.monotonic() + 60
        for line in proc.stderr:
            if line.startswith("opendt: serving run"):
                url = line.split("dashboard ", 1)[1].split("/ ", 1)[0].strip().rstrip("/")
                break
            assert time.monotonic() < deadline
        assert url, "serve did not start"
        status, health = _get(f"{url}/health")
        assert (status, health) == (200, {"status": "ok", "twin": "finished"})
        status, power = _get(f"{url}/api/power?step_s=3600")
        assert status == 200
        assert isinstance(power, dict)
        assert len(power["simulated"]) > 20
        assert power["metrics"]["mape_pct"] > 0
        status, st = _get(f"{url}/api/status")
        assert isinstance(st, dict)
        assert st["run_id"] == run_dir.name
        with urllib.request.urlopen(f"{url}/", timeout=10) as r:
            assert b"<html" in r.read().lower()
        status, _ = _get(f"{url}/grafana")
        assert status == 200

        def whatif(body: dict[str, object]) -> urllib.request.Request:
            return urllib.request.Request(
                f"{url}/api/whatif",
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )

        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(whatif({"start": 0, "end": 1, "patch": {"count": 1}}), timeout=10)
        assert err.value.code == 422
        assert json.loads(err.value.read())["field"] == "start"
        body: dict[str, object] = {
            "start": "2024-03-04T06:00:00Z",
            "end": "2024-03-04T08:00:00Z",
            "patch": {"count": 1},
        }
        with urllib.request.urlopen(whatif(body), timeout=60) as r:
            doc = json.loads(r.read())
        assert doc["totals"]["whatif"]["energy_kwh"] < doc["totals"]["baseline"]["energy_kwh"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for s in (proc.stdout, proc.stderr):
            if s is not None:
                s.close()


def test_run_on_a_terminal_draws_a_progress_bar(tmp_path: Path) -> None:
    """Item 9: on a terminal `opendt run` draws a bar (percent of the trace, rate, ETA) redrawn in place
    under the log lines, and ends with the summary."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "opendt", "run", "--speed", "max", "--exit-when-done", "--data-dir", str(tmp_path),
         "--port", "0"],
        cwd=REPO, env=_env(OPENDT_LOG__FORMAT="auto"), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=120) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = b"".join(chunks).decode(errors="replace")
    bars = [seg for seg in text.split("\r") if seg.lstrip("\x1b[K").startswith("simulating ")]
    assert len(bars) >= 2, text[-3000:]
    assert any("█" in b and "%" in b and "/s" in b and "ETA" in b for b in bars), bars[-3:]
    assert "Traceback" not in text
    assert "opendt run done:" in text
