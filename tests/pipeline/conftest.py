"""Pipeline test helpers: a small generated workload (no ../shared needed), the one-shot engine reference,
and readers of a run's results (``daemon_settings`` lives in tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from opendt.engine import Engine
from opendt.kafka.client import make_producer, send_many
from opendt.models.messages import DATACENTER_KEY, CarbonRow, FragmentRow, TaskRow, encode_topology_message
from opendt.models.topology import Topology
from opendt.settings import Settings
from opendt.stream.replay import encode_chunk, event_order, streams_of
from opendt.stream.windowing import Window, carry_carbon
from opendt.twin.results import aggregate_rows
from opendt.workload import Workload, load_workload

from .. import runfiles

W = 300_000
TASK_COLS = ["id", "submission_ms", "duration", "cpu_count", "cpu_capacity", "mem_capacity"]
FRAG_COLS = ["id", "submission_ms", "duration", "cpu_count", "cpu_usage", "index"]

START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def write_small_workload(
    path: Path, *, tasks: int = 12, seed: int = 3, hours: float = 2.0, carbon_back_days: int = 0
) -> Path:
    """Tasks over ``hours`` with 60 s fragments, 4 hosts, carbon + measured power every 30 s; the carbon trace
    (15-min steps) starts an hour before the tasks, or ``carbon_back_days`` earlier (as SURF's, a year long)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    sub = np.sort(rng.integers(0, int(hours * 3600), tasks)) * 1000 + START_MS
    nfrag = rng.integers(2, 40, tasks)
    ids = [f"t{i}" for i in range(tasks)]
    pl.DataFrame(
        {
            "id": ids,
            "submission_time": pl.Series(sub).cast(pl.Datetime("ms")),
            "duration": nfrag * 60_000,
            "cpu_count": rng.choice([4, 8], tasks).astype(np.int32),
            "cpu_capacity": np.full(tasks, 16000.0),
            "mem_capacity": np.full(tasks, 1000),
        }
    ).write_parquet(path / "tasks.parquet")
    fid = np.repeat(np.arange(tasks), nfrag)
    pl.DataFrame(
        {
            "id": pl.Series(ids)[fid],
            "duration": np.full(len(fid), 60_000),
            "cpu_count": np.full(len(fid), 8, dtype=np.int32),
            "cpu_usage": np.round(rng.uniform(0, 16000, len(fid)), 1),
        }
    ).write_parquet(path / "fragments.parquet")
    end = int(hours * 3600 * 1000) + 40 * 60_000
    ts = np.arange(30_000, end, 30_000)
    pl.DataFrame(
        {"timestamp": ts, "power_draw": rng.uniform(400, 900, len(ts)), "energy_usage": np.full(len(ts), 1.0)}
    ).write_parquet(path / "consumption.parquet")
    ct = START_MS + np.arange(-4 - 96 * carbon_back_days, int(hours * 4) + 12) * 900_000
    pl.DataFrame(
        {
            "timestamp": pl.Series(ct).cast(pl.Datetime("ms")),
            "carbon_intensity": rng.uniform(100, 300, len(ct)),
        }
    ).write_parquet(path / "carbon.parquet")
    topo = {
        "clusters": [
            {
                "name": "C",
                "hosts": [
                    {
                        "name": "H",
                        "count": 4,
                        "cpu": {"coreCount": 8, "coreSpeed": 2000},
                        "memory": {"memorySize": 100000},
                        "cpuPowerModel": {
                            "modelType": "mse",
                            "idlePower": 100,
                            "maxPower": 200,
                            "calibrationFactor": 4,
                        },
                    }
                ],
                "powerSource": {"carbonTracePath": "carbon.parquet"},
            }
        ]
    }
    (path / "topology.json").write_text(json.dumps(topo))
    return path


@pytest.fixture
def small_workload(tmp_path: Path) -> Path:
    """A generated 2-hour workload directory."""
    return write_small_workload(tmp_path / "wl")


def one_shot(wl_dir: Path, until_ms: int, export_interval_ms: int = 150_000) -> pl.DataFrame:
    """The whole trace in one in-process engine run (advance to ``until_ms``, the end of the twin's last
    window, then finish), aggregated like the twin."""
    wl = load_workload(wl_dir)
    engine = Engine(wl.topology, export_interval_ms=export_interval_ms, carbon=wl.carbon)
    rows = pl.concat(
        [engine.advance(until_ms, wl.tasks, wl.fragments), engine.finish()], how="vertical_relaxed"
    )
    return aggregate_rows(rows, 0, 0)


def workload_windows(wl: Workload) -> list[Window]:
    """The workload cut into the twin's 300 s windows (tasks and fragments by submission time), last final."""
    start = (wl.origin_ms // W) * W
    out = []
    for lo in range(start, wl.end_ms + 1, W):
        t = wl.tasks.filter(pl.col("submission_ms").is_between(lo, lo + W, closed="left"))
        f = wl.fragments.filter(pl.col("submission_ms").is_between(lo, lo + W, closed="left"))
        tasks = [TaskRow(*r) for r in t.select(TASK_COLS).iter_rows()]
        out.append(Window(lo, lo + W, tasks, [FragmentRow(*r) for r in f.select(FRAG_COLS).iter_rows()]))
    out[-1].final = True
    out[0].topology = wl.topology
    if wl.carbon is not None:
        carry_carbon(
            out, [CarbonRow(*r) for r in wl.carbon.select("timestamp_ms", "carbon_intensity").iter_rows()]
        )
    return out


def windowed_reference(
    wl: Workload,
    windows: list[Window],
    *,
    skip: int | None = None,
    topology_at: tuple[int, Topology] | None = None,
) -> pl.DataFrame:
    """The in-process engine advanced window by window like the twin: ``(timestamp, power_draw,
    energy_usage)``. No call at all for window ``skip``; ``topology_at=(i, t)`` sets ``t`` before window i."""
    assert wl.carbon is not None
    engine = Engine(wl.topology, export_interval_ms=150_000, carbon=wl.carbon)
    parts = []
    for i, w in enumerate(windows):
        if topology_at is not None and i == topology_at[0]:
            engine.set_topology(topology_at[1])
        if i == skip:
            continue
        tasks = pl.DataFrame(w.tasks, schema=TASK_COLS, orient="row")
        frags = w.fragment_frame()
        rows = engine.advance(w.end_ms, tasks, frags)
        if w.final:
            rows = pl.concat([rows, engine.finish()], how="vertical_relaxed")
        parts.append(aggregate_rows(rows, 0, w.start_ms))
    return pl.concat([p for p in parts if p.height]).select(
        pl.col("timestamp").dt.cast_time_unit("ms"), "power_draw", "energy_usage"
    )


def max_rel_diff(
    got: pl.DataFrame, ref: pl.DataFrame, cols: tuple[str, ...] = ("power_draw", "energy_usage")
) -> float:
    """Max |got − ref| / max(|ref|, 1e-12) over the timestamps both have, for ``cols``."""
    ms = pl.col("timestamp").dt.cast_time_unit("ms")
    j = got.with_columns(ms).join(ref.with_columns(ms), on="timestamp", how="inner", suffix="_ref")
    assert j.height > 0, "no common timestamps"
    worst = 0.0
    for c in cols:
        rel = ((j[c] - j[f"{c}_ref"]).abs() / j[f"{c}_ref"].abs().clip(lower_bound=1e-12)).max()
        worst = max(worst, float(rel))  # type: ignore[arg-type]
    return worst


def last_window_end_ms(windows: pl.DataFrame) -> int:
    return int(windows["window_end"].dt.epoch("ms").max())  # type: ignore[arg-type]


def run_dir(data_dir: Path) -> Path:
    """The single run directory under ``data_dir`` (one run per test data dir)."""
    runs = sorted((data_dir / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def read_results(data_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(agg_results, windows)`` of the run under ``data_dir``."""
    d = run_dir(data_dir)
    return runfiles.agg(d), runfiles.journal(d)


def assert_windows_contiguous(windows: pl.DataFrame, window_ms: int = 300_000) -> None:
    """One row per window: starts unique, aligned and contiguous from the first to the last."""
    starts = windows["window_start"].dt.epoch("ms").to_list()
    assert starts == list(range(starts[0], starts[-1] + window_ms, window_ms)), "windows not contiguous"


async def foreign_producer(
    settings: Settings, workload: Path, kinds: tuple[str, ...] = ("tasks", "fragments", "power", "carbon")
) -> None:
    """A datacenter that is not the replay: its topology, then every record of the workload's streams in
    ``kinds`` once, one per message, in time order; no heartbeat, no final."""
    wl = load_workload(workload)
    streams = streams_of(wl, wl.topology.clusters[0].powerSource.name)
    chunk = encode_chunk(streams, event_order(streams))
    topics = settings.kafka.topics
    by_kind = {
        "tasks": topics.tasks,
        "fragments": topics.fragments,
        "power": topics.power,
        "carbon": topics.carbon,
    }
    producer = make_producer(settings.kafka.bootstrap_servers or "", settings.kafka)
    await producer.start()
    try:
        first = int(chunk["t"].min())  # type: ignore[arg-type]
        await producer.send_and_wait(
            topics.topology, encode_topology_message(first, wl.topology), key=DATACENTER_KEY
        )
        for i, s in enumerate(streams):
            if s.kind not in kinds:
                continue
            mine = chunk.filter(pl.col("stream") == i)
            records = [(k.encode(), v.encode()) for k, v in zip(mine["key"], mine["value"], strict=True)]
            await send_many(producer, by_kind[s.kind], records)
    finally:
        await producer.stop()


def late_carbon(wl: Path, minutes: int) -> int:
    """The workload's carbon feed starts ``minutes`` (and 7 s) after its first task: a first step there, then
    the trace's later steps; returns that first step (epoch ms)."""
    first = int(pl.read_parquet(wl / "tasks.parquet")["submission_time"].dt.epoch("ms").min())  # type: ignore[arg-type]
    start = first + minutes * 60_000 + 7_000
    carbon = pl.read_parquet(wl / "carbon.parquet")
    head = pl.DataFrame({"timestamp": [start], "carbon_intensity": [180.0]}).with_columns(
        pl.col("timestamp").cast(pl.Datetime("ms"))
    )
    later = carbon.filter(pl.col("timestamp").dt.epoch("ms") > start)
    pl.concat([head.cast(carbon.schema), later]).write_parquet(wl / "carbon.parquet")
    return start
