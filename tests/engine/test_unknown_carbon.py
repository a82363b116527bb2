"""The twin's engine (``unknown_carbon``, issue 24): a time no carbon intensity was received for has unknown
intensity and emission (NaN, null once aggregated), never 0; once steps arrive, the last one holds until the
next and emissions are computed; the time before the first step stays unknown (no step is extended backwards,
as OpenDC does for a whole trace). The state survives a snapshot (a checkpoint) either way."""

from __future__ import annotations

import numpy as np
import polars as pl

from opendt.engine import Engine
from opendt.engine.state import dumps, loads
from opendt.models.topology import Topology
from opendt.twin.results import aggregate_rows

from .conftest import host_spec, linear, random_trace, topo, windows

DT = 30_000
WINDOW = 300_000
FIRST_STEP = 1_665_093_600_000 + 17 * 60_000 + 7_000
"""The feed's first step: off the export grid and inside a window, 17 minutes after the first task."""
STEPS = pl.DataFrame(
    {
        "timestamp": [FIRST_STEP + k * 900_000 for k in range(12)],
        "carbon_intensity": [150.0 + 7 * k for k in range(12)],
    }
)
CARBON_COLS = ("carbon_intensity", "carbon_emission")


def _topo() -> Topology:
    return topo(
        ("A", [host_spec("S", 3, 8, 2000.0, linear())]), ("B", [host_spec("M", 1, 16, 2400.0, linear())])
    )


def _windowed(carbon: pl.DataFrame | None, *, snapshot_after: int | None = None) -> pl.DataFrame:
    """The twin's engine advanced window by window; each window brings the steps up to its end, as the
    consumer carries them (the last one all that is left). ``snapshot_after``: the engine is written and read back after that many windows."""
    tasks, frags = random_trace(7, n_tasks=40)
    eng = Engine(_topo(), export_interval_ms=DT, unknown_carbon=True)
    out = []
    given = -(2**62)
    cut = windows(tasks, frags, WINDOW)
    for i, (until, wt, wf) in enumerate(cut):
        steps = None
        if carbon is not None:  # the last window brings the rest (as the stream's final window does)
            upto = pl.col("timestamp") < until if i + 1 < len(cut) else pl.lit(value=True)
            steps = carbon.filter((pl.col("timestamp") >= given) & upto)
            given = until
        out.append(eng.advance(until, wt, wf, steps))
        if snapshot_after is not None and i + 1 == snapshot_after:
            eng = loads(dumps(eng))
    return pl.concat([*out, eng.finish()])


def _reference() -> pl.DataFrame:
    """OpenDC's semantics: the whole trace known from the start (its first step covers earlier times)."""
    tasks, frags = random_trace(7, n_tasks=40)
    eng = Engine(_topo(), export_interval_ms=DT, carbon=STEPS)
    out = [eng.advance(until, wt, wf) for until, wt, wf in windows(tasks, frags, WINDOW)]
    return pl.concat([*out, eng.finish()])


def test_no_carbon_feed_is_unknown_never_zero() -> None:
    rows = _windowed(None)
    assert rows.height > 100
    for c in CARBON_COLS:
        assert rows[c].is_nan().all(), c  # the final flush row too
    ref = _reference()
    assert rows["timestamp"].to_list() == ref["timestamp"].to_list()
    for c in ("power_draw", "energy_usage"):
        np.testing.assert_allclose(rows[c].to_numpy(), ref[c].to_numpy(), rtol=1e-12)
    agg = aggregate_rows(rows, 0, 0)
    for c in CARBON_COLS:
        assert agg[c].null_count() == agg.height, c
    # the OpenDC-compatible engine (files, one-shot runs) keeps OpenDC's 0 without a trace
    plain = Engine(_topo(), export_interval_ms=DT)
    tasks, frags = random_trace(7, n_tasks=40)
    opendc = plain.advance(windows(tasks, frags, WINDOW)[-1][0], tasks, frags)
    assert opendc.height
    assert (opendc["carbon_emission"] == 0).all()


def test_carbon_from_its_first_step_on_never_before() -> None:
    rows = _windowed(STEPS)
    ref = _reference()
    assert rows["timestamp"].to_list() == ref["timestamp"].to_list()
    t = rows["timestamp_absolute"].to_numpy()
    before = t - DT < FIRST_STEP  # the row's interval (t - DT, t] holds time before the first step
    assert before.any()
    assert (~before).any()
    em, ref_em = rows["carbon_emission"].to_numpy(), ref["carbon_emission"].to_numpy()
    assert np.isnan(em[before]).all()
    np.testing.assert_allclose(em[~before], ref_em[~before], rtol=1e-9)
    assert (em[~before] > 0).all()
    ci, ref_ci = rows["carbon_intensity"].to_numpy(), ref["carbon_intensity"].to_numpy()
    assert np.isnan(ci[t <= FIRST_STEP]).all()  # the value just before the instant
    np.testing.assert_allclose(ci[t > FIRST_STEP], ref_ci[t > FIRST_STEP], rtol=0)
    for c in ("power_draw", "energy_usage"):
        np.testing.assert_allclose(rows[c].to_numpy(), ref[c].to_numpy(), rtol=1e-12)
    agg = aggregate_rows(rows, 0, 0)
    known = agg.filter(pl.col("carbon_emission").is_not_null())
    assert 0 < known.height < agg.height


def test_a_snapshot_keeps_what_is_known() -> None:
    """Written and read back before the first step (carbon not yet known) and after it: the same rows as an
    engine that was never interrupted, unknown where it was unknown and known where it was known."""
    whole = _windowed(STEPS)
    for after in (2, 6):  # the first step comes with window 4 (from the first task's window)
        again = _windowed(STEPS, snapshot_after=after)
        assert again["timestamp"].to_list() == whole["timestamp"].to_list()
        for c in (*CARBON_COLS, "power_draw", "energy_usage"):
            np.testing.assert_array_equal(again[c].to_numpy(), whole[c].to_numpy(), err_msg=f"{c} {after}")
    none = _windowed(None, snapshot_after=3)
    assert none["carbon_emission"].is_nan().all()
