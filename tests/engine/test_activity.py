"""The twin's per-interval activity columns: ``tasks_completed`` and ``cpu_work`` (GHz·s) on every row."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from opendt.engine import Engine, simulate
from opendt.engine.placement import COMPLETED
from opendt.models.topology import Topology

from .conftest import frames, host_spec, linear, random_trace, topo, windows

CARBON = pl.DataFrame(
    {
        "timestamp": [1_665_093_000_000 + k * 900_000 for k in range(40)],
        "carbon_intensity": [100.0 + k for k in range(40)],
    }
)
MSE = {"modelType": "mse", "idlePower": 25.0, "maxPower": 174.0, "calibrationFactor": 4}
OPENDC_COLUMNS = [
    "timestamp",
    "timestamp_absolute",
    "cluster_name",
    "source_name",
    "power_draw",
    "energy_usage",
    "carbon_intensity",
    "carbon_emission",
]


def _hetero() -> Topology:
    return topo(
        ("A", [host_spec("S", 2, 8, 2000.0, linear()), host_spec("M", 1, 16, 2100.0, MSE)]),
        ("B", [host_spec("S", 1, 4, 3000.0, {"modelType": "cubic", "idlePower": 60.0, "maxPower": 250.0})]),
    )


def _without_zero_tasks(tasks: pl.DataFrame, frags: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Drop all-zero tasks: the only input on which streaming and OpenDC's one-shot differ (DESIGN §6)."""
    zero = frags.group_by("id").agg((pl.col("cpu_usage") > 0).any().alias("nz")).filter(~pl.col("nz"))
    keep = ~pl.col("id").is_in(zero["id"].to_list())
    return tasks.filter(keep), frags.filter(keep)


def _windowed(
    t: Topology, tasks: pl.DataFrame, frags: pl.DataFrame, w: int, dt: int = 30_000
) -> pl.DataFrame:
    eng = Engine(t, export_interval_ms=dt, carbon=CARBON)
    out = [eng.advance(until, wt, wf) for until, wt, wf in windows(tasks, frags, w)]
    return pl.concat([*out, eng.finish()])


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("window_ms", [60_000, 300_000, 3_600_000])
def test_activity_windowed_equals_one_shot(seed: int, window_ms: int) -> None:
    """Window by window, every row's tasks_completed equals the one-shot run's exactly and its cpu_work
    within 1e-9; the completions sum to the tasks the scheduler completed."""
    tasks, frags = random_trace(seed)
    t = _hetero()
    parts = windows(tasks, frags, window_ms)
    one = Engine(t, export_interval_ms=30_000, carbon=CARBON)
    ref = pl.concat([one.advance(parts[-1][0], tasks, frags), one.finish()])
    got = _windowed(t, tasks, frags, window_ms)
    assert got["timestamp"].to_list() == ref["timestamp"].to_list()
    assert got["tasks_completed"].to_list() == ref["tasks_completed"].to_list()
    x, y = got["cpu_work"].to_numpy(), ref["cpu_work"].to_numpy()
    assert np.all(np.abs(x - y) <= 1e-9 * np.maximum(np.abs(y), 1.0))
    assert int(got["tasks_completed"].sum()) == sum(s == COMPLETED for s in one.sched.state) > 0


def test_activity_matches_opendc_service_and_host_tables() -> None:
    """Against the OpenDC-compatible one-shot run of the same trace: per instant, tasks_completed (summed over
    clusters) is the increase of the service table's tasks_completed, and each cluster's cpu_work is the sum
    over its hosts of capacity × cpu_time_active (the host table rounds that to the ms: within 0.5 ms per
    host)."""
    tasks, frags = _without_zero_tasks(*random_trace(5, n_tasks=80))
    t = _hetero()
    rows = _windowed(t, tasks, frags, 300_000)
    ref = simulate(t, tasks, frags, export_interval_ms=30_000, carbon=CARBON)
    assert ref.power_source.columns == OPENDC_COLUMNS  # OpenDC's files keep their columns
    per_instant = rows.group_by("timestamp", maintain_order=True).agg(pl.col("tasks_completed").sum())
    service = ref.service["tasks_completed"].to_numpy()
    assert per_instant["timestamp"].to_list() == ref.service["timestamp"].to_list()
    assert per_instant["tasks_completed"].to_list() == np.diff(np.r_[0, service]).tolist()
    host = ref.host.with_columns(
        (pl.col("cpu_capacity").cast(pl.Float64) * pl.col("cpu_time_active") * 1e-6).alias("work"),
        (pl.col("cpu_capacity").cast(pl.Float64) * 0.5e-6).alias("rounding"),
    )
    by_cluster = host.group_by("timestamp", "cluster_name", maintain_order=True).agg(
        pl.col("work").sum(), pl.col("rounding").sum()
    )
    j = rows.unique(["timestamp", "cluster_name"], keep="first", maintain_order=True).join(
        by_cluster, on=["timestamp", "cluster_name"], how="inner"
    )
    assert j.height == by_cluster.height
    assert ((j["cpu_work"] - j["work"]).abs() <= j["rounding"] + 1e-9).all()
    assert float(j["cpu_work"].sum()) > 0


