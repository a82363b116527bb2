"""Issue 29's feeds that lied about series and ids, through the real broker and the real daemon: physical
topologies dated 2199 ahead of a real change, carbon steps out of order, fragments of tasks never sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import orjson
from structlog.testing import capture_logs

from opendt.daemon import run_daemon
from opendt.models.messages import DATACENTER_KEY, encode_carbon, encode_topology_message, iso_ms
from opendt.models.topology import parse_topology
from opendt.settings import Settings
from opendt.twin.status import TwinState
from opendt.workload import load_workload

from ..pipeline.conftest import (
    W,
    assert_windows_contiguous,
    last_window_end_ms,
    max_rel_diff,
    one_shot,
    read_results,
    windowed_reference,
    workload_windows,
    write_small_workload,
)
from .test_time import _check_results, _lie_mid_stream, _produce

CARBON = ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission")

FORGED_2199_MS = 7_226_582_400_000  # 2199-01-01


async def test_topologies_dated_2199_do_not_lock_out_a_real_change(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """1. the daemon replays a small workload at 600×; 2. once windows have closed, 16 `dc.topology` records
    dated 2199 fill the list of topologies waiting for their time, then a real change (more idle power) dated
    45 trace minutes ahead follows; 3. the real change evicts one forged entry (quarantined), becomes
    simulated version 1 from the first window at or after its time, and the results equal the engine
    advanced window by window with that change (before the eviction, the change was quarantined for good)."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload, speed=600.0)
    wl = load_workload(workload)
    doc = wl.topology.to_json_dict()
    doc["clusters"][0]["hosts"][0]["cpuPowerModel"].update(idlePower=150, maxPower=320)
    changed = parse_topology(doc)
    change_at: list[int] = []

    def lies(s: Settings, now_ms: int) -> list[tuple[str, bytes | None, bytes]]:
        change_at.append(now_ms + 45 * 60_000)
        forged = [
            (
                s.kafka.topics.topology,
                DATACENTER_KEY,
                encode_topology_message(FORGED_2199_MS + k, wl.topology),
            )
            for k in range(16)
        ]
        real = (s.kafka.topics.topology, DATACENTER_KEY, encode_topology_message(change_at[0], changed))
        return [*forged, real]

    _, windows = await _lie_mid_stream(settings, lies)
    assert windows["quarantined"] == 1  # the forged entry evicted for the real change
    agg, journal = read_results(settings.data_dir)
    cut = workload_windows(wl)
    assert [w.start_ms for w in cut] == journal["window_start"].dt.epoch("ms").to_list()
    switch = next(i for i, w in enumerate(cut) if w.start_ms >= change_at[0])
    assert cut[switch].start_ms == -(-change_at[0] // W) * W
    assert journal["topology_version"].to_list() == [0] * switch + [1] * (len(cut) - switch)
    assert max_rel_diff(agg, windowed_reference(wl, cut, topology_at=(switch, changed))) <= 1e-9


async def test_carbon_steps_out_of_order_are_inserted_where_they_belong(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """1. `dc.carbon` holds the small workload's carbon trace with every pair of steps swapped (10:15 before
    10:00, 10:45 before 10:30, ...); the daemon's replay sends the rest of the workload (no carbon of its
    own); 2. the twin runs to the end and exits 0; 3. every step is used where it belongs: nothing is counted
    as a duplicate or late, and power, energy, carbon intensity and emissions equal the one-shot engine over
    the workload with its trace in order (before, every step older than the newest one held was dropped as a
    duplicate: half the trace, wrong intensities and emissions)."""
    reference = write_small_workload(tmp_path / "ref")
    workload = write_small_workload(tmp_path / "wl")  # the same trace; its carbon comes from the topic
    (workload / "carbon.parquet").unlink()
    topo = json.loads((workload / "topology.json").read_text())
    del topo["clusters"][0]["powerSource"]
    (workload / "topology.json").write_text(json.dumps(topo))
    settings = daemon_settings(workload)
    carbon = load_workload(reference).carbon
    assert carbon is not None
    steps = list(carbon.select("timestamp_ms", "carbon_intensity").iter_rows())
    swapped = [s for k in range(0, len(steps), 2) for s in reversed(steps[k : k + 2])]
    topic = settings.kafka.topics.carbon
    await _produce(settings, [(topic, DATACENTER_KEY, encode_carbon(t, v)) for t, v in swapped])
    state = TwinState()
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True, state=state) == 0
    windows = state.snapshot()["windows"]
    assert (windows["duplicates"], windows["late"], windows["quarantined"]) == (0, 0, 0)
    agg, journal = read_results(settings.data_dir)
    assert_windows_contiguous(journal)
    assert journal["status"].unique().to_list() == ["ok"]
    assert agg["carbon_emission"].sum() > 0
    assert max_rel_diff(agg, one_shot(reference, last_window_end_ms(journal)), CARBON) <= 1e-6


def _ghosts(settings: Settings, now_ms: int) -> list[tuple[str, bytes | None, bytes]]:
    """50,000 fragments of 5,000 task ids never sent, in NDJSON batches of 2,000: the first 1,000 dated 20
    minutes before the stream's time (in windows closed already: late), the rest from 10 to 55 minutes ahead
    of it (within the skew: they pass the time gate)."""
    lines = []
    for k in range(50_000):
        t = now_ms - 20 * 60_000 if k < 1000 else now_ms + 10 * 60_000 + (k * 60_000) % (45 * 60_000)
        doc = {"id": f"ghost-{k % 5000}", "submission_time": iso_ms(t), "duration": 60_000, "cpu_count": 4}
        lines.append(orjson.dumps({**doc, "cpu_usage": 100.0, "index": k // 5000}))
    topic = settings.kafka.topics.fragments
    return [(topic, None, b"\n".join(lines[k : k + 2000])) for k in range(0, len(lines), 2000)]


async def test_fragments_of_tasks_never_sent_are_dead_lettered_not_windowed(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """1. the daemon replays a small workload at 600×; 2. once windows have closed, 50,000 fragments of 5,000
    task ids never sent are produced into the running stream (1,000 dated in closed windows, the rest 10 to
    55 minutes ahead); 3. the twin finishes and exits 0 with every window of a clean run: the late ones are
    late, the others (those not late by the time they are read) held until their window closed, then
    dead-lettered as orphans (counted in /api/status), none windowed, and the windows, their counts and the results equal a clean run's. Before, the 49,000 were
    windowed (stored as the windows' inputs and counted in the journal)."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload, speed=600.0)
    _, windows = await _lie_mid_stream(settings, _ghosts)
    late, orphans = windows["late"], windows["orphans"]
    assert late >= 1000  # and more: the stream goes on while they are sent
    assert orphans > 0
    assert late + orphans == 50_000
    assert windows["orphans_held"] == 0
    assert windows["dead_lettered"] == 50_000
    assert windows["quarantined"] == 0
    _check_results(settings, workload)


TEN_YEARS_MS = 3650 * 86_400_000


async def test_forged_tasks_holding_every_host_for_10_years_cannot_stretch_the_run(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """1. before the stream, 4 tasks reusing real ids (t0-t3) are sent, each asking a whole host (8 cores)
    with a first fragment of 10 years at full load: every host held for 10 years; 2. the daemon replays the
    workload (the real t0-t3 are conflicts: the forged ones came first and keep the ids); 3. the twin exits 0
    at the stream's end, and the tasks still running then are simulated at most ``simulation.max_tail_s``
    (7 days) past the last window, cut there (logged ``tail_cut``): a week of export rows, not 10 years
    (before: 2.1 M rows for 10 years, the final window alone ten times the whole run on the demo)."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload)
    wl = load_workload(workload)
    t = settings.kafka.topics
    first = wl.origin_ms
    forged: list[tuple[str, bytes | None, bytes]] = []
    for k in range(4):
        key = orjson.dumps({"id": f"t{k}"})
        doc = {"submission_time": iso_ms(first), "duration": TEN_YEARS_MS, "cpu_count": 8}
        forged.append((t.tasks, key, orjson.dumps({**doc, "cpu_capacity": 16000.0, "mem_capacity": 1000})))
        forged.append((t.fragments, key, orjson.dumps({**doc, "cpu_usage": 16000.0, "index": 0})))
    await _produce(settings, forged)
    state = TwinState()
    with capture_logs() as logs:
        async with asyncio.timeout(120):
            assert await run_daemon(settings, exit_when_done=True, state=state) == 0
    windows = state.snapshot()["windows"]
    assert (windows["conflicts"], windows["dead_lettered"]) == (4, 4)  # the real t0-t3, dead-lettered
    cut = [e for e in logs if e["event"] == "tail_cut"]
    assert len(cut) == 1
    agg, journal = read_results(settings.data_dir)
    end = last_window_end_ms(journal)
    tail = settings.simulation.max_tail_s * 1000
    assert cut[0]["until_ms"] == end + tail
    last = int(agg["timestamp"].dt.epoch("ms").max())  # type: ignore[arg-type]
    assert end < last <= end + tail
    assert agg.height <= len(journal) * 2 + tail // 150_000 + 2
