"""Warm starts: a candidate run from the twin worker's snapshot equals the twin run at the meter's interval."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from opendt.engine import Engine
from opendt.engine.state import StateError
from opendt.worker.client import TwinEngine
from opendt.worker.pool import CandidatePool, RoundInput
from opendt.worker.warm import RoundBase, load_snapshot, run_candidate, snapshot, unpack_snapshot
from opendt.workload import load_workload

from .conftest import write_demo_prefix

W = 300_000


async def test_snapshot_candidate_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """1. A real twin worker (150 s export) advances window by window to the lookback start and is
    snapshotted; 2. a real candidate worker restarts from the snapshot with another calibrationFactor and
    a 30 s export grid and advances through the lookback in one call; 3. its rows (whole 30 s intervals
    only) equal an in-process engine that ran the whole time with that topology and a 30 s export."""
    wl = load_workload(write_demo_prefix(tmp_path / "wl", 3.0))
    carbon = wl.carbon.rename({"timestamp_ms": "timestamp"}) if wl.carbon is not None else None
    start = wl.origin_ms // W * W
    lo, hi = start + 12 * W, start + 24 * W

    def window(a: int, b: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        sel = (pl.col("submission_ms") >= a) & (pl.col("submission_ms") < b)
        return wl.tasks.filter(sel), wl.fragments.filter(sel)

    other = wl.topology.model_copy(deep=True)
    for c in other.clusters:
        for h in c.hosts:
            h.cpuPowerModel.calibrationFactor = 6.5
    ref = Engine(other, export_interval_ms=30_000, carbon=carbon)
    ref_rows = [ref.advance(b, *window(b - W, b)) for b in range(start + W, hi + 1, W)]
    expected = pl.concat(ref_rows).filter(pl.col("timestamp_absolute") - 30_000 >= lo)

    twin = TwinEngine()
    try:
        await twin.init(wl.topology.to_json_dict(), 150_000, carbon)
        for b in range(start + W, lo + 1, W):
            await twin.advance(b, *window(b - W, b))
        blob = await twin.snapshot()
        await twin.advance(lo + W, *window(lo, lo + W))  # the twin goes on; the snapshot does not change
    finally:
        await twin.close()
    tasks, frags = window(lo, hi)
    rin = RoundInput(
        1,
        {"until_ms": hi, "export_interval_ms": 30_000},
        {
            "snapshot": pl.DataFrame({"blob": [blob]}, schema={"blob": pl.Binary}),
            "tasks": tasks,
            "fragments": frags,
        },
    )
    async with CandidatePool(1, timeout_s=60) as pool:
        (out,) = await pool.run(rin, [other.to_json_dict()])
    assert out.error == ""
    assert out.rows is not None
    got = out.rows.sort("timestamp_absolute")
    assert got["timestamp_absolute"].to_list() == expected["timestamp_absolute"].to_list()
    assert got.height >= 110
    np.testing.assert_allclose(got["energy_usage"].to_numpy(), expected["energy_usage"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(got["power_draw"].to_numpy(), expected["power_draw"].to_numpy(), rtol=1e-9)


def test_snapshots_are_compressed_data_and_load_back_to_the_same_engine(tmp_path: Path) -> None:
    """A snapshot is compressed data (smaller than its content, unpacked to it exactly); the engine it loads
    goes on exactly as the snapshotted one; a pickle (an older snapshot) is refused, never loaded; a cut or
    damaged one raises a StateError."""
    wl = load_workload(write_demo_prefix(tmp_path / "wl", 3.0))
    start = wl.origin_ms // W * W
    mid, end = start + 12 * W, start + 24 * W
    early = pl.col("submission_ms") < mid
    eng = Engine(wl.topology, export_interval_ms=150_000, carbon=None)
    eng.advance(mid, wl.tasks.filter(early), wl.fragments.filter(early))
    blob = snapshot(eng, "running")
    assert blob.startswith(b"ODTE2")
    inner = unpack_snapshot(blob)  # the content
    assert inner.startswith(b"ODTR2")
    assert len(blob) < len(inner) / 2
    assert unpack_snapshot(inner) is inner
    rest = (wl.tasks.filter(~early), wl.fragments.filter(~early))
    expected = eng.advance(end, *rest)
    for b in (blob, inner):
        got = load_snapshot(b).advance(end, *rest)
        assert got.height > 0
        assert got.equals(expected)
    with pytest.raises(StateError, match="older pickled snapshot"):
        load_snapshot(pickle.dumps(eng, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(StateError, match="damaged or cut short"):
        load_snapshot(blob[: len(blob) // 2])
    flipped = bytearray(inner)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(StateError, match="checksum"):  # magic, size, CRC kept; the content changed
        load_snapshot(blob[:17] + pa.Codec("zstd").compress(bytes(flipped), asbytes=True))


async def test_power_only_candidates_replay_the_first_candidates_schedule(tmp_path: Path) -> None:
    """1. A real candidate worker runs a round's first candidate in full and keeps its schedule; 2. later
    candidates that change idle/max power and calibrationFactor (same hosts) are replays of that schedule;
    3. their rows equal full runs of the same topologies from the snapshot (a fresh worker per candidate), and
    a candidate with another core speed (other capacities) is simulated in full, as it must be."""
    wl = load_workload(write_demo_prefix(tmp_path / "wl", 4.0))
    start = wl.origin_ms // W * W
    lo, hi = start + 12 * W, start + 36 * W
    eng = Engine(wl.topology, export_interval_ms=150_000, carbon=None)
    early = pl.col("submission_ms") < lo
    eng.advance(lo, wl.tasks.filter(early), wl.fragments.filter(early))
    blob = snapshot(eng)
    late = (pl.col("submission_ms") >= lo) & (pl.col("submission_ms") < hi)

    def variant(idle: float, mx: float, cf: float, speed: float | None = None) -> dict[str, object]:
        doc = wl.topology.to_json_dict()
        for c in doc["clusters"]:
            for h in c["hosts"]:
                pm = h["cpuPowerModel"]
                pm["idlePower"], pm["maxPower"] = pm["idlePower"] * idle, pm["maxPower"] * mx
                pm["calibrationFactor"] = cf
                if speed is not None:
                    h["cpu"]["coreSpeed"] = speed
        return doc

    topologies = [
        variant(1.0, 1.0, 4.0),
        variant(0.7, 1.3, 6.5),
        variant(1.5, 0.9, 2.25),
        variant(1, 1, 4, 1800),
    ]
    rin = RoundInput(
        1,
        {"until_ms": hi, "export_interval_ms": 30_000},
        {
            "snapshot": pl.DataFrame({"blob": [blob]}, schema={"blob": pl.Binary}),
            "tasks": wl.tasks.filter(late),
            "fragments": wl.fragments.filter(late),
        },
    )
    async with CandidatePool(1, timeout_s=60) as pool:
        together = await pool.run(rin, topologies)
    for i, topo in enumerate(topologies):
        async with CandidatePool(1, timeout_s=60) as pool:
            (alone,) = await pool.run(RoundInput(10 + i, rin.header, rin.tables), [topo])
        assert together[i].rows is not None
        assert alone.rows is not None
        assert alone.rows.height >= 230
        rows = together[i].rows
        assert rows is not None
        assert rows.equals(alone.rows), i
    first, second = (together[k].rows for k in (0, 1))
    assert first is not None
    assert second is not None
    assert not np.allclose(first["energy_usage"].to_numpy(), second["energy_usage"].to_numpy())


def test_a_replay_needs_no_snapshot_and_a_new_structure_does(tmp_path: Path) -> None:
    """In-process: once the first candidate kept its schedule, a power-only candidate is evaluated without
    touching the snapshot (a damaged one does not matter), while another core speed re-simulates (and so
    fails on the damaged snapshot)."""
    wl = load_workload(write_demo_prefix(tmp_path / "wl", 3.0))
    start = wl.origin_ms // W * W
    lo, hi = start + 12 * W, start + 24 * W
    eng = Engine(wl.topology, export_interval_ms=150_000, carbon=None)
    early = pl.col("submission_ms") < lo
    eng.advance(lo, wl.tasks.filter(early), wl.fragments.filter(early))
    late = (pl.col("submission_ms") >= lo) & (pl.col("submission_ms") < hi)
    base = RoundBase(
        unpack_snapshot(snapshot(eng)),
        None,
        None,
        wl.tasks.filter(late),
        wl.fragments.filter(late),
        hi,
        30_000,
    )
    doc = wl.topology.to_json_dict()
    first = run_candidate(base, doc)
    assert base.schedule is not None
    base.blob = b"damaged"
    for h in doc["clusters"][0]["hosts"]:
        h["cpuPowerModel"]["maxPower"] *= 1.2
    again = run_candidate(base, doc)
    assert again["timestamp_absolute"].to_list() == first["timestamp_absolute"].to_list()
    assert (again["energy_usage"] > first["energy_usage"]).all()
    for h in doc["clusters"][0]["hosts"]:
        h["cpu"]["coreSpeed"] = 1800
    with pytest.raises(StateError):
        run_candidate(base, doc)
