"""Issue 29's feeds that lied about series and ids, through the real broker and the real daemon: physical
topologies dated 2199 ahead of a real change, carbon steps out of order, fragments of tasks never sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from opendt.models.messages import DATACENTER_KEY, encode_topology_message
from opendt.models.topology import parse_topology
from opendt.settings import Settings
from opendt.workload import load_workload

from ..pipeline.conftest import (
    W,
    max_rel_diff,
    read_results,
    windowed_reference,
    workload_windows,
    write_small_workload,
)
from .test_time import _lie_mid_stream

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
