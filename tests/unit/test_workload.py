"""Workload I/O: schema validation with clear errors, fragment-time synthesis, SURF."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from opendt.settings import REPO_ROOT
from opendt.workload import (
    WorkloadError,
    load_workload,
    normalize_fragments,
    normalize_tasks,
    synthesize_fragment_times,
)

TOPO = {
    "clusters": [{"hosts": [{"cpu": {"coreCount": 8, "coreSpeed": 2000}, "memory": {"memorySize": 1000}}]}]
}


def _tasks(**over: object) -> pl.DataFrame:
    cols: dict[str, object] = {
        "id": ["a", "b"],
        "submission_time": [datetime(2024, 1, 1, 0, 0, 0), datetime(2024, 1, 1, 0, 1, 0)],
        "duration": [60_000, 30_000],
        "cpu_count": [4, 8],
        "cpu_capacity": [8000.0, 16000.0],
        "mem_capacity": [1000, 2000],
    }
    cols.update(over)
    return pl.DataFrame(cols)


def _fragments(**over: object) -> pl.DataFrame:
    cols: dict[str, object] = {
        "id": ["a", "b", "a", "b", "a"],
        "duration": [10_000, 5_000, 20_000, 7_000, 30_000],
        "cpu_count": [4, 8, 4, 8, 4],
        "cpu_usage": [100.0, 200.0, 300.0, 400.0, 500.0],
    }
    cols.update(over)
    return pl.DataFrame(cols)


def _write(tmp: Path, tasks: pl.DataFrame, fragments: pl.DataFrame, topo: object = TOPO) -> Path:
    tasks.write_parquet(tmp / "tasks.parquet")
    fragments.write_parquet(tmp / "fragments.parquet")
    (tmp / "topology.json").write_text(json.dumps(topo))
    return tmp


def test_synthesis_follows_row_order_within_each_task() -> None:
    """Fragment k starts at submission + d0 + … + d(k-1), even when tasks' rows interleave."""
    tasks = normalize_tasks(_tasks())
    frags = synthesize_fragment_times(tasks, normalize_fragments(_fragments()))
    t0 = 1704067200000  # 2024-01-01T00:00:00Z
    assert frags["index"].to_list() == [0, 0, 1, 1, 2]
    assert frags["submission_ms"].to_list() == [t0, t0 + 60_000, t0 + 10_000, t0 + 65_000, t0 + 30_000]
    assert frags["id"].to_list() == ["a", "b", "a", "b", "a"]


def test_integer_ids_and_epoch_ms_are_accepted() -> None:
    """Integer ids become strings; integer submission times are epoch ms."""
    tasks = normalize_tasks(_tasks(id=[1, 2], submission_time=[1_000, 2_000]))
    assert tasks["id"].to_list() == ["1", "2"]
    assert tasks["submission_ms"].to_list() == [1_000, 2_000]


def test_load_small_directory(tmp_path: Path) -> None:
    """A minimal directory loads; origin is the first task that has fragments."""
    tasks = _tasks(
        id=["a", "b", "c"],
        submission_time=[datetime(2023, 12, 31), datetime(2024, 1, 1), datetime(2024, 1, 2)],
        duration=[1, 1, 1],
        cpu_count=[1, 1, 1],
        cpu_capacity=[1.0, 1.0, 1.0],
        mem_capacity=[1, 1, 1],
    )
    w = load_workload(_write(tmp_path, tasks, _fragments(id=["b", "c", "b", "c", "b"])))
    assert w.tasks.height == 3
    assert w.origin_ms == 1704067200000
    assert w.meta.name == tmp_path.name
    assert w.consumption is None
    assert w.carbon is None


