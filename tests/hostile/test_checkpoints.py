"""Checkpoints are data, never code: a crafted pickle in a checkpoint's ``engine.bin`` does not run on the next
resume (before: it ran a shell command as the daemon), and a checkpoint cut in half is skipped with one line
naming its file, for the next older one (before: a raw ZSTD error stopped every restart)."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from opendt.daemon import run_daemon
from opendt.settings import Settings
from opendt.stream.resume import InputsLost
from opendt.twin.recovery import Recovery, durability_of
from opendt.twin.results import ResultStore
from opendt.twin.topology import TopologyBox
from opendt.worker.client import TwinEngine

from ..pipeline.conftest import max_rel_diff, read_results, run_dir, write_small_workload
from .conftest import REPO

pytestmark = pytest.mark.slow


class _Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def opendt_run(
    wl: Path, data_dir: Path, log: Path, *args: str, every_s: int = 600
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update(
        {"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json", "OPENDT_CHECKPOINT__EVERY_S": str(every_s)}
    )
    cmd = [sys.executable, "-m", "opendt", "run", "--workload", str(wl), "--data-dir", str(data_dir), *args]
    with log.open("wb") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=f)


def log_records(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _after_newest(data_dir: Path) -> int:
    """Windows stored after the newest checkpoint (stored before simulated: all but the last are durable)."""
    ckpts = [int(p.parent.name) for p in data_dir.glob("runs/*/checkpoints/[0-9]*/state.json")]
    frames = [int(p.stem) for p in data_dir.glob("runs/*/inputs/*.frame")]
    return 0 if not ckpts else sum(1 for f in frames if f >= max(ckpts))


def kill_after_checkpoints(
    wl: Path, data_dir: Path, log: Path, n: int, *, after: int = 0, every_s: int = 600
) -> None:
    """``opendt run`` at speed 1500 until ``n`` checkpoints are on disk and ``after`` windows stored after the
    newest, then SIGKILL."""
    proc = opendt_run(wl, data_dir, log, "--speed", "1500", every_s=every_s)
    try:
        deadline = time.monotonic() + 90
        while (
            len(list(data_dir.glob("runs/*/checkpoints/[0-9]*/state.json"))) < n
            or _after_newest(data_dir) < after
        ):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{n} checkpoints not written in 90 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_to_end(wl: Path, data_dir: Path, log: Path, every_s: int = 600) -> subprocess.CompletedProcess[bytes]:
    proc = opendt_run(wl, data_dir, log, "--speed", "max", "--exit-when-done", every_s=every_s)
    try:
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode)


def test_crafted_and_cut_checkpoints_are_skipped_for_an_older_one(tmp_path: Path) -> None:
    """1. A run killed once 4 checkpoints exist; 2. the newest checkpoint's engine.bin is replaced by a pickle
    that would ``touch`` a file when loaded, the one before it is cut in half; 3. the restart runs to the
    end: the file never appears, one ``checkpoint_skipped`` line names each bad engine.bin, the resume starts
    from the third-newest checkpoint, and the results equal an uninterrupted run's."""
    wl = write_small_workload(tmp_path / "wl", tasks=16, hours=2.0)
    crashed = tmp_path / "crashed"
    kill_after_checkpoints(wl, crashed, tmp_path / "first.log", 4)
    ckpts = sorted(
        (p for p in (run_dir(crashed) / "checkpoints").iterdir() if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    ckpts = [p for p in ckpts if (p / "state.json").exists()]
    assert len(ckpts) >= 4
    newest, second, third = ckpts[-1], ckpts[-2], ckpts[-3]
    marker = tmp_path / "pwned"
    (newest / "engine.bin").write_bytes(pickle.dumps(_Evil(marker)))
    blob = (second / "engine.bin").read_bytes()
    (second / "engine.bin").write_bytes(blob[: len(blob) // 2])

    res = run_to_end(wl, crashed, tmp_path / "second.log")
    records = log_records(tmp_path / "second.log")
    assert not marker.exists(), "the checkpoint ran a command"
    assert res.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    skipped = [r for r in records if r["event"] == "checkpoint_skipped"]
    assert sorted(r["file"] for r in skipped) == sorted(str(p / "engine.bin") for p in (newest, second))
    assert "Traceback" not in (tmp_path / "second.log").read_text()
    [resumed] = [r for r in records if r["event"] == "resumed"]
    assert resumed["checkpoint_ms"] == int(third.name)

    clean = tmp_path / "clean"
    assert run_to_end(wl, clean, tmp_path / "clean.log").returncode == 0
    agg, windows = read_results(crashed)
    ref, ref_windows = read_results(clean)
    assert windows["window_start"].to_list() == ref_windows["window_start"].to_list()
    assert agg["timestamp"].to_list() == ref["timestamp"].to_list()
    assert max_rel_diff(agg, ref, ("power_draw", "energy_usage", "carbon_emission")) <= 1e-9
    assert agg["tasks_completed"].to_list() == ref["tasks_completed"].to_list()
    assert np.allclose(agg["cpu_work"], ref["cpu_work"], rtol=1e-9, atol=1e-6)


def assert_equal_results(a: Path, b: Path) -> None:
    agg, windows = read_results(a)
    ref, ref_windows = read_results(b)
    assert windows["window_start"].to_list() == ref_windows["window_start"].to_list()
    assert agg["timestamp"].to_list() == ref["timestamp"].to_list()
    assert max_rel_diff(agg, ref, ("power_draw", "energy_usage", "carbon_emission")) <= 1e-9
    assert agg["tasks_completed"].to_list() == ref["tasks_completed"].to_list()
    assert np.allclose(agg["cpu_work"], ref["cpu_work"], rtol=1e-9, atol=1e-6)


def test_lost_or_cut_inputs_are_read_again_from_the_stream(tmp_path: Path) -> None:
    """Two runs (a checkpoint every 30 min) killed once 3 checkpoints exist and 3 windows are stored after the
    newest: 1. the whole ``inputs/`` deleted (it looks like a cache);
    2. the stored input of the first window after the newest checkpoint cut to 10 bytes. Each restart logs one
    ``inputs_reread`` line naming the first missing / cut file, the replay producer gives those windows again,
    they are replayed into the engine (not rewritten) and stored again, and the results equal an uninterrupted
    run's (before: 1. ``resume_from_stream`` at info and different results, 2. a raw JSONDecodeError)."""
    wl = write_small_workload(tmp_path / "wl", tasks=16, hours=2.0)
    clean = tmp_path / "clean"
    assert run_to_end(wl, clean, tmp_path / "clean.log", 1800).returncode == 0
    for case in ("deleted", "cut"):
        crashed = tmp_path / case
        kill_after_checkpoints(wl, crashed, tmp_path / f"{case}-first.log", 3, after=3, every_s=1800)
        run = run_dir(crashed)
        ckpts = sorted(
            int(p.name) for p in (run / "checkpoints").glob("[0-9]*") if (p / "state.json").exists()
        )
        _, before = read_results(crashed)
        last_end = int(before["window_end"].dt.epoch("ms").max())  # type: ignore[arg-type]
        stored = sorted(int(p.stem) for p in (run / "inputs").glob("*.frame"))
        if case == "deleted":
            shutil.rmtree(run / "inputs")
            named = run / "inputs" / f"{ckpts[-1]}.frame"
        else:
            after = [s for s in stored if s >= ckpts[-1]]
            assert after, "no window stored after the newest checkpoint"
            named = run / "inputs" / f"{after[0]}.frame"
            named.write_bytes(named.read_bytes()[:10])
        log = tmp_path / f"{case}-second.log"
        res = run_to_end(wl, crashed, log, 1800)
        assert res.returncode == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
        assert_equal_results(crashed, clean)
        _, windows = read_results(crashed)
        assert windows.head(before.height).equals(before), "durable windows were rewritten"
        records = log_records(log)
        [reread] = [r for r in records if r["event"] == "inputs_reread"]
        assert str(named) in reread["error"], reread
        [resumed] = [r for r in records if r["event"] == "resumed"]
        assert resumed["checkpoint_ms"] == ckpts[-1]
        assert resumed["from_stream_until_ms"] == last_end
        assert named.is_file()
        assert named.stat().st_size > 10, "the window given again was not stored again"


async def test_lost_inputs_are_read_again_from_an_external_kafka(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """With an external Kafka (the session broker): a twin stopped once 3 checkpoints exist and 2 windows are
    durable after the newest; ``inputs/`` deleted; the restart seeks the topics to the positions the newest
    checkpoint recorded, reads those windows again (one ``inputs_reread`` line naming the first missing file)
    and ends with the results of an uninterrupted run. The same files with the embedded broker and no replay
    (the stream cannot give them again): :class:`InputsLost` naming the file, the daemon's exit 1."""
    wl = write_small_workload(tmp_path / "wl", tasks=16, hours=2.0)
    settings = daemon_settings(wl, speed=600)
    settings.checkpoint.every_s = 1800
    data = Path(settings.data_dir)

    def ready() -> bool:
        return len(list(data.glob("runs/*/checkpoints/[0-9]*/state.json"))) >= 3 and _after_newest(data) >= 3

    async def enough() -> None:
        while not await asyncio.to_thread(ready):  # noqa: ASYNC110 - files, no event to wait on
            await asyncio.sleep(0.05)

    async with asyncio.timeout(120):
        assert await run_daemon(settings, shutdown_trigger=enough) == 0
    run = run_dir(data)
    ckpts = sorted(int(p.name) for p in (run / "checkpoints").glob("[0-9]*") if (p / "state.json").exists())
    state = json.loads((run / "checkpoints" / str(ckpts[-1]) / "state.json").read_text())
    assert state["positions"], "the checkpoint records no stream position"
    _, before = read_results(data)
    assert int(before["window_end"].dt.epoch("ms").max()) > ckpts[-1]  # type: ignore[arg-type]
    shutil.rmtree(run / "inputs")
    named = run / "inputs" / f"{ckpts[-1]}.frame"

    with capture_logs() as logs:
        async with asyncio.timeout(120):
            assert await run_daemon(settings, exit_when_done=True) == 0
    clean = daemon_settings(wl, speed="max")
    clean.checkpoint.every_s = 1800
    clean.data_dir = tmp_path / "clean"
    async with asyncio.timeout(120):
        assert await run_daemon(clean, exit_when_done=True) == 0
    assert_equal_results(data, Path(clean.data_dir))
    [reread] = [e for e in logs if e["event"] == "inputs_reread"]
    assert str(named) in reread["error"]
    assert reread["source"] == "kafka"
    assert named.stat().st_size > 10

    shutil.rmtree(run / "inputs")
    newest = max(int(p.name) for p in (run / "checkpoints").glob("[0-9]*") if (p / "state.json").exists())
    named = run / "inputs" / f"{newest}.frame"
    store = ResultStore(run)
    store.load()
    recovery = Recovery(
        durability_of(settings, run), store, TopologyBox(None), TwinEngine(), export_interval_ms=1
    )
    recovery.load()
    with pytest.raises(InputsLost, match=str(named)):
        recovery.stream_resume(external=False, horizon_ms=0, replay=False)
