"""Helpers for the live-twin tests: the datacenter stand-in and the twin as separate `opendt` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from .. import runfiles

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


def env(**extra: str) -> dict[str, str]:
    """The environment of a child `opendt`: no inherited OPENDT_ variable, JSON logs, a free API port."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    out.update({"OPENDT_LOG__FORMAT": "json", "OPENDT_API__PORT": "0", **extra})
    return out


class Proc:
    """An `opendt` child whose stderr (JSON log lines) is collected by a thread."""

    def __init__(self, args: list[str], environ: dict[str, str], stdout: bool = False) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opendt", *args],
            cwd=REPO,
            env=environ,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                self.events.append(rec)

    def event(self, name: str, timeout_s: float = 60) -> dict[str, Any]:
        """The first log event named ``name`` (waiting for it; an error if the process ends first)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = next((e for e in list(self.events) if e.get("event") == name), None)
            if found is not None:
                return found
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(
                    f"{self.args} exited {self.proc.returncode} before {name}: {self.tail()}"
                )
            assert time.monotonic() < deadline, (
                f"{self.args}: no {name} event in {timeout_s} s: {self.tail()}"
            )
            time.sleep(0.02)

    def all(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    def tail(self, n: int = 20) -> str:
        return "".join(self.lines[-n:])

    def wait(self, timeout_s: float) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self._close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def broker() -> tuple[Proc, str]:
    """`opendt broker`: the embedded Tansu in its own process; returns it and its bootstrap address."""
    p = Proc(["broker"], env(), stdout=True)
    assert p.proc.stdout is not None
    address = p.proc.stdout.readline().strip()
    assert address, f"the broker printed no address: {p.tail()}"
    return p, address


def run_dir(data_dir: Path) -> Path:
    [d] = [p for p in (data_dir / "runs").iterdir() if p.is_dir() and "." not in p.name]
    return d


def durable_windows(data_dir: Path) -> int:
    runs = data_dir / "runs"
    if not runs.is_dir():
        return 0
    for d in runs.iterdir():
        if (d / "windows.arrowlog").exists():
            return runfiles.journal(d).height
    return 0


def until(predicate: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def max_rel_diff(a: pl.DataFrame, b: pl.DataFrame, columns: tuple[str, ...]) -> float:
    worst = 0.0
    for c in columns:
        x = a[c].cast(pl.Float64).to_numpy()
        y = b[c].cast(pl.Float64).to_numpy()
        scale = abs(y).clip(min=1e-12)
        worst = max(worst, float((abs(x - y) / scale).max()) if len(x) else 0.0)
    return worst


def plain_run(data_dir: Path, workload: Path = DEMO) -> pl.DataFrame:
    """The reference: `opendt run` with its own replay and embedded broker, to completion."""
    p = Proc(
        [
            "run",
            "--workload",
            str(workload),
            "--speed",
            "max",
            "--exit-when-done",
            "--data-dir",
            str(data_dir),
        ],
        env(),
    )
    assert p.wait(300) == 0, p.tail()
    return runfiles.agg(run_dir(data_dir))