@pytest.mark.parametrize(
    ("tasks", "fragments", "needle"),
    [
        (_tasks().drop("cpu_count"), _fragments(), r"tasks.parquet: missing column 'cpu_count'"),
        (_tasks(duration=["x", "y"]), _fragments(), r"tasks.parquet: column 'duration' has type String"),
        (_tasks(duration=[-1, 5]), _fragments(), r"tasks.parquet: column 'duration' has 1 negative"),
        (_tasks(cpu_count=[0, 4]), _fragments(), r"tasks.parquet: column 'cpu_count' has 1 value\(s\) <= 0"),
        (_tasks(id=["a", "a"]), _fragments(), r"tasks.parquet: column 'id' has 1 duplicate"),
        (_tasks(mem_capacity=[None, 1]), _fragments(), r"tasks.parquet: column 'mem_capacity' has 1 null"),
        (_tasks(), _fragments().drop("cpu_usage"), r"fragments.parquet: missing column 'cpu_usage'"),
        (
            _tasks(),
            _fragments(duration=[1, 2, -3, 4, 5]),
            r"fragments.parquet: column 'duration' has 1 negative",
        ),
        (
            _tasks(),
            _fragments(id=["a", "b", "zz", "b", "a"]),
            r"fragments.parquet: column 'id' has 1 fragment\(s\) of unknown tasks, first: 'zz'",
        ),
    ],
)
def test_invalid_files_name_file_and_column(
    tmp_path: Path, tasks: pl.DataFrame, fragments: pl.DataFrame, needle: str
) -> None:
    """Invalid workload files give one clear error naming file and column."""
    with pytest.raises(WorkloadError, match=needle) as ei:
        load_workload(_write(tmp_path, tasks, fragments))
    assert "\n" not in str(ei.value)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    """Missing directory, missing file, corrupt parquet and a bad topology are named."""
    with pytest.raises(WorkloadError, match="directory not found"):
        load_workload(tmp_path / "nope")
    _write(tmp_path, _tasks(), _fragments())
    (tmp_path / "fragments.parquet").write_bytes(b"garbage")
    with pytest.raises(WorkloadError, match=r"fragments\.parquet: cannot read parquet"):
        load_workload(tmp_path)
    (tmp_path / "fragments.parquet").unlink()
    with pytest.raises(WorkloadError, match=r"fragments\.parquet: file not found"):
        load_workload(tmp_path)
    _write(tmp_path, _tasks(), _fragments(), topo={"clusters": [{"hosts": [{"cpu": {}}]}]})
    with pytest.raises(WorkloadError, match="invalid topology"):
        load_workload(tmp_path)


def test_surf_loads_with_synthesized_times() -> None:
    """SURF (data/surf): 7,850 tasks, 2,323,475 fragments; times synthesized; power and carbon on epoch ms."""
    w = load_workload(REPO_ROOT / "data" / "surf")
    assert w.tasks.height == 7850
    assert w.fragments.height == 2_323_475
    assert w.origin_ms == 1665093600000
    first = w.fragments.filter(pl.col("id") == "2132819").head(3)
    assert first["submission_ms"].diff().drop_nulls().to_list() == [30_000, 30_000]
    assert first["index"].to_list() == [0, 1, 2]
    # every task's first fragment starts at its submission
    starts = w.fragments.filter(pl.col("index") == 0).join(w.tasks, on="id", suffix="_task")
    assert (starts["submission_ms"] == starts["submission_ms_task"]).all()
    assert w.consumption is not None
    assert w.consumption["timestamp_ms"][0] == w.origin_ms + 30_000
    assert w.carbon is not None
    assert w.carbon.height == 34944
    assert w.end_ms >= 1665698400000


def test_surf_files_are_the_ones_source_md_names() -> None:
    """data/surf ships the SURF week unchanged: every file's sha256 is the one data/surf/SOURCE.md lists."""
    surf = REPO_ROOT / "data" / "surf"
    text = (surf / "SOURCE.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| `([\w.]+)` \|.*\| `([0-9a-f]{64})` \|$", text, re.MULTILINE))
    files = {p.name for p in surf.iterdir() if p.name != "SOURCE.md"}
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((surf / name).read_bytes()).hexdigest() == digest, name
