"""The OpenDC experiment writer: strict parquet schema, id mapping, experiment.json, topology paths."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opendt.models.topology import parse_topology
from opendt.opendc.experiment import ExperimentError, map_task_ids, write_experiment

TOPOLOGY = {
    "clusters": [
        {
            "name": "C01",
            "hosts": [
                {
                    "name": "H01",
                    "count": 2,
                    "cpu": {"coreCount": 8, "coreSpeed": 2000},
                    "memory": {"memorySize": 128000000},
                    "cpuPowerModel": {"modelType": "linear", "idlePower": 100.0, "maxPower": 200.0},
                }
            ],
        }
    ]
}


def frames(ids: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    n = len(ids)
    tasks = pl.DataFrame(
        {
            "id": ids,
            "submission_ms": [1_700_000_000_000 + 1000 * ((n - i) % 3) for i in range(n)],
            "duration": [60_000] * n,
            "cpu_count": pl.Series([4] * n, dtype=pl.Int32),
            "cpu_capacity": [8000.0] * n,
            "mem_capacity": [100_000] * n,
        }
    )
    fragments = pl.DataFrame(
        {
            "id": [ids[i // 2] for i in range(2 * n)],
            "duration": [30_000] * (2 * n),
            "cpu_count": pl.Series([4] * (2 * n), dtype=pl.Int32),
            "cpu_usage": [float(i) for i in range(2 * n)],
        }
    )
    return tasks, fragments


def test_parquet_schema_is_opendc_strict(tmp_path: Path) -> None:
    """tasks/fragments parquet have OpenDC's physical types and no nullable column."""
    tasks, fragments = frames(["a", "b", "c"])
    exp = write_experiment(tmp_path, parse_topology(TOPOLOGY), tasks, fragments, export_interval_s=30)
    ts = pq.read_schema(exp.workload_dir / "tasks.parquet")
    fs = pq.read_schema(exp.workload_dir / "fragments.parquet")
    assert [(f.name, f.type, f.nullable) for f in ts] == [
        ("id", pa.int32(), False),
        ("submission_time", pa.int64(), False),
        ("duration", pa.int64(), False),
        ("cpu_count", pa.int32(), False),
        ("cpu_capacity", pa.float64(), False),
        ("mem_capacity", pa.int64(), False),
    ]
    assert [(f.name, f.type, f.nullable) for f in fs] == [
        ("id", pa.int32(), False),
        ("duration", pa.int64(), False),
        ("cpu_count", pa.int32(), False),
        ("cpu_usage", pa.float64(), False),
    ]
    # The parquet-level repetition is REQUIRED, which is what parquet-mr checks.
    for name in ("tasks", "fragments"):
        schema = pq.ParquetFile(exp.workload_dir / f"{name}.parquet").schema
        assert all(schema.column(i).max_definition_level == 0 for i in range(len(schema)))
        assert schema.column(0).physical_type == "INT32"


def test_string_ids_are_mapped_and_order_kept(tmp_path: Path) -> None:
    """String ids become 0..n-1 in submission order; fragments keep their row order and get the new ids."""
    tasks, fragments = frames(["x", "y", "z"])
    exp = write_experiment(tmp_path, parse_topology(TOPOLOGY), tasks, fragments)
    t = pl.read_parquet(exp.workload_dir / "tasks.parquet")
    f = pl.read_parquet(exp.workload_dir / "fragments.parquet")
    # submissions: x=+0 s, y=+2 s, z=+1 s → stable sort x, z, y
    assert exp.id_map.to_dict(as_series=False) == {"id": ["x", "z", "y"], "sim_id": [0, 1, 2]}
    assert t["id"].to_list() == [0, 1, 2]
    assert t["submission_time"].is_sorted()
    assert f["id"].to_list() == [0, 0, 2, 2, 1, 1]
    assert f["cpu_usage"].to_list() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    saved = pl.read_parquet(exp.directory / "id_map.parquet")
    assert saved.equals(exp.id_map)


def test_integer_ids_keep_their_value() -> None:
    """Decimal ids within INT32 keep their value; out-of-range or clashing ones are renumbered."""
    assert map_task_ids(pl.Series(["10", "3"]))["sim_id"].to_list() == [10, 3]
    assert map_task_ids(pl.Series(["3000000000", "1"]))["sim_id"].to_list() == [0, 1]
    assert map_task_ids(pl.Series(["007", "7"]))["sim_id"].to_list() == [0, 1]
    with pytest.raises(ExperimentError, match="duplicate"):
        map_task_ids(pl.Series(["a", "a"]))


