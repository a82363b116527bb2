"""Issue 20, item 7, with the real daemon as a process and its real embedded broker: a killed broker was exit
130 without ``daemon_failed`` (the documented code is 1); a frozen broker left ``/health`` at 200; SIGTERM
waited for every queued what-if in turn (59–124 s)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil

from .conftest import Answer, Daemon, call, start_daemon


def _broker_of(daemon: Daemon) -> psutil.Process:
    [broker] = [p for p in psutil.Process(daemon.proc.pid).children(recursive=True) if "tansu" in p.name()]
    return broker


def _health_until(daemon: Daemon, code: int, timeout: float) -> tuple[Answer, float]:
    t0 = time.monotonic()
    while True:
        answer = daemon.get("/health")
        if answer.status == code:
            return answer, time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"/health stayed {answer.status}: {answer.body[:300]!r}"
        time.sleep(0.1)


def test_a_killed_broker_is_exit_1_with_daemon_failed(tmp_path: Path) -> None:
    """The embedded broker is SIGKILLed while the twin replays: the daemon exits 1 within seconds, with one
    ``daemon_failed`` naming the broker (before: 130, nothing logged)."""
    daemon = start_daemon(tmp_path / "data", "--speed", "60")
    try:
        _health_until(daemon, 200, 30)
        t0 = time.monotonic()
        os.kill(_broker_of(daemon).pid, signal.SIGKILL)
        code = daemon.proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        daemon.stop()
    assert code == 1, daemon.tail()
    assert took < 20, took
    failed = daemon.events("daemon_failed")
    assert failed, daemon.tail()
    # the broker watcher names the exit; killed early, a Kafka client may notice first (unable to bootstrap)
    assert any("broker exited" in f["error"] or "Kafka" in f["error"] for f in failed), failed


def test_a_frozen_broker_turns_health_503_and_back(tmp_path: Path) -> None:
    """With a probe every 0.5 s and a limit of 2 s: the broker is SIGSTOPped → /health answers 503 naming the
    broker within a few seconds; SIGCONT → 200 again; the daemon then stops cleanly (exit 0)."""
    env = {"OPENDT_API__HEALTH_PROBE_S": "0.5", "OPENDT_API__HEALTH_BROKER_S": "2"}
    daemon = start_daemon(tmp_path / "data", "--speed", "60", env=env)
    broker = _broker_of(daemon)
    try:
        _health_until(daemon, 200, 30)
        broker.send_signal(signal.SIGSTOP)
        try:
            answer, took = _health_until(daemon, 503, 15)
        finally:
            broker.send_signal(signal.SIGCONT)
        doc = answer.json()
        assert doc["status"] == "failing"
        assert doc["twin"] == "running"
        assert any(p.startswith("broker: no metadata answer") for p in doc["problems"]), doc
        assert took < 8, took
        _health_until(daemon, 200, 20)
        assert daemon.events("broker_probe_failed")
        assert daemon.events("broker_probe_ok")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()


def test_sigterm_with_whatifs_in_flight_stops_at_once(tmp_path: Path) -> None:
    """Eight what-ifs over the demo's whole day are posted at once (one engine worker: they run in turn) and
    SIGTERM follows: the daemon exits 0 within seconds; every what-if answers 200 (it ran before the stop)
    or 503 "shutting down" (cancelled), or its connection closes as the API stops: none is a 500 and none
    holds the shutdown. (A demo what-if takes 0.2–0.6 s: how many are cancelled depends on timing; that
    queued runs are cancelled at once, not run in turn, is tests/unit/test_scenarios_close.py.)"""
    daemon = start_daemon(tmp_path / "data", "--speed", "max", env={"OPENDT_API__WHATIF_QUEUE": "8"})
    daemon.wait_done()
    body = json.dumps(
        {
            "start": "2024-03-04T00:00:00Z",
            "end": "2024-03-05T10:00:00Z",
            "patch": {"hosts[A].cpu.coreSpeed": 1200},
        }
    ).encode()
    answers: list[Answer | Exception] = []

    def post() -> None:
        try:
            answers.append(
                call(daemon.url, "POST", "/api/whatif", body, {"Content-Type": "application/json"})
            )
        except OSError as e:  # a connection closed by the stopping API is an answer here
            answers.append(e)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while daemon.status()["scenarios"]["queued"] < 2:
        assert time.monotonic() < deadline, daemon.status()["scenarios"]
        time.sleep(0.01)
    t0 = time.monotonic()
    code = daemon.stop()
    took = time.monotonic() - t0
    for t in threads:
        t.join(timeout=30)
    assert code == 0, daemon.tail()
    assert took < 10, took
    assert len(answers) == 8
    for a in answers:
        if isinstance(a, Answer):
            assert a.status in (200, 503), (a.status, a.body[:300])
            if a.status == 503:
                assert "shutting down" in a.json()["error"]
