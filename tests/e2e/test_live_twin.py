"""The live twin: the datacenter stand-in as separate processes (`opendt broker`, `opendt replay` into it) and
the twin as `opendt run --no-replay` with no workload directory; kill -9 and resume from checkpoints."""

from __future__ import annotations

import random
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from opendt.workload import load_workload

from .. import runfiles
from .live import (
    DEMO,
    Proc,
    broker,
    durable_windows,
    env,
    get_json,
    max_rel_diff,
    plain_run,
    run_dir,
    until,
)

COLUMNS = ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission", "tasks_completed", "cpu_work")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """agg_results of a plain `opendt run` of the demo (its own replay and broker)."""
    return plain_run(tmp_path_factory.mktemp("plain"))


@pytest.fixture
def dc_broker() -> Iterator[str]:
    """`opendt broker` as its own process (the datacenter's Kafka); stopped after the test."""
    p, address = broker()
    try:
        yield address
    finally:
        p.proc.terminate()
        p.wait(30)


def _twin(address: str, data_dir: Path, *args: str) -> Proc:
    missing = data_dir.parent / "no-such-workload"  # the twin must not read it
    return Proc(
        ["run", "--no-replay", "--data-dir", str(data_dir), *args],
        env(OPENDT_KAFKA__BOOTSTRAP_SERVERS=address, OPENDT_REPLAY__WORKLOAD=str(missing)),
    )


def _replay(address: str, speed: str) -> Proc:
    return Proc(
        ["replay", "--workload", str(DEMO), "--speed", speed],
        env(OPENDT_KAFKA__BOOTSTRAP_SERVERS=address),
    )


def _same(agg: pl.DataFrame, reference: pl.DataFrame) -> None:
    assert agg["timestamp"].to_list() == reference["timestamp"].to_list()
    assert agg["window_start"].to_list() == reference["window_start"].to_list()
    assert max_rel_diff(agg, reference, COLUMNS) <= 1e-9


def test_the_twin_learns_everything_from_kafka(
    dc_broker: str, tmp_path: Path, reference: pl.DataFrame
) -> None:
    """1. the twin starts with --no-replay and a workload path that does not exist, against `opendt broker`;
    2. `opendt replay` streams the demo into that broker at 3000× as another process; 3. while it runs,
    /api/power never returns a measured point at or after the end of the last durable window (asked right
    before the journal); 4. the twin exits 0 when the stream ends; its agg_results equal a plain run's (1e-9),
    measured.arrowlog holds every measured sample once, and run.json names the Kafka source."""
    data = tmp_path / "data"
    twin = _twin(dc_broker, data, "--exit-when-done")
    url = twin.event("api_listening")["url"]
    replay = _replay(dc_broker, "3000")
    checks = 0
    while twin.proc.poll() is None:
        try:
            power = get_json(f"{url}/api/power?step_s=30")
            windows = get_json(f"{url}/api/windows?limit=1")
        except urllib.error.HTTPError as e:
            if e.code != 503:  # only "no topology received yet" is allowed, before dc.topology arrives
                raise
            time.sleep(0.2)
            continue
        except OSError:
            break  # the twin finished between the two requests
        if power["measured"] and windows["windows"]:
            last_measured = max(t for t, _ in power["measured"])
            durable_end = windows["windows"][-1]["window_end"]
            end_ms = int(pl.Series([durable_end]).str.to_datetime(time_zone="UTC").dt.epoch("ms")[0])
            assert last_measured < end_ms, (last_measured, durable_end)
            checks += 1
        time.sleep(0.2)
    assert replay.wait(120) == 0, replay.tail()
    assert twin.wait(120) == 0, twin.tail()
    assert checks >= 5, "the measured series was never checked while the twin ran"
    run = run_dir(data)
    _same(runfiles.agg(run), reference)
    wl = load_workload(DEMO)
    assert wl.consumption is not None
    measured = runfiles.measured(run)
    assert measured.height == wl.consumption.height
    assert measured["timestamp"].dt.epoch("ms").sort().to_list() == wl.consumption["timestamp_ms"].to_list()
    doc = (run / "run.json").read_text()
    assert '"kind": "kafka"' in doc
    assert dc_broker in doc
    assert not any("no-such-workload" in line for line in twin.lines if "error" in line)


def test_kill_9_three_times_resumes_from_checkpoints(
    dc_broker: str, tmp_path: Path, reference: pl.DataFrame
) -> None:
    """1. `opendt replay` streams the demo at 1500× into `opendt broker`; 2. the twin (--no-replay) is killed
    with SIGKILL at three random points and restarted each time against the same broker; 3. each restart
    restores the newest checkpoint at or before its last durable window and re-simulates only the durable
    windows after it (its `resumed` event and counters), and the consumer goes on from the recorded
    positions; 4. the final results equal an uninterrupted run (1e-9), with no duplicate or missing window."""
    data = tmp_path / "data"
    rng = random.Random(15)
    kills = sorted(rng.sample(range(40, 380), 3))
    replay = _replay(dc_broker, "1500")
    twin = _twin(dc_broker, data, "--exit-when-done")
    every_windows = 12  # checkpoint.every_s 3600 / window_s 300
    for k in kills:
        until(lambda k=k: durable_windows(data) >= k, f"{k} durable windows", 120)  # type: ignore[misc]
        twin.proc.kill()
        twin.wait(30)
        run = run_dir(data)
        journal = runfiles.journal(run)
        last_end = int(journal["window_end"].dt.epoch("ms").max())  # type: ignore[arg-type]
        checkpoints = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
        base = max(c for c in checkpoints if c <= last_end)
        after = journal.filter(pl.col("window_start").dt.epoch("ms") >= base).height
        twin = _twin(dc_broker, data, "--exit-when-done")
        resumed = twin.event("resumed", 60)
        assert resumed["checkpoint_ms"] == base
        assert resumed["until_ms"] == last_end
        assert resumed["windows_replayed"] == after <= every_windows
    assert replay.wait(180) == 0, replay.tail()
    assert twin.wait(180) == 0, twin.tail()
    journal = runfiles.journal(run_dir(data))
    assert journal["window_start"].is_unique().all()
    assert journal["status"].unique().to_list() == ["ok"]
    _same(runfiles.agg(run_dir(data)), reference)
