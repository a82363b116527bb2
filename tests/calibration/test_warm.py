"""Warm starts: a candidate run from the twin worker's snapshot equals the twin run at the meter's interval."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from opendt.engine import Engine
from opendt.worker.client import TwinEngine
from opendt.worker.pool import CandidatePool, RoundInput
from opendt.worker.warm import load_snapshot, snapshot, unpack_snapshot
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


def test_snapshots_are_compressed_and_load_back_to_the_same_engine(tmp_path: Path) -> None:
    """A snapshot is the zstd-compressed pickle (smaller than the pickle, unpacked to it exactly); the engine
    it loads goes on exactly as the snapshotted one; a bare pickle (an older snapshot) still loads; a damaged
    one raises."""
    wl = load_workload(write_demo_prefix(tmp_path / "wl", 3.0))
    start = wl.origin_ms // W * W
    mid, end = start + 12 * W, start + 24 * W
    early = pl.col("submission_ms") < mid
    eng = Engine(wl.topology, export_interval_ms=150_000, carbon=None)
    eng.advance(mid, wl.tasks.filter(early), wl.fragments.filter(early))
    blob = snapshot(eng, "running")
    raw = pickle.dumps(eng, protocol=pickle.HIGHEST_PROTOCOL)
    assert blob.startswith(b"ODTZ1")
    inner = unpack_snapshot(blob)  # the pickle
    assert inner.startswith(b"\x80")
    assert len(blob) < len(inner) / 2
    assert unpack_snapshot(inner) is inner
    rest = (wl.tasks.filter(~early), wl.fragments.filter(~early))
    expected = eng.advance(end, *rest)
    for b in (blob, raw):
        got = load_snapshot(b).advance(end, *rest)
        assert got.height > 0
        assert got.equals(expected)
    with pytest.raises(OSError, match="ZSTD"):
        load_snapshot(blob[: len(blob) // 2])