def test_experiment_json_contract(tmp_path: Path) -> None:
    """experiment.json holds exactly the keys OpenDC accepts, with absolute paths and the interval in s."""
    tasks, fragments = frames(["1", "2"])
    exp = write_experiment(
        tmp_path, parse_topology(TOPOLOGY), tasks, fragments, name="w42", export_interval_s=300
    )
    doc = json.loads(exp.experiment_path.read_text())
    assert doc == {
        "name": "w42",
        "topologies": [{"pathToFile": str(exp.topology_path)}],
        "workloads": [
            {"pathToFile": str(exp.workload_dir), "type": "ComputeWorkload", "scalingPolicy": "NoDelay"}
        ],
        "outputFolder": str(exp.output_folder),
        "exportModels": [
            {"exportInterval": 300, "filesToExport": ["powerSource", "host", "task", "service"]}
        ],
    }
    assert Path(doc["outputFolder"]).is_absolute()
    assert exp.raw_output == exp.output_folder / "w42" / "raw-output" / "0" / "seed=0"
    assert json.loads(exp.topology_path.read_text()) == TOPOLOGY


def test_carbon_path_made_absolute(tmp_path: Path) -> None:
    """A given carbon trace becomes an absolute carbonTracePath; a relative one resolves or fails clearly."""
    carbon = tmp_path / "in" / "carbon.parquet"
    carbon.parent.mkdir()
    pl.DataFrame({"timestamp": [0], "carbon_intensity": [100.0]}).write_parquet(carbon)
    tasks, fragments = frames(["1"])
    exp = write_experiment(tmp_path / "a", parse_topology(TOPOLOGY), tasks, fragments, carbon_path=carbon)
    ps = json.loads(exp.topology_path.read_text())["clusters"][0]["powerSource"]
    assert ps == {"carbonTracePath": str(carbon.resolve())}

    rel = {"clusters": [{**TOPOLOGY["clusters"][0], "powerSource": {"carbonTracePath": "carbon.parquet"}}]}
    exp = write_experiment(
        tmp_path / "b", parse_topology(rel), tasks, fragments, topology_base_dir=carbon.parent
    )
    ps = json.loads(exp.topology_path.read_text())["clusters"][0]["powerSource"]
    assert ps["carbonTracePath"] == str(carbon.resolve())
    with pytest.raises(ExperimentError, match="carbonTracePath"):
        write_experiment(tmp_path / "c", parse_topology(rel), tasks, fragments)
    with pytest.raises(ExperimentError, match="does not exist"):
        write_experiment(tmp_path / "d", parse_topology(rel), tasks, fragments, topology_base_dir=tmp_path)


def test_invalid_inputs_name_the_column(tmp_path: Path) -> None:
    """Nulls, missing columns and an empty effective workload are refused with the column named."""
    tasks, fragments = frames(["1", "2"])
    topo = parse_topology(TOPOLOGY)
    with pytest.raises(ExperimentError, match=r"tasks\.cpu_capacity: 1 null"):
        write_experiment(tmp_path, topo, tasks.with_columns(cpu_capacity=pl.Series([1.0, None])), fragments)
    with pytest.raises(ExperimentError, match=r"missing column.*mem_capacity"):
        write_experiment(tmp_path, topo, tasks.drop("mem_capacity"), fragments)
    with pytest.raises(ExperimentError, match="no fragment belongs"):
        write_experiment(tmp_path, topo, tasks, fragments.with_columns(id=pl.lit("other")))
    with pytest.raises(ExperimentError, match=r"fragments\.duration: negative"):
        write_experiment(tmp_path, topo, tasks, fragments.with_columns(duration=pl.lit(-1, dtype=pl.Int64)))


def test_fragments_without_cpu_count_take_the_tasks(tmp_path: Path) -> None:
    """A fragments frame without cpu_count gets its task's cpu_count; unknown task fragments are dropped."""
    tasks, fragments = frames(["1", "2"])
    extra = pl.DataFrame({"id": ["9"], "duration": [1], "cpu_usage": [1.0]})
    frag = pl.concat([fragments.drop("cpu_count"), extra])
    exp = write_experiment(tmp_path, parse_topology(TOPOLOGY), tasks, frag)
    f = pl.read_parquet(exp.workload_dir / "fragments.parquet")
    assert f["cpu_count"].to_list() == [4, 4, 4, 4]
    assert exp.fragment_count == 4
    assert 9 not in f["id"].to_list()
