"""Write an OpenDC experiment directory (OPENDC_SEMANTICS §1–3) from a topology and normalized workload.

Layout (all paths in ``experiment.json`` are absolute, so the run does not depend on its working directory)::

    <dir>/experiment.json
    <dir>/topology.json            carbonTracePath made absolute
    <dir>/workload/tasks.parquet   OpenDC's strict read schema: REQUIRED columns, INT32 ids
    <dir>/workload/fragments.parquet
    <dir>/id_map.parquet           our task id (Utf8) → the INT32 id the simulator sees
    <dir>/output/<name>/...        written by the simulator

OpenDC aborts on a nullable REQUIRED column or an INT64 id (§3.1), so both files are written with pyarrow
and an explicit non-nullable schema. String task ids are mapped to INT32: ids that are all decimal integers
in INT32 range keep their value (so ``task.parquet`` shows the input ids), others are numbered 0..n-1 in
task order. Tasks are stably sorted by submission time, as OpenDT's producer does; fragment row order is
kept (it is the execution order within a task). Fragments of unknown tasks are dropped (OpenDC ignores them).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from opendt.models.topology import Topology
from opendt.workload import FRAGMENT_SCHEMA as FRAGMENT_FRAME
from opendt.workload import TASK_SCHEMA as TASK_FRAME

INT32_MAX = 2**31 - 1
DEFAULT_FILES: tuple[str, ...] = ("powerSource", "host", "task", "service")
ScalingPolicy = Literal["NoDelay", "Perfect"]

TASK_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("submission_time", pa.int64(), nullable=False),
        pa.field("duration", pa.int64(), nullable=False),
        pa.field("cpu_count", pa.int32(), nullable=False),
        pa.field("cpu_capacity", pa.float64(), nullable=False),
        pa.field("mem_capacity", pa.int64(), nullable=False),
    ]
)
FRAGMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("duration", pa.int64(), nullable=False),
        pa.field("cpu_count", pa.int32(), nullable=False),
        pa.field("cpu_usage", pa.float64(), nullable=False),
    ]
)

_TASK_COLS = dict(TASK_FRAME)
_FRAGMENT_COLS = {name: FRAGMENT_FRAME[name] for name in ("id", "duration", "cpu_usage")}


class ExperimentError(ValueError):
    """The inputs cannot be written as an OpenDC experiment; the message names the frame and column."""


@dataclass(frozen=True)
class ExperimentFiles:
    """Where an experiment was written, and how to find its output."""

    directory: Path
    name: str
    experiment_path: Path
    topology_path: Path
    workload_dir: Path
    output_folder: Path
    id_map: pl.DataFrame  # id (Utf8) → sim_id (Int32), one row per task written
    task_count: int
    fragment_count: int

    @property
    def run_dir(self) -> Path:
        """``<outputFolder>/<name>``: holds ``trackr.json`` and ``raw-output/``."""
        return self.output_folder / self.name

    @property
    def raw_output(self) -> Path:
        return self.run_dir / "raw-output" / "0" / "seed=0"


def _columns(df: pl.DataFrame, frame: str, spec: dict[str, Any]) -> pl.DataFrame:
    missing = [c for c in spec if c not in df.columns]
    if missing:
        raise ExperimentError(f"{frame}: missing column(s) {', '.join(missing)}")
    out = []
    for col, dtype in spec.items():
        try:
            out.append(df[col].cast(dtype, strict=True))
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as e:
            raise ExperimentError(f"{frame}.{col}: cannot convert {df[col].dtype} to {dtype}: {e}") from None
        nulls = out[-1].null_count()
        if nulls:
            raise ExperimentError(f"{frame}.{col}: {nulls} null value(s); OpenDC requires every value")
    return pl.DataFrame(out)


def map_task_ids(ids: pl.Series) -> pl.DataFrame:
    """Map our Utf8 task ids to OpenDC's INT32 ids: keep integer ids that fit, else number them in order."""
    if ids.n_unique() != ids.len():
        dupes = ids.filter(ids.is_duplicated()).unique().head(5).to_list()
        raise ExperimentError(f"tasks.id: duplicate task id(s), e.g. {dupes}")
    as_int = ids.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0 and (ids.len() == 0 or (as_int.min() >= 0 and as_int.max() <= INT32_MAX)):  # type: ignore[operator]
        sim = as_int.cast(pl.Int32)
        # "007" and "7" would both give 7; the uniqueness check on the result catches it.
        if sim.n_unique() == sim.len():
            return pl.DataFrame({"id": ids, "sim_id": sim})
    if ids.len() > INT32_MAX:
        raise ExperimentError("tasks: more tasks than INT32 ids")
    return pl.DataFrame({"id": ids, "sim_id": pl.int_range(0, ids.len(), dtype=pl.Int32, eager=True)})


