"""Window-by-window runs equal one run over the whole trace; topology changes, clones, causality."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from opendt.engine import Engine, simulate
from opendt.models.topology import Topology

from .conftest import host_spec, linear, random_trace, topo, windows, with_trace_times

MSE = {"modelType": "mse", "idlePower": 25.0, "maxPower": 174.0, "calibrationFactor": 4}
CARBON = pl.DataFrame(
    {
        "timestamp": [1_665_093_000_000 + k * 900_000 for k in range(40)],
        "carbon_intensity": [100.0 + k for k in range(40)],
    }
)


def _hetero() -> Topology:
    return topo(
        ("A", [host_spec("S", 2, 8, 2000.0, linear()), host_spec("M", 1, 16, 2100.0, MSE)]),
        ("B", [host_spec("S", 1, 4, 3000.0, {"modelType": "cubic", "idlePower": 60.0, "maxPower": 250.0})]),
    )


def _one_shot(
    t: Topology, tasks: pl.DataFrame, frags: pl.DataFrame, dt: int, end: int | None = None
) -> pl.DataFrame:
    """All input at once, up to the watermark ``end`` (default: just after the last fragment's trace time)."""
    eng = Engine(t, export_interval_ms=dt, carbon=CARBON)
    if end is None:
        end = int(with_trace_times(tasks, frags)["trace"].max()) + 1  # type: ignore[arg-type]
    return pl.concat([eng.advance(end, tasks, frags), eng.finish()])


def _windowed(t: Topology, tasks: pl.DataFrame, frags: pl.DataFrame, dt: int, w: int) -> pl.DataFrame:
    eng = Engine(t, export_interval_ms=dt, carbon=CARBON)
    out = [eng.advance(until, wt, wf) for until, wt, wf in windows(tasks, frags, w)]
    return pl.concat([*out, eng.finish()])


def _assert_same(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a.height == b.height
    assert a["timestamp"].to_list() == b["timestamp"].to_list()
    assert a["cluster_name"].to_list() == b["cluster_name"].to_list()
    for c in ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission"):
        x, y = a[c].to_numpy(), b[c].to_numpy()
        assert np.all(np.abs(x - y) <= 1e-9 * np.maximum(np.abs(x), 1.0)), c


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("window_ms", [60_000, 300_000, 3_600_000])
def test_windowed_equals_one_shot_on_synthetic_traces(seed: int, window_ms: int) -> None:
    """Heterogeneous clusters, shared hosts, queueing, zero tasks: any window size gives the same rows.

    The one-shot run gets the same final watermark as the last window (rows past the last completion are
    idle rows a streaming engine cannot avoid emitting).
    """
    tasks, frags = random_trace(seed)
    t = _hetero()
    end = windows(tasks, frags, window_ms)[-1][0]
    _assert_same(_one_shot(t, tasks, frags, 30_000, end), _windowed(t, tasks, frags, 30_000, window_ms))


def test_streaming_one_shot_equals_simulate_without_zero_tasks() -> None:
    """Without all-zero tasks the streaming engine and the OpenDC-compatible one-shot agree."""
    tasks, frags = random_trace(5)
    zero = frags.group_by("id").agg((pl.col("cpu_usage") > 0).any().alias("nz")).filter(~pl.col("nz"))
    tasks = tasks.filter(~pl.col("id").is_in(zero["id"].to_list()))
    frags = frags.filter(~pl.col("id").is_in(zero["id"].to_list()))
    t = _hetero()
    ref = simulate(t, tasks, frags, export_interval_ms=30_000, carbon=CARBON).power_source
    _assert_same(_one_shot(t, tasks, frags, 30_000), ref)


def test_set_topology_same_structure_applies_from_that_instant() -> None:
    """A power-model change between windows changes only the rows after that instant."""
    tasks, frags = random_trace(7)
    old, new = _hetero(), _hetero()
    new.clusters[0].hosts[1].cpuPowerModel.calibrationFactor = 2.0
    new.clusters[1].hosts[0].cpu.coreSpeed = 4000.0
    parts = windows(tasks, frags, 300_000)
    eng = Engine(old, export_interval_ms=30_000, carbon=CARBON)
    got = [eng.advance(u, wt, wf) for u, wt, wf in parts[:6]]
    switch = parts[5][0]
    eng.set_topology(new)
    got += [eng.advance(u, wt, wf) for u, wt, wf in parts[6:]]
    mixed = pl.concat([*got, eng.finish()])
    t0 = int(tasks["submission_ms"].min())  # type: ignore[arg-type]
    before = _windowed(old, tasks, frags, 30_000, 300_000)
    after = _windowed(new, tasks, frags, 30_000, 300_000)
    cut = switch - t0
    _assert_same(mixed.filter(pl.col("timestamp") <= cut), before.filter(pl.col("timestamp") <= cut))
    later = pl.col("timestamp") > cut + 30_000
    _assert_same(mixed.filter(later), after.filter(later))
    assert not np.allclose(before.filter(later)["energy_usage"], after.filter(later)["energy_usage"])


def test_removing_hosts_requeues_their_tasks() -> None:
    """Shrinking the topology re-queues the removed hosts' tasks at the front; every task still finishes."""
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
    assert rows["timestamp"].is_sorted()
    assert eng.sched.all_done()
    late = rows.filter(pl.col("timestamp") > parts[4][0] - eng.origin_ms + 60_000)  # type: ignore[operator]
    assert late["power_draw"].to_numpy().min() >= 100.0 - 1e-9
    assert late["power_draw"].to_numpy().max() <= 200.0 + 1e-9


def test_removed_hosts_tasks_migrate_where_there_is_room() -> None:
    """Shrinking 2 → 1 host moves the second host's task onto the first (room for both): it keeps its
    progress (same finish), and from the switch on one host draws the power of both demands."""
    from .conftest import frames

    two = topo(("C", [host_spec("H", 2, 16, 2000.0, linear())]))
    one = topo(("C", [host_spec("H", 1, 16, 2000.0, linear())]))
    tasks, frags = frames([("a", 0, 8, [(600_000, 8_000.0)]), ("b", 0, 8, [(600_000, 16_000.0)])])
    eng = Engine(two, export_interval_ms=60_000)
    before = eng.advance(300_000, tasks, frags)
    assert eng.sched.host == [0, 1]
    eng.set_topology(one)
    rows = pl.concat([before, eng.advance(2_000_000, tasks.clear(), frags.clear()), eng.finish()])
    assert eng.sched.host == [0, 0]
    assert eng.sched.finish == [600_000, 600_000]  # no restart
    assert eng.sched.requeued_at == {}
    power = dict(zip(rows["timestamp"].to_list(), rows["power_draw"].to_list(), strict=True))
    assert power[300_000] == pytest.approx(125.0 + 150.0)  # left limit: both hosts, u = 0.25 and 0.5
    assert power[360_000] == pytest.approx(175.0)  # one host, u = 0.75
    energy = dict(zip(rows["timestamp"].to_list(), rows["energy_usage"].to_list(), strict=True))
    assert energy[600_000] == pytest.approx(175.0 * 60)


def test_removed_hosts_tasks_that_fit_nowhere_restart_and_count_as_waiting() -> None:
    """No room on the kept host: the task is re-queued, restarts when the host frees up, and the range's
    task statistics count its wait from the re-queue."""
    from opendt.worker.warm import task_stats

    from .conftest import frames

    two = topo(("C", [host_spec("H", 2, 16, 2000.0, linear())]))
    one = topo(("C", [host_spec("H", 1, 16, 2000.0, linear())]))
    tasks, frags = frames([("a", 0, 16, [(600_000, 8_000.0)]), ("b", 0, 16, [(600_000, 16_000.0)])])
    eng = Engine(two, export_interval_ms=60_000)
    eng.advance(300_000, tasks, frags)
    eng.set_topology(one)
    eng.advance(2_000_000, tasks.clear(), frags.clear())
    assert eng.sched.requeued_at == {1: 300_000}
    assert eng.sched.start[1] == 600_000
    assert eng.sched.finish[1] == 1_200_000  # from its first fragment
    t0 = eng.origin_ms
    assert t0 is not None
    st = task_stats(eng, t0 + 300_000, t0 + 900_000).row(0, named=True)
    assert (st["tasks_submitted"], st["tasks_requeued"], st["wait_p95_s"]) == (0, 1, 300.0)
    assert task_stats(eng, t0, t0 + 300_000).row(0, named=True)["tasks_requeued"] == 0


def test_task_stats_drain_gives_the_exact_wait_of_tasks_still_queued() -> None:
    """A range that ends while a task waits: without drain its wait is the wait so far; with drain the
    scheduler runs on (no input) and the wait is exact: a later submission could not have overtaken it."""
    from opendt.worker.warm import task_stats

    from .conftest import frames

    one = topo(("C", [host_spec("H", 1, 16, 2000.0, linear())]))
    tasks, frags = frames([("a", 0, 16, [(600_000, 8_000.0)]), ("b", 100_000, 16, [(60_000, 8_000.0)])])
    eng = Engine(one, export_interval_ms=60_000)
    eng.advance(400_000, tasks, frags)
    t0 = eng.origin_ms
    assert t0 is not None
    so_far = task_stats(eng, t0 + 50_000, t0 + 400_000).row(0, named=True)
    assert (so_far["tasks_waiting"], so_far["wait_p95_s"], so_far["wait_drained"]) == (1, 300.0, False)
    exact = task_stats(eng, t0 + 50_000, t0 + 400_000, drain=True).row(0, named=True)
    assert (exact["tasks_waiting"], exact["wait_p95_s"], exact["wait_drained"]) == (1, 500.0, True)


@pytest.mark.parametrize(("declared", "wait"), [(600_000, 500.0), (None, 200.0)])
def test_task_stats_drain_runs_a_streaming_task_for_its_declared_duration(
    declared: int | None, wait: float
) -> None:
    """Streaming: at 250 s only the first 300 s of task a's fragments are known. The drain lets it run for its
    declared 600 s, so b (submitted at 100 s) starts at 600 s; without a declared duration, at 300 s."""
    from opendt.worker.warm import task_stats

    from .conftest import frames

    one = topo(("C", [host_spec("H", 1, 16, 2000.0, linear())]))
    tasks, frags = frames([("a", 0, 16, [(300_000, 8_000.0)]), ("b", 100_000, 16, [(60_000, 8_000.0)])])
    if declared is None:
        tasks = tasks.drop("duration")
    else:
        tasks = tasks.with_columns(pl.Series("duration", [declared, 60_000], dtype=pl.Int64))
    eng = Engine(one, export_interval_ms=60_000)
    eng.advance(250_000, tasks, frags)
    t0 = eng.origin_ms
    assert t0 is not None
    st = task_stats(eng, t0, t0 + 250_000, drain=True).row(0, named=True)
    assert st["wait_p95_s"] == pytest.approx(0.95 * wait)  # the 95th percentile of (0, wait), interpolated


def test_clone_is_independent() -> None:
    """A clone continues exactly like the original and does not share state with it."""
    tasks, frags = random_trace(4)
    parts = windows(tasks, frags, 300_000)
    eng = Engine(_hetero(), export_interval_ms=30_000, carbon=CARBON)
    for u, wt, wf in parts[:5]:
        eng.advance(u, wt, wf)
    twin = eng.clone()
    rest_a = pl.concat([*(eng.advance(u, wt, wf) for u, wt, wf in parts[5:]), eng.finish()])
    rest_b = pl.concat([*(twin.advance(u, wt, wf) for u, wt, wf in parts[5:]), twin.finish()])
    _assert_same(rest_a, rest_b)


def test_streaming_zero_task_holds_its_host() -> None:
    """In streaming mode an all-zero task keeps its host until its last fragment ends (DESIGN §6)."""
    t = topo(("C", [host_spec("H", 1, 16, 2000.0, linear())]))
    from .conftest import frames

    tasks, frags = frames([("z", 0, 16, [(60_000, 0.0)]), ("a", 1_000, 16, [(30_000, 32_000.0)])])
    eng = Engine(t, export_interval_ms=30_000)
    rows = pl.concat([eng.advance(200_000, tasks, frags), eng.finish()])
    assert eng.sched.start[1] == 60_000
    assert rows["energy_usage"].to_list()[:2] == pytest.approx([100.0 * 30, 100.0 * 30])
    one_shot = simulate(t, tasks, frags, export_interval_ms=30_000)
    assert one_shot.power_source["energy_usage"][0] == pytest.approx(100.0 + 200.0 * 29)


@pytest.mark.slow
@pytest.mark.parametrize("window_ms", [60_000, 300_000, 3_600_000])
def test_surf_windowed_equals_one_shot(
    surf_inputs: tuple[pl.DataFrame, pl.DataFrame], surf_carbon: pl.DataFrame, window_ms: int
) -> None:
    """The full SURF week window by window gives OpenDC's one-shot rows (within 1e-9)."""
    from opendt.models.topology import load_topology

    from .conftest import REFERENCE

    tasks, frags = surf_inputs
    t = load_topology(REFERENCE / "surf_mse_default" / "input" / "topology.json")
    ref = simulate(t, tasks, frags, export_interval_ms=150_000, carbon=surf_carbon).power_source
    eng = Engine(t, export_interval_ms=150_000, carbon=surf_carbon)
    out = [eng.advance(u, wt, wf) for u, wt, wf in windows(tasks, frags, window_ms)]
    _assert_same(pl.concat([*out, eng.finish()]), ref)