def test_cpu_work_is_capped_at_capacity_and_completions_count_in_the_next_row() -> None:
    """One 8-core host at 2000 MHz (16 GHz): a fragment asking 40 GHz for 60 s delivers 16 GHz × 60 s = 960
    GHz·s, one asking 4 GHz for 60 s 240 GHz·s; a task finishing exactly at an export instant (120 s) counts
    in the row after it, as OpenDC's service table counts finish < t."""
    one = topo(("C", [host_spec("H", 1, 8, 2000.0, linear())]))
    tasks, frags = frames([("a", 0, 8, [(60_000, 40_000.0), (60_000, 4_000.0)])])
    eng = Engine(one, export_interval_ms=60_000)
    rows = pl.concat([eng.advance(200_000, tasks, frags), eng.finish()])
    assert rows["timestamp"].to_list() == [60_000, 120_000, 180_000, 200_000]  # the flush at the watermark
    assert rows["cpu_work"].to_list() == pytest.approx([960.0, 240.0, 0.0, 0.0])
    assert rows["tasks_completed"].to_list() == [0, 0, 1, 0]


def test_flush_row_carries_the_completions_at_the_end() -> None:
    """A run that ends on an export instant: the regular row there counts the completions before it, the
    duplicate final flush row the last task's completion at that very instant."""
    one = topo(("C", [host_spec("H", 1, 8, 2000.0, linear())]))
    tasks, frags = frames([("a", 0, 4, [(30_000, 1_000.0)]), ("b", 0, 4, [(120_000, 1_000.0)])])
    eng = Engine(one, export_interval_ms=60_000)
    rows = pl.concat([eng.advance(10_000, tasks, frags), eng.finish()])
    assert rows["timestamp"].to_list() == [60_000, 120_000, 120_000]
    assert rows["tasks_completed"].to_list() == [1, 0, 1]


def test_host_removal_keeps_every_completion() -> None:
    """Shrinking the topology mid-run (tasks migrate or restart) loses no completion and the delivered work
    never exceeds the remaining hosts' capacity."""
    tasks, frags = random_trace(11, n_tasks=40)
    big = topo(("C", [host_spec("H", 4, 16, 2000.0, linear())]))
    small = topo(("C", [host_spec("H", 1, 16, 2000.0, linear())]))
    parts = windows(tasks, frags, 300_000)
    eng = Engine(big, export_interval_ms=60_000)
    out = [eng.advance(u, wt, wf) for u, wt, wf in parts[:4]]
    eng.set_topology(small)
    out += [eng.advance(u, wt, wf) for u, wt, wf in parts[4:]]
    out.append(eng.finish())
    rows = pl.concat(out)
    assert int(rows["tasks_completed"].sum()) == sum(s == COMPLETED for s in eng.sched.state) == 40
    late = rows.filter(pl.col("timestamp") > parts[5][0] - eng.origin_ms)  # type: ignore[operator]
    assert late["cpu_work"].to_numpy().max() <= 16 * 2.0 * 60 + 1e-9  # one host: 32 GHz × 60 s


@pytest.mark.slow
def test_surf_completions_match_real_opendcs_service_table(
    surf_inputs: tuple[pl.DataFrame, pl.DataFrame], surf_carbon: pl.DataFrame
) -> None:
    """On the SURF week: the OpenDC-compatible one-shot run with the activity columns on counts, at every one
    of OpenDC's 4,033 instants (the final flush included), exactly the increase of the real OpenDC's
    service.parquet tasks_completed; the streaming twin, window by window, completes the same 6,295 tasks."""
    from opendt.engine.simulate import one_shot_engine, run_one_shot
    from opendt.engine.table import to_polars
    from opendt.models.topology import load_topology

    from .conftest import REFERENCE

    tasks, frags = surf_inputs
    t = load_topology(REFERENCE / "surf_mse_default" / "input" / "topology.json")
    ref = pl.read_parquet(REFERENCE / "surf_mse_default" / "output" / "service.parquet")
    eng = one_shot_engine(
        t, export_interval_ms=150_000, carbon=surf_carbon, tables=frozenset({"powerSource"})
    )
    eng.activity = True
    eng.ingest_frames(tasks, frags, merge=True)
    rows = to_polars(run_one_shot(eng, "NoDelay").power)
    assert rows["timestamp"].to_list() == ref["timestamp"].to_list()
    increase = np.diff(np.r_[0, ref["tasks_completed"].to_numpy()])
    assert rows["tasks_completed"].to_list() == increase.tolist()
    streamed = Engine(t, export_interval_ms=150_000, carbon=surf_carbon)
    out = [streamed.advance(u, wt, wf) for u, wt, wf in windows(tasks, frags, 300_000)]
    total = int(pl.concat([*out, streamed.finish()])["tasks_completed"].sum())
    assert total == int(ref["tasks_completed"][-1]) == 6295
