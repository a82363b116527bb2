"""The twin's hardware and grid come from the stream: a physical topology change on dc.topology applies from
the right window, and bad dc.topology / dc.carbon messages are counted and skipped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
import polars as pl
from structlog.testing import capture_logs

from opendt.daemon import run_daemon, wait_until
from opendt.kafka.client import make_producer
from opendt.models.messages import DATACENTER_KEY, encode_topology_message, iso_ms
from opendt.models.topology import parse_topology
from opendt.settings import Settings
from opendt.twin.status import TwinState
from opendt.workload import load_workload

from .conftest import W, max_rel_diff, read_results, windowed_reference, workload_windows


async def test_physical_change_and_bad_series_messages(
    daemon_settings: Callable[..., Settings], small_workload: Path
) -> None:
    """1. before the twin starts, dc.topology holds a message that does not validate and a valid new physical
    topology (more idle power) in force from 50 minutes into the trace, and dc.carbon holds a negative and a
    non-finite intensity; 2. the daemon runs the workload (its replay publishes the original topology and
    carbon): the bad messages are counted as malformed, the twin keeps going; 3. the new hardware becomes a
    new simulated version (source physical) from the first window starting at or after its time, and the
    results equal the engine advanced window by window with that change (1e-9), the earlier windows equal
    the unchanged run."""
    settings = daemon_settings(small_workload)
    wl = load_workload(small_workload)
    doc = wl.topology.to_json_dict()
    doc["clusters"][0]["hosts"][0]["cpuPowerModel"].update(idlePower=150, maxPower=320)
    changed = parse_topology(doc)
    at_ms = wl.origin_ms + 50 * 60_000
    t = settings.kafka.topics
    bad_topology = orjson.dumps({"timestamp": iso_ms(at_ms), "topology": {"clusters": []}})
    poison = [
        (t.topology, DATACENTER_KEY, bad_topology),
        (t.carbon, DATACENTER_KEY, orjson.dumps({"timestamp": iso_ms(at_ms), "carbon_intensity": -5.0})),
        (
            t.carbon,
            DATACENTER_KEY,
            b'{"timestamp": "' + iso_ms(at_ms).encode() + b'", "carbon_intensity": 1e999}',
        ),
    ]
    producer = make_producer(settings.kafka.bootstrap_servers or "", settings.kafka)
    await producer.start()
    try:
        for topic, key, value in poison:
            await producer.send_and_wait(topic, value, key=key)
        await producer.send_and_wait(t.topology, encode_topology_message(at_ms, changed), key=DATACENTER_KEY)
    finally:
        await producer.stop()
    state = TwinState()
    with capture_logs() as logs:
        async with asyncio.timeout(90):
            daemon = asyncio.create_task(run_daemon(settings, exit_when_done=True, state=state))
            await wait_until(state.ready, daemon, "serving")
            assert await daemon == 0
    snap = state.snapshot()
    assert snap["counters"]["malformed_messages"] == len(poison)
    assert snap["topology"] == {
        "version": 1,
        "source": "physical",
        "reason": "new physical topology (dc.topology)",
    }
    bad = sorted(e["topic"] for e in logs if e["event"] == "message_malformed")
    assert bad == sorted(topic for topic, _, _ in poison)

    agg, windows = read_results(settings.data_dir)
    cut = workload_windows(wl)
    assert [w.start_ms for w in cut] == windows["window_start"].dt.epoch("ms").to_list()
    switch = next(i for i, w in enumerate(cut) if w.start_ms >= at_ms)
    assert cut[switch].start_ms == -(-at_ms // W) * W
    versions = windows["topology_version"].to_list()
    assert versions == [0] * switch + [1] * (len(cut) - switch)
    assert max_rel_diff(agg, windowed_reference(wl, cut, topology_at=(switch, changed))) <= 1e-9
    before = agg.filter(pl.col("topology_version") == 0)
    assert max_rel_diff(before, windowed_reference(wl, cut)) <= 1e-9
