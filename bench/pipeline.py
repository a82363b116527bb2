"""Benchmark the streaming twin end to end: ``opendt run`` as a real process (broker, replay, engine worker).

    .venv/bin/python bench/pipeline.py [--workload DIR] [--minutes 3] [--skip-max] [--skip-realtime]

(i) ``--speed max --exit-when-done`` with 300 s windows: wall time, peak RSS of the whole process tree (the
daemon, its Tansu broker and its engine worker; psutil polling every 0.2 s, the sum over the tree), CPU
seconds per process; then agg_results against a one-shot in-process Engine run on the whole trace
(max relative difference of power_draw and energy_usage) and the MAPE of the predicted vs the measured power
at the instants both have (OpenDC with the repo topology: 6.40 % on SURF's 150 s instants).
(ii) ``--speed 300`` for ``--minutes``: /api/status polled every 2 s; the replay's lag behind its schedule,
how far the twin's last durable window is behind the replay (trace s and wall s), peak tree RSS and its
growth over the second half (bounded memory), then SIGTERM and the exit code.

The SURF week (data/surf) is used when present, else the demo workload (data/demo).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import psutil
from logs import events  # bench/logs.py, beside this script

from opendt.twin.tables import AGG, read_journal, read_rows

ROOT = Path(__file__).resolve().parents[1]
SURF = ROOT / "data" / "surf"
DEMO = ROOT / "data" / "demo"
MB = 1024 * 1024


@dataclass
class Tree:
    """Peak memory and CPU of a process tree, sampled by polling."""

    peak_rss: int = 0
    peak_by_kind: dict[str, int] = field(default_factory=dict)
    cpu_by_pid: dict[int, tuple[str, float]] = field(default_factory=dict)
    samples: list[tuple[float, int]] = field(default_factory=list)

    def sample(self, root: psutil.Process, t: float) -> None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for p in procs:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    cpu = p.cpu_times()
                    kind = _kind(p)
            except psutil.NoSuchProcess:
                continue
            total += rss
            self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), rss)
            self.cpu_by_pid[p.pid] = (kind, cpu.user + cpu.system)
        self.peak_rss = max(self.peak_rss, total)
        self.samples.append((t, total))

    def cpu_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, cpu in self.cpu_by_pid.values():
            out[kind] = out.get(kind, 0.0) + cpu
        return out


def _kind(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    if "tansu" in p.name() or "tansu" in cmd:
        return "tansu"
    if "opendt.worker" in cmd:
        return "worker"
    return "daemon"


def _start(workload: Path, data_dir: Path, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json", "OPENDT_WINDOWING__WINDOW_S": "300"})
    cmd = [sys.executable, "-m", "opendt", "run", "--workload", str(workload), "--data-dir", str(data_dir)]
    with log_path.open("wb") as log:
        return subprocess.Popen([*cmd, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)


def _one_shot(workload: Path, until_ms: int) -> pl.DataFrame:
    from opendt.engine import Engine
    from opendt.twin.results import aggregate_rows
    from opendt.workload import load_workload

    wl = load_workload(workload)
    carbon = None if wl.carbon is None else wl.carbon.rename({"timestamp_ms": "timestamp"})
    engine = Engine(wl.topology, export_interval_ms=150_000, carbon=carbon)
    rows = pl.concat(
        [engine.advance(until_ms, wl.tasks, wl.fragments), engine.finish()], how="vertical_relaxed"
    )
    return aggregate_rows(rows, 0, 0).with_columns(pl.col("timestamp").dt.cast_time_unit("ms"))


def _rel_diff(agg: pl.DataFrame, ref: pl.DataFrame) -> tuple[float, int, int]:
    """(max relative difference of power_draw and energy_usage, common timestamps, twin rows)."""
    j = agg.join(ref, on="timestamp", how="inner", suffix="_ref")
    worst = 0.0
    for c in ("power_draw", "energy_usage"):
        rel = ((j[c] - j[f"{c}_ref"]).abs() / j[f"{c}_ref"].abs().clip(lower_bound=1e-12)).max()
        worst = max(worst, float(rel))  # type: ignore[arg-type]
    return worst, j.height, agg.height


def _mape(workload: Path, agg: pl.DataFrame) -> tuple[float, int] | None:
    from opendt.workload import load_workload

    wl = load_workload(workload)
    if wl.consumption is None:
        return None
    measured = wl.consumption.select(
        pl.from_epoch("timestamp_ms", "ms")
        .dt.cast_time_unit("ms")
        .dt.replace_time_zone("UTC")
        .alias("timestamp"),
        pl.col("power_draw").alias("measured"),
    )
    j = agg.unique("timestamp", keep="first").join(measured, on="timestamp", how="inner")
    j = j.filter(pl.col("measured") > 0)
    mape = float(((j["power_draw"] - j["measured"]).abs() / j["measured"]).mean()) * 100  # type: ignore[arg-type]
    return mape, j.height


def bench_max(workload: Path, tmp: Path) -> dict[str, Any]:
    data_dir, log_path = tmp / "max", tmp / "max.log"
    tree = Tree()
    t0 = time.monotonic()
    proc = _start(workload, data_dir, log_path, "--speed", "max", "--exit-when-done")
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        tree.sample(root, time.monotonic() - t0)
        time.sleep(0.2)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"opendt run exited {proc.returncode}; see {log_path}")
    [run] = list((data_dir / "runs").iterdir())
    windows = read_journal(run)
    agg = read_rows(run, AGG, windows)
    assert windows is not None
    assert agg is not None
    until = int(windows["window_end"].dt.epoch("ms").max())  # type: ignore[arg-type]
    t1 = time.monotonic()
    ref = _one_shot(workload, until)
    one_shot_s = time.monotonic() - t1
    diff, common, rows = _rel_diff(agg, ref)
    started = events(log_path, "daemon_started")[0]
    return {
        "wall_s": wall,
        "startup_s": started["startup_s"],
        "replay_s": events(log_path, "replay_finished")[0]["wall_s"],
        "windows": windows.height,
        "failed": int((windows["status"] != "ok").sum()),
        "window_latency_p50_ms": float(windows["latency_s"].median()) * 1000,  # type: ignore[arg-type]
        "window_compute_s": float(windows["compute_s"].sum()),
        "peak_tree_rss_mb": tree.peak_rss / MB,
        "peak_rss_mb": {k: v / MB for k, v in tree.peak_by_kind.items()},
        "cpu_s": tree.cpu_by_kind(),
        "max_rel_diff": diff,
        "common_timestamps": common,
        "rows": rows,
        "one_shot_s": one_shot_s,
        "mape": _mape(workload, agg),
    }


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/api/status", timeout=5) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


def bench_realtime(workload: Path, tmp: Path, minutes: float, speed: float) -> dict[str, Any]:
    data_dir, log_path = tmp / "rt", tmp / "rt.log"
    tree = Tree()
    t0 = time.monotonic()
    proc = _start(workload, data_dir, log_path, "--speed", str(speed))
    root = psutil.Process(proc.pid)
    url = None
    deadline = t0 + 60
    while url is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"opendt run did not start; see {log_path}")
        found = events(log_path, "api_listening")
        url = found[0]["url"] if found else None
        time.sleep(0.1)
    polls: list[dict[str, Any]] = []
    end = t0 + minutes * 60
    next_poll = time.monotonic()
    while time.monotonic() < end and proc.poll() is None:
        now = time.monotonic()
        tree.sample(root, now - t0)
        if now >= next_poll:
            next_poll = now + 2.0
            s = _status(url)
            replay_ms, twin_ms = s["replay"]["trace_ms"], s["simulation"]["last_window_end_ms"]
            behind_s = (replay_ms - twin_ms) / 1000 if replay_ms and twin_ms else None
            polls.append(
                {
                    "t": now - t0,
                    "replay_lag_s": s["replay"]["lag_s"],
                    "twin_behind_trace_s": behind_s,
                    "queued": s["windows"]["queued"],
                    "windows": s["simulation"]["windows_durable"],
                    "p95_s": s["simulation"]["latency_p95_s"],
                }
            )
        time.sleep(0.2)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    wall = time.monotonic() - t0
    behind = [p["twin_behind_trace_s"] for p in polls if p["twin_behind_trace_s"] is not None]
    half = [rss for t, rss in tree.samples if t >= wall / 2]
    progress = events(log_path, "replay_progress")
    return {
        "speed": speed,
        "wall_s": wall,
        "alive_until_stopped": alive,
        "exit_code": code,
        "windows": polls[-1]["windows"] if polls else 0,
        "max_replay_lag_s": max([p["lag_s"] for p in progress], default=0.0),
        "median_replay_lag_s": sorted(p["lag_s"] for p in progress)[len(progress) // 2] if progress else 0.0,
        "max_twin_behind_trace_s": max(behind, default=None),
        "max_twin_behind_wall_s": max(behind, default=0.0) / speed,
        "max_queued": max([p["queued"] for p in polls], default=0),
        "last_p95_s": polls[-1]["p95_s"] if polls else None,
        "peak_tree_rss_mb": tree.peak_rss / MB,
        "rss_second_half_mb": (min(half) / MB, max(half) / MB) if half else None,
        "peak_rss_mb": {k: v / MB for k, v in tree.peak_by_kind.items()},
        "cpu_s": tree.cpu_by_kind(),
    }


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(d.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", type=Path, help="default: data/surf, else data/demo")
    ap.add_argument("--minutes", type=float, default=3.0, help="wall minutes of the --speed 300 run")
    ap.add_argument("--speed", type=float, default=300.0, help="speed of the real-time run")
    ap.add_argument("--skip-max", action="store_true")
    ap.add_argument("--skip-realtime", action="store_true")
    a = ap.parse_args()
    workload = a.workload or (SURF if SURF.is_dir() else DEMO)
    if a.workload is None and workload == DEMO:
        print(f"SURF workload not found at {SURF}: using the demo workload")
    print(f"workload: {workload}; load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="opendt-bench-") as d:
        tmp = Path(d)
        if not a.skip_max:
            r = bench_max(workload, tmp)
            print("\n(i) --speed max --exit-when-done, 300 s windows")
            print(
                f"{'wall s':>8} {'windows':>8} {'failed':>6} {'peak tree RSS MB':>17} {'p50 window ms':>14}"
            )
            print(
                f"{r['wall_s']:>8.1f} {r['windows']:>8} {r['failed']:>6} {r['peak_tree_rss_mb']:>17.0f}"
                f" {r['window_latency_p50_ms']:>14.1f}"
            )
            print(f"  startup {r['startup_s']:.2f} s, replay done after {r['replay_s']:.1f} s")
            print(f"  peak RSS per process MB: {_fmt(r['peak_rss_mb'])}; CPU s: {_fmt(r['cpu_s'])}")
            print(f"  engine compute in the worker: {r['window_compute_s']:.1f} s")
            print(
                f"  vs one-shot engine ({r['one_shot_s']:.1f} s in process):"
                f" max rel diff {r['max_rel_diff']:.2e}"
                f" over {r['common_timestamps']} of {r['rows']} rows"
                + ("  OK" if r["max_rel_diff"] <= 1e-6 else "  FAIL (> 1e-6)")
            )
            if r["mape"] is not None:
                mape, n = r["mape"]
                print(
                    f"  MAPE vs measured power: {mape:.2f} % over {n} instants"
                    " (OpenDC, repo topology: 6.40 % on SURF)"
                )
        if not a.skip_realtime:
            r = bench_realtime(workload, tmp, a.minutes, a.speed)
            print(f"\n(ii) --speed {r['speed']:g} for {a.minutes:g} min")
            print(
                f"{'wall s':>8} {'windows':>8} {'max replay lag s':>17}"
                f" {'max twin behind (trace s / wall s)':>36}"
                f" {'max queued':>10} {'peak tree RSS MB':>17}"
            )
            behind = r["max_twin_behind_trace_s"]
            behind_txt = f"{behind:.0f} / {r['max_twin_behind_wall_s']:.2f}" if behind is not None else "n/a"
            print(
                f"{r['wall_s']:>8.1f} {r['windows']:>8} {r['max_replay_lag_s']:>17.3f} {behind_txt:>36}"
                f" {r['max_queued']:>10} {r['peak_tree_rss_mb']:>17.0f}"
            )
            if r["rss_second_half_mb"] is not None:
                lo, hi = r["rss_second_half_mb"]
                print(f"  tree RSS over the second half: {lo:.0f}–{hi:.0f} MB")
            print(f"  peak RSS per process MB: {_fmt(r['peak_rss_mb'])}; CPU s: {_fmt(r['cpu_s'])}")
            print(f"  replay lag behind schedule: median {r['median_replay_lag_s']:.3f} s (progress logs)")
            print(f"  last window latency p95 {r['last_p95_s']} s; exit code after SIGTERM {r['exit_code']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