def prepare_workload(tasks: pl.DataFrame, fragments: pl.DataFrame) -> tuple[pa.Table, pa.Table, pl.DataFrame]:
    """Turn normalized frames into OpenDC's tasks/fragments tables plus the id map (validated, no I/O)."""
    t = _columns(tasks, "tasks", _TASK_COLS)
    f_spec = dict(_FRAGMENT_COLS)
    if "cpu_count" in fragments.columns:
        f_spec["cpu_count"] = pl.Int32()
    f = _columns(fragments, "fragments", f_spec)
    for frame, df, cols in (
        ("tasks", t, ("submission_ms", "duration", "cpu_count", "mem_capacity")),
        ("fragments", f, ("duration",)),
    ):
        for col in cols:
            if df.height and df[col].min() < 0:  # type: ignore[operator]
                raise ExperimentError(f"{frame}.{col}: negative value(s)")
    t = t.sort("submission_ms", maintain_order=True)
    id_map = map_task_ids(t["id"])
    t = t.with_columns(sim_id=id_map["sim_id"])
    # Keep only fragments of known tasks, in their original row order; fill cpu_count from the task.
    f = f.with_row_index("_row").join(
        t.select("id", "sim_id", pl.col("cpu_count").alias("_task_cpus")), on="id", how="inner"
    )
    f = f.sort("_row")
    if "cpu_count" not in f.columns:
        f = f.with_columns(cpu_count=pl.col("_task_cpus"))
    if f.height == 0:
        raise ExperimentError("fragments: no fragment belongs to a task; OpenDC cannot run an empty workload")
    task_table = pa.Table.from_arrays(
        [
            t["sim_id"].to_arrow(),
            t["submission_ms"].to_arrow(),
            t["duration"].to_arrow(),
            t["cpu_count"].to_arrow(),
            t["cpu_capacity"].to_arrow(),
            t["mem_capacity"].to_arrow(),
        ],
        schema=TASK_SCHEMA,
    )
    frag_table = pa.Table.from_arrays(
        [
            f["sim_id"].to_arrow(),
            f["duration"].to_arrow(),
            f["cpu_count"].to_arrow(),
            f["cpu_usage"].to_arrow(),
        ],
        schema=FRAGMENT_SCHEMA,
    )
    return task_table, frag_table, id_map


def _topology_document(topology: Topology, carbon_path: Path | None, topology_base_dir: Path | None) -> Any:
    doc = topology.to_json_dict()
    for i, cluster in enumerate(doc["clusters"]):
        if carbon_path is not None:
            cluster.setdefault("powerSource", {})["carbonTracePath"] = str(carbon_path.resolve())
            continue
        ps = cluster.get("powerSource") or {}
        trace = ps.get("carbonTracePath")
        if trace is None:
            continue
        p = Path(trace)
        if not p.is_absolute():
            if topology_base_dir is None:
                raise ExperimentError(
                    f"topology.clusters[{i}].powerSource.carbonTracePath {trace!r} is relative; "
                    "pass carbon_path or topology_base_dir"
                )
            p = topology_base_dir / p
        if not p.exists():
            raise ExperimentError(f"topology.clusters[{i}].powerSource.carbonTracePath: {p} does not exist")
        ps["carbonTracePath"] = str(p.resolve())
    return doc


def write_experiment(
    directory: Path,
    topology: Topology,
    tasks: pl.DataFrame,
    fragments: pl.DataFrame,
    *,
    name: str = "opendt",
    export_interval_s: int = 150,
    carbon_path: Path | None = None,
    topology_base_dir: Path | None = None,
    scaling_policy: ScalingPolicy = "NoDelay",
    files_to_export: Sequence[str] = DEFAULT_FILES,
) -> ExperimentFiles:
    """Write ``experiment.json``, ``topology.json`` and the workload into ``directory`` (blocking I/O).

    ``carbon_path`` (when given) becomes every cluster's ``carbonTracePath``; otherwise the topology's own
    paths are kept, made absolute against ``topology_base_dir`` and checked to exist. A previous output of
    the same ``name`` in ``directory`` is removed, so the result never mixes two runs.
    """
    if export_interval_s <= 0:
        raise ExperimentError("export_interval_s must be > 0")
    if not name or "/" in name or name in (".", ".."):
        raise ExperimentError(f"invalid experiment name {name!r}")
    unknown = set(files_to_export) - {"powerSource", "host", "task", "service", "battery"}
    if unknown or "powerSource" not in files_to_export:
        raise ExperimentError(f"files_to_export must include powerSource and only OpenDC files: {unknown}")
    task_table, frag_table, id_map = prepare_workload(tasks, fragments)
    topo_doc = _topology_document(topology, carbon_path, topology_base_dir)

    directory = directory.resolve()
    workload_dir = directory / "workload"
    output_folder = directory / "output"
    workload_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(output_folder / name, ignore_errors=True)
    output_folder.mkdir(parents=True, exist_ok=True)

    pq.write_table(task_table, workload_dir / "tasks.parquet", compression="snappy")
    pq.write_table(frag_table, workload_dir / "fragments.parquet", compression="snappy")
    id_map.write_parquet(directory / "id_map.parquet")
    topology_path = directory / "topology.json"
    topology_path.write_text(json.dumps(topo_doc, indent=2), encoding="utf-8")
    experiment = {
        "name": name,
        "topologies": [{"pathToFile": str(topology_path)}],
        "workloads": [
            {"pathToFile": str(workload_dir), "type": "ComputeWorkload", "scalingPolicy": scaling_policy}
        ],
        "outputFolder": str(output_folder),
        "exportModels": [{"exportInterval": export_interval_s, "filesToExport": list(files_to_export)}],
    }
    experiment_path = directory / "experiment.json"
    experiment_path.write_text(json.dumps(experiment, indent=2), encoding="utf-8")
    return ExperimentFiles(
        directory=directory,
        name=name,
        experiment_path=experiment_path,
        topology_path=topology_path,
        workload_dir=workload_dir,
        output_folder=output_folder,
        id_map=id_map,
        task_count=task_table.num_rows,
        fragment_count=frag_table.num_rows,
    )
