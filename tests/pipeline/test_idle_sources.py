"""A datacenter that sends only its records (issue 24): no heartbeats, no final, no carbon feed. A producer
that is not the replay (per-record messages built from the workload, sent to the real broker, then silence)
feeds a ``--no-replay`` twin: every window of the feed closes within ``window_s + idle_after_s +
allowed_lateness_s`` of wall time after the last record (the partitions go idle, event time goes on with the
wall clock), and the results equal the same workload replayed with heartbeats and finals."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from opendt.daemon import run_daemon
from opendt.settings import Settings
from opendt.stream.replay import event_order, streams_of
from opendt.twin.status import TwinState
from opendt.workload import load_workload

from .conftest import foreign_producer, max_rel_diff, read_results, write_small_workload

WINDOW_S, IDLE_S, LATENESS_S = 30, 2.0, 1.0


def _settings(base: Settings, *, replay: bool) -> Settings:
    windowing = base.windowing.model_copy(
        update={"window_s": WINDOW_S, "idle_after_s": IDLE_S, "allowed_lateness_s": LATENESS_S}
    )
    checkpoint = base.checkpoint.model_copy(update={"every_s": 3600})
    return base.model_copy(
        update={
            "windowing": windowing,
            "checkpoint": checkpoint,
            "replay": base.replay.model_copy(update={"enabled": replay}),
        }
    )


async def _run(settings: Settings, until_end_ms: int | None, feed: Path | None) -> tuple[int, float]:
    """Run the twin until it is done (replay) or its last durable window reaches ``until_end_ms``; returns
    that window end and the wall seconds from the feed's last record to the watermark reaching it."""
    state = TwinState()
    stop = asyncio.Event()
    sent_at = time.monotonic()
    closed_at: float | None = None
    async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        while not state.ready.is_set():
            assert not daemon.done(), "the daemon stopped"
            await asyncio.sleep(0.05)
        if feed is not None:
            await foreign_producer(settings, feed)
            sent_at = time.monotonic()
        while True:
            assert not daemon.done(), "the daemon stopped"
            assert state.loop is not None
            snap = state.snapshot()
            sim = snap["simulation"]
            end = sim["last_window_end_ms"]
            watermark = snap.get("windows", {}).get("watermark_ms")
            if (
                closed_at is None
                and until_end_ms is not None
                and watermark is not None
                and watermark >= until_end_ms
            ):
                closed_at = time.monotonic()  # the consumer closed the last window (simulating it follows)
            if (until_end_ms is None and sim["done"]) or (
                until_end_ms is not None and end is not None and end >= until_end_ms
            ):
                break
            await asyncio.sleep(0.05)
        waited = (closed_at or time.monotonic()) - sent_at
        stop.set()
    assert daemon.result() == 0
    return int(end), waited


async def test_records_alone_close_every_window(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    workload = write_small_workload(tmp_path / "wl", tasks=8, hours=0.1)
    (workload / "carbon.parquet").unlink()  # no carbon feed either
    topo = json.loads((workload / "topology.json").read_text())
    for cluster in topo["clusters"]:
        cluster.get("powerSource", {}).pop("carbonTracePath", None)
    (workload / "topology.json").write_text(json.dumps(topo))
    reference = _settings(daemon_settings(workload), replay=True)
    ref_end, _ = await _run(reference, None, None)
    ref, _ = read_results(reference.data_dir)

    wl = load_workload(workload)
    streams = streams_of(wl, wl.topology.clusters[0].powerSource.name)
    newest = int(event_order(streams)["t"].max())  # type: ignore[arg-type]
    last_end = (newest // (WINDOW_S * 1000) + 1) * WINDOW_S * 1000  # the window of the last record
    assert last_end <= ref_end
    foreign = _settings(daemon_settings(workload), replay=False)
    foreign = foreign.model_copy(update={"data_dir": tmp_path / "foreign"})
    _, waited = await _run(foreign, last_end, workload)
    got, windows = read_results(foreign.data_dir)

    bound = WINDOW_S + IDLE_S + LATENESS_S
    assert waited <= bound + 2.0, (
        f"the last windows closed {waited:.1f} s after the last record (bound {bound} s)"
    )
    assert windows["status"].unique().to_list() == ["ok"]
    got = got.filter(pl.col("timestamp").dt.epoch("ms") <= last_end)
    ref = ref.filter(pl.col("timestamp").dt.epoch("ms") <= last_end)
    # the replay's final heartbeat adds OpenDC's partial row at the last completion (the stream's end, which a
    # feed without a final never announces); every other row is the same
    assert set(got["timestamp"].to_list()) <= set(ref["timestamp"].to_list())
    assert got.height >= ref.height - 1
    assert max_rel_diff(got, ref) <= 1e-9
    for frame in (got, ref):  # no carbon feed: emissions unknown (null), never 0
        for c in ("carbon_intensity", "carbon_emission"):
            assert frame[c].null_count() == frame.height, c
    print(f"last windows closed {waited:.2f} s after the last record (bound {bound} s)")
