"""The pieces of the twin's OpenDC mode (opendt/opendc/prefix.py, opendt/twin/opendc.py) on their own: the causal zero-task rule,
the idle tail after a prefix run's end, the carbon trace file and the on-disk cumulative history."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opendt.engine.hosts import build_hosts
from opendt.models.messages import CarbonRow, FragmentRow, TaskRow
from opendt.models.topology import parse_topology
from opendt.opendc.backends import OpenDCBackend
from opendt.opendc.pool import SimulationPool
from opendt.opendc.prefix import (
    EPSILON_MHZ,
    causal_fragments,
    idle_tail,
    strip_carbon_paths,
    write_carbon_trace,
)
from opendt.stream.windowing import Window
from opendt.twin.crosscheck import divergence
from opendt.twin.inputs import InputStore
from opendt.twin.opendc import History, OpenDCWindowError, OpenDCWindows, unknown_carbon_like
from opendt.workload import CARBON_SCHEMA, FRAGMENT_SCHEMA

TOPOLOGY = {
    "clusters": [
        {
            "name": "c",
            "hosts": [
                {
                    "name": "h",
                    "count": 2,
                    "cpu": {"coreCount": 8, "coreSpeed": 2000},
                    "memory": {"memorySize": 64000},
                    "cpuPowerModel": {"modelType": "linear", "idlePower": 100.0, "maxPower": 300.0},
                }
            ],
            "powerSource": {"carbonTracePath": "carbon.parquet"},
        }
    ]
}


def test_only_tasks_whose_known_fragments_are_all_zero_get_epsilon_on_their_first() -> None:
    frags = pl.DataFrame(
        [
            ("a", 0, 1000, 1, 0.0, 0),
            ("a", 1000, 1000, 1, 0.0, 1),
            ("b", 0, 1000, 1, 0.0, 0),
            ("b", 1000, 1000, 1, 50.0, 1),
        ],
        schema=FRAGMENT_SCHEMA,
        orient="row",
    )
    out = causal_fragments(frags)
    assert out["cpu_usage"].to_list() == [EPSILON_MHZ, 0.0, 0.0, 50.0]
    assert out.select("id", "index").equals(frags.select("id", "index"))


def test_the_idle_tail_continues_on_the_grid_with_idle_power_and_the_received_carbon() -> None:
    """A prefix run that ended off-grid at t=250 s (T0 = 0, 100 s interval): its partial row (energy of
    (200, 250]) joins the instant 300 with the idle power for (250, 300]; then full idle intervals to the
    batch end; carbon from the steps (one at 350 s). Final: a last partial row at the batch end."""
    topo = parse_topology(TOPOLOGY)
    idle = float(build_hosts(topo).idle_by_cluster()[0])
    assert idle == 200.0
    rows = pl.DataFrame(
        {
            "timestamp": [100_000, 200_000, 250_000],
            "timestamp_absolute": [100_000, 200_000, 250_000],
            "cluster_name": ["c"] * 3,
            "power_draw": [400.0, 400.0, 200.0],
            "energy_usage": [40_000.0, 40_000.0, 20_000.0],
            "carbon_intensity": [10.0] * 3,
            "carbon_emission": [1.0, 1.0, 0.5],
            "tasks_completed": [0, 0, 3],
            "cpu_work": [None, None, None],
        },
        schema_overrides={"cpu_work": pl.Float64},
    )
    carbon = pl.DataFrame([(0, 10.0), (350_000, 20.0)], schema=CARBON_SCHEMA, orient="row")
    out = idle_tail(rows, topo, carbon, 0, 100_000, 500_000, final=False)
    assert out["timestamp_absolute"].to_list() == [100_000, 200_000, 300_000, 400_000, 500_000]
    assert out["energy_usage"].to_list() == [
        40_000.0,
        40_000.0,
        20_000.0 + 200 * 50,
        200 * 100.0,
        200 * 100.0,
    ]
    assert out["power_draw"].to_list()[2:] == [idle] * 3
    assert out["tasks_completed"].to_list() == [0, 0, 3, 0, 0]
    assert out["carbon_intensity"].to_list()[2:] == [10.0, 20.0, 20.0]
    g = 1.0 / 3.6e6  # gCO2 per (gCO2/kWh × J)
    expect = [0.5 + 10 * 200 * 50 * g, (10 * 50 + 20 * 50) * 200 * g, 20 * 200 * 100 * g]
    assert out["carbon_emission"].to_list()[2:] == pytest.approx(expect, rel=1e-12)
    final = idle_tail(rows, topo, carbon, 0, 100_000, 450_000, final=True)
    assert final["timestamp_absolute"].to_list()[-2:] == [400_000, 450_000]
    assert final["energy_usage"].to_list()[-1] == 200 * 50.0
    ended_later = idle_tail(rows, topo, carbon, 0, 100_000, 250_000, final=False)
    assert ended_later.equals(rows)


def test_the_carbon_trace_has_millisecond_timestamps_and_no_workload_path(tmp_path: Path) -> None:
    """OpenDC reads the INT64 timestamp as epoch ms whatever its unit: it must be timestamp[ms]."""
    carbon = pl.DataFrame(
        [(1_709_506_800_000, 300.0), (1_709_500_000_000, 250.0)], schema=CARBON_SCHEMA, orient="row"
    )
    write_carbon_trace(carbon, tmp_path / "c.parquet")
    table = pq.read_table(tmp_path / "c.parquet")
    assert table.schema.field("timestamp").type == pa.timestamp("ms")
    assert table.column("timestamp").cast(pa.int64()).to_pylist() == [1_709_500_000_000, 1_709_506_800_000]
    stripped = strip_carbon_paths(parse_topology(TOPOLOGY)).to_json_dict()
    assert "carbonTracePath" not in (stripped["clusters"][0].get("powerSource") or {})


def _window(start: int, task: str) -> Window:
    return Window(
        start,
        start + 300_000,
        tasks=[TaskRow(task, start + 1000, 60_000, 1, 1000.0, 100)],
        fragments=[FragmentRow(task, start + 1000, 60_000, 1, 500.0, 0)],
        carbon=[CarbonRow(start, 100.0)],
    )


async def test_history_appends_parts_survives_a_torn_append_compacts_and_cuts(tmp_path: Path) -> None:
    inputs = InputStore(tmp_path / "run")
    inputs.load()
    starts = [i * 300_000 for i in range(40)]
    for i, s in enumerate(starts):
        await inputs.write(_window(s, f"t{i}"), {})
    h = History(tmp_path / "run" / "opendc" / "history", inputs)
    h.load()
    assert h.frames(600_000)["tasks"]["id"].to_list() == ["t0", "t1"]
    assert h.parts == [600_000]
    # a torn append (tasks, written last, missing) is not a part: removed at load
    (h.dir / "carbon.900000.parquet").write_bytes(b"torn")
    (h.dir / "fragments.900000.parquet").write_bytes(b"torn")
    h2 = History(h.dir, inputs)
    h2.load()
    assert h2.parts == [600_000]
    assert not (h.dir / "carbon.900000.parquet").exists()
    for k in range(3, 40):  # one part per window: compacted past COMPACT_PARTS
        h2.frames(k * 300_000)
    assert len(h2.parts) <= 32
    f = h2.frames(40 * 300_000)
    assert f["tasks"]["id"].to_list() == [f"t{i}" for i in range(40)]
    assert f["carbon"].height == 40
    # a history ahead of the requested end (a batch simulated again after a restart) is cut by trace time
    cut = h2.frames(10 * 300_000)
    assert cut["tasks"]["id"].to_list() == [f"t{i}" for i in range(10)]
    assert cut["fragments"].height == 10
    # windows that are no longer stored cannot extend it
    inputs.prune(45 * 300_000)
    await inputs.write(_window(46 * 300_000, "late"), {})
    with pytest.raises(OpenDCWindowError, match="no longer stored"):
        h2.frames(47 * 300_000)


def test_divergence_names_the_worst_instant_and_counts_a_missing_one_as_total() -> None:
    a = pl.DataFrame(
        {"timestamp_absolute": [1, 2, 3], "cluster_name": ["c"] * 3, "energy_usage": [10.0, 20.0, 30.0]}
    )
    b = a.with_columns(
        pl.when(pl.col("timestamp_absolute") == 2)
        .then(20.2)
        .otherwise(pl.col("energy_usage"))
        .alias("energy_usage")
    )
    err, at, n = divergence(a, b)
    assert err == pytest.approx(0.2 / 20.2)
    assert (at, n) == (2, 3)
    assert divergence(a, a) == (0.0, 1, 3)
    assert divergence(a, b.filter(pl.col("timestamp_absolute") != 3))[:2] == (1.0, 3)


async def test_an_unreadable_history_fails_the_batch_not_the_loop(tmp_path: Path) -> None:
    """A damaged history part (a disk error): the window's rows raise OpenDCWindowError (the loop records
    the window failed and goes on), counted as a failed run; the binary is never started."""
    inputs = InputStore(tmp_path / "run")
    inputs.load()
    for i in range(3):
        await inputs.write(_window(i * 300_000, f"t{i}"), {})
    async with SimulationPool(max_parallel=1) as pool:
        od = OpenDCWindows(
            pool,
            OpenDCBackend(bin=Path(sys.executable)),
            inputs,
            tmp_path / "run",
            export_interval_s=150,
            every_windows=2,
        )
        od.load()
        od.history.frames(300_000)
        (od.history.dir / "fragments.300000.parquet").write_bytes(b"not parquet")
        with pytest.raises(OpenDCWindowError, match="cannot read the inputs"):
            await od.rows(300_000, 600_000, 0, parse_topology(TOPOLOGY), 900_000, False)
        assert od.stats.failed == 1
        assert pool.load.completed + pool.load.failed == 0


def test_opendc_rows_keep_the_twins_unknown_carbon() -> None:
    """OpenDC reads 0 without a carbon trace and extends the first step backwards: its rows of a window take
    the builtin engine's unknown carbon (NaN: no intensity received yet), a prefix in time; the rest stay."""
    nan = float("nan")
    ts = [1_000, 2_000, 3_000, 4_000]
    opendc = pl.DataFrame(
        {"timestamp_absolute": ts, "power_draw": [5.0] * 4, "carbon_intensity": [100.0] * 4,
         "carbon_emission": [0.5, 0.5, 0.5, 0.5]}
    )  # fmt: skip
    partly = pl.DataFrame(
        {"timestamp_absolute": ts, "carbon_intensity": [nan, nan, 100.0, 100.0],
         "carbon_emission": [nan, nan, nan, 0.5]}
    )  # fmt: skip
    out = unknown_carbon_like(opendc, partly)
    assert out["carbon_intensity"].is_nan().to_list() == [True, True, False, False]
    assert out["carbon_emission"].is_nan().to_list() == [True, True, True, False]
    assert out["power_draw"].to_list() == [5.0] * 4
    none = partly.with_columns(pl.lit(nan).alias("carbon_intensity"), pl.lit(nan).alias("carbon_emission"))
    longer = pl.concat([opendc, opendc.with_columns(pl.col("timestamp_absolute") + 4_000)])
    assert unknown_carbon_like(longer, none)["carbon_emission"].is_nan().all()  # none received: all unknown
    known = partly.with_columns(pl.lit(100.0).alias("carbon_intensity"), pl.lit(0.5).alias("carbon_emission"))
    assert unknown_carbon_like(opendc, known).equals(opendc)
