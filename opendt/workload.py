"""Read a SURF-format workload directory (DESIGN §3) into typed polars frames, with validation.

Normalized schema (what every other component consumes):

* tasks: ``id`` Utf8, ``submission_ms`` Int64 (epoch ms, UTC), ``duration`` Int64 (ms), ``cpu_count`` Int32,
  ``cpu_capacity`` Float64 (MHz), ``mem_capacity`` Int64 (MB); file order kept.
* fragments: ``id`` Utf8, ``duration`` Int64, ``cpu_count`` Int32, ``cpu_usage`` Float64 (MHz, whole task),
  ``index`` Int32 (order within the task), ``submission_ms`` Int64 (synthesized, DESIGN §4); file order kept.
* consumption: ``timestamp_ms`` Int64 (epoch ms), ``power_draw`` Float64 (W), ``energy_usage`` Float64 (J).
* carbon: ``timestamp_ms`` Int64 (epoch ms), ``carbon_intensity`` Float64 (gCO2/kWh), sorted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from opendt.models.topology import Topology, TopologyError, load_topology

TASK_SCHEMA = pl.Schema(
    {
        "id": pl.Utf8(),
        "submission_ms": pl.Int64(),
        "duration": pl.Int64(),
        "cpu_count": pl.Int32(),
        "cpu_capacity": pl.Float64(),
        "mem_capacity": pl.Int64(),
    }
)
"""The normalized tasks frame (see the module docstring)."""
FRAGMENT_SCHEMA = pl.Schema(
    {
        "id": pl.Utf8(),
        "submission_ms": pl.Int64(),
        "duration": pl.Int64(),
        "cpu_count": pl.Int32(),
        "cpu_usage": pl.Float64(),
        "index": pl.Int32(),
    }
)
"""The normalized fragments frame, columns in the order of a fragment row tuple."""
CARBON_SCHEMA = pl.Schema({"timestamp_ms": pl.Int64(), "carbon_intensity": pl.Float64()})
"""The normalized carbon-intensity steps (epoch ms, gCO2/kWh), as the engine reads them."""


def carbon_frame(steps: Sequence[tuple[int, float]]) -> pl.DataFrame:
    """Carbon-intensity steps (``CarbonRow`` tuples) as a ``CARBON_SCHEMA`` frame."""
    return pl.DataFrame(steps, schema=CARBON_SCHEMA, orient="row")


class WorkloadError(ValueError):
    """An unusable workload file; the message names the file and the column."""


@dataclass(frozen=True)
class WorkloadMeta:
    name: str
    description: str = ""
    consumption_offset_ms: int = 0


@dataclass(frozen=True)
class Workload:
    path: Path
    meta: WorkloadMeta
    tasks: pl.DataFrame
    fragments: pl.DataFrame
    topology: Topology
    consumption: pl.DataFrame | None
    carbon: pl.DataFrame | None
    origin_ms: int
    """Earliest submission among the tasks that have fragments (OpenDC's T0)."""

    @property
    def end_ms(self) -> int:
        """Latest trace time of any event (task submission, fragment end, power sample)."""
        ends = [int(self.tasks["submission_ms"].max() or 0)]  # type: ignore[arg-type]
        if self.fragments.height:
            ends.append(int((self.fragments["submission_ms"] + self.fragments["duration"]).max()))  # type: ignore[arg-type]
        if self.consumption is not None and self.consumption.height:
            ends.append(int(self.consumption["timestamp_ms"].max()))  # type: ignore[arg-type]
        return max(ends)


_INT = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_NUM = (*_INT, pl.Float32, pl.Float64)


def _need(df: pl.DataFrame, file: str, columns: dict[str, tuple[Any, ...] | str]) -> None:
    for col, kinds in columns.items():
        if col not in df.columns:
            raise WorkloadError(f"{file}: missing column {col!r} (has: {', '.join(df.columns)})")
        dtype = df.schema[col]
        if kinds == "id":
            ok = dtype == pl.Utf8 or isinstance(dtype, _INT)
        elif kinds == "time":
            ok = isinstance(dtype, (pl.Datetime, *_INT))
        else:
            ok = isinstance(dtype, kinds)  # type: ignore[arg-type]
        if not ok:
            raise WorkloadError(f"{file}: column {col!r} has type {dtype}, expected {kinds}")
        nulls = df[col].null_count()
        if nulls:
            raise WorkloadError(f"{file}: column {col!r} has {nulls} null value(s)")


def _non_negative(df: pl.DataFrame, file: str, cols: list[str]) -> None:
    for col in cols:
        bad = df.select((pl.col(col) < 0).sum()).item()
        if bad:
            first = df.filter(pl.col(col) < 0).row(0, named=True)
            raise WorkloadError(f"{file}: column {col!r} has {bad} negative value(s), first: {first}")


def _time_to_ms(df: pl.DataFrame, col: str, out: str) -> pl.DataFrame:
    dtype = df.schema[col]
    if isinstance(dtype, pl.Datetime):
        expr = pl.col(col)
        if dtype.time_zone is not None:
            expr = expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return df.with_columns(expr.dt.epoch("ms").cast(pl.Int64).alias(out))
    return df.with_columns(pl.col(col).cast(pl.Int64).alias(out))


def _read(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except FileNotFoundError:
        raise WorkloadError(f"{path.name}: file not found in {path.parent}") from None
    except Exception as e:  # noqa: BLE001 - polars raises several error types for corrupt files
        raise WorkloadError(f"{path.name}: cannot read parquet: {e}") from None


def normalize_tasks(df: pl.DataFrame, file: str = "tasks.parquet") -> pl.DataFrame:
    _need(
        df,
        file,
        {
            "id": "id",
            "submission_time": "time",
            "duration": _INT,
            "cpu_count": _INT,
            "cpu_capacity": _NUM,
            "mem_capacity": _NUM,
        },
    )
    _non_negative(df, file, ["duration", "cpu_capacity", "mem_capacity"])
    bad_cores = df.select((pl.col("cpu_count") <= 0).sum()).item()
    if bad_cores:
        raise WorkloadError(f"{file}: column 'cpu_count' has {bad_cores} value(s) <= 0")
    df = _time_to_ms(df, "submission_time", "submission_ms")
    out = df.select(
        pl.col("id").cast(pl.Utf8),
        pl.col("submission_ms"),
        pl.col("duration").cast(pl.Int64),
        pl.col("cpu_count").cast(pl.Int32),
        pl.col("cpu_capacity").cast(pl.Float64),
        pl.col("mem_capacity").cast(pl.Int64),
    )
    dup = out.height - out["id"].n_unique()
    if dup:
        first = out.filter(pl.col("id").is_duplicated())["id"][0]
        raise WorkloadError(f"{file}: column 'id' has {dup} duplicate task id(s), first: {first!r}")
    return out


def normalize_fragments(df: pl.DataFrame, file: str = "fragments.parquet") -> pl.DataFrame:
    cols: dict[str, tuple[Any, ...] | str] = {"id": "id", "duration": _INT, "cpu_usage": _NUM}
    _need(df, file, cols)
    if "cpu_count" in df.columns:
        _need(df, file, {"cpu_count": _INT})
    _non_negative(df, file, ["duration", "cpu_usage"])
    return df.select(
        pl.col("id").cast(pl.Utf8),
        pl.col("duration").cast(pl.Int64),
        (pl.col("cpu_count").cast(pl.Int32) if "cpu_count" in df.columns else pl.lit(1, pl.Int32)).alias(
            "cpu_count"
        ),
        pl.col("cpu_usage").cast(pl.Float64),
    )


def synthesize_fragment_times(tasks: pl.DataFrame, fragments: pl.DataFrame) -> pl.DataFrame:
    """Add ``index`` and ``submission_ms`` to fragments (DESIGN §4).

    Fragment k of a task starts at the task's submission + d0 + … + d(k-1), in file row order. Vectorized:
    ids are mapped to dense task numbers by one join, then one stable sort (skipped when the file is already
    grouped in task order) and one cumulative sum. Fragments of unknown tasks raise :class:`WorkloadError`.
    """
    ids = tasks.select("id", "submission_ms", pl.int_range(pl.len(), dtype=pl.Int32).alias("_t"))
    joined = fragments.join(ids, on="id", how="left", maintain_order="left")
    unknown = joined["_t"].null_count()
    if unknown:
        first = joined.filter(pl.col("_t").is_null())["id"][0]
        raise WorkloadError(
            f"fragments.parquet: column 'id' has {unknown} fragment(s) of unknown tasks, first: {first!r}"
        )
    group = joined["_t"].to_numpy()
    dur = joined["duration"].to_numpy()
    n = len(group)
    if n == 0:
        return joined.with_columns(pl.lit(0, pl.Int32).alias("index")).drop("_t")
    grouped = bool(np.all(group[1:] >= group[:-1]))
    order = None if grouped else np.argsort(group, kind="stable")
    g = group if order is None else group[order]
    d = dur if order is None else dur[order]
    ends = np.cumsum(d)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, n])
    offset = ends - d - np.repeat(ends[starts] - d[starts], sizes)
    index = np.arange(n) - np.repeat(starts, sizes)
    if order is not None:
        offset[order] = offset.copy()
        index[order] = index.copy()
    return joined.with_columns(
        (pl.col("submission_ms") + pl.Series(offset)).alias("submission_ms"),
        pl.Series("index", index.astype(np.int32)),
    ).drop("_t")


def normalize_consumption(df: pl.DataFrame, origin_ms: int, offset_ms: int) -> pl.DataFrame:
    file = "consumption.parquet"
    _need(df, file, {"timestamp": "time", "power_draw": _NUM})
    if isinstance(df.schema["timestamp"], pl.Datetime):
        df = _time_to_ms(df, "timestamp", "timestamp_ms")
    else:  # relative ms since the first task submission (+ offset), DESIGN §3
        df = df.with_columns(
            (pl.col("timestamp").cast(pl.Int64) + origin_ms + offset_ms).alias("timestamp_ms")
        )
    energy = (
        pl.col("energy_usage").cast(pl.Float64) if "energy_usage" in df.columns else pl.lit(None, pl.Float64)
    )
    _non_negative(df, file, ["power_draw"])
    return df.select(
        pl.col("timestamp_ms"), pl.col("power_draw").cast(pl.Float64), energy.alias("energy_usage")
    ).sort("timestamp_ms", maintain_order=True)


def normalize_carbon(df: pl.DataFrame, file: str = "carbon.parquet") -> pl.DataFrame:
    _need(df, file, {"timestamp": "time", "carbon_intensity": _NUM})
    df = _time_to_ms(df, "timestamp", "timestamp_ms")
    return df.select(pl.col("timestamp_ms"), pl.col("carbon_intensity").cast(pl.Float64)).sort(
        "timestamp_ms", maintain_order=True
    )


def read_meta(path: Path) -> WorkloadMeta:
    f = path / "workload.yaml"
    if not f.exists():
        return WorkloadMeta(name=path.name)
    try:
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise WorkloadError(f"workload.yaml: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise WorkloadError("workload.yaml: must be a mapping")
    ts = data.get("timestamps") or {}
    if not isinstance(ts, dict):
        raise WorkloadError("workload.yaml: 'timestamps' must be a mapping")
    offset = ts.get("consumption_offset_ms", 0)
    if not isinstance(offset, int):
        raise WorkloadError("workload.yaml: timestamps.consumption_offset_ms must be an integer")
    return WorkloadMeta(
        name=str(data.get("name", path.name)),
        description=str(data.get("description", "")),
        consumption_offset_ms=offset,
    )


def resolve_carbon_path(
    topology: Topology, workload_dir: Path, topology_file: Path | str = "topology.json"
) -> Path | None:
    """The carbon trace of the (first) power source: relative paths resolve against the workload dir (also
    for a topology read from another file: ``opendt simulate --topology FILE``).

    An absolute path that does not exist here (SURF's topology says ``/app/workload/carbon.parquet``, a
    container path) falls back to the file of the same name in the workload dir, when there is one. The error
    names ``topology_file``, the file that holds the path.
    """
    for cluster in topology.clusters:
        p = cluster.powerSource.carbonTracePath
        if p is None:
            continue
        cand = Path(p)
        if not cand.is_absolute():
            cand = workload_dir / cand
        if cand.exists():
            return cand
        local = workload_dir / Path(p).name
        if local.exists():
            return local
        raise WorkloadError(
            f"{topology_file}: carbonTracePath {p!r} not found (relative paths resolve against the workload "
            f"directory {workload_dir}; nor is there {local})"
        )
    return None


def load_workload(path: Path | str, *, topology_path: Path | None = None) -> Workload:
    """Load and validate a SURF-format directory. Raises :class:`WorkloadError` naming file and column."""
    path = Path(path)
    if not path.is_dir():
        raise WorkloadError(f"workload directory not found: {path}")
    meta = read_meta(path)
    tasks = normalize_tasks(_read(path / "tasks.parquet"))
    fragments = synthesize_fragment_times(tasks, normalize_fragments(_read(path / "fragments.parquet")))
    try:
        topology = load_topology(topology_path or path / "topology.json")
    except TopologyError as e:
        raise WorkloadError(str(e)) from None
    loaded = tasks.join(fragments.select(pl.col("id").unique()), on="id", how="semi")
    if loaded.height == 0:
        raise WorkloadError("fragments.parquet: no task has any fragment; nothing to simulate")
    origin = int(loaded["submission_ms"].min())  # type: ignore[arg-type]
    consumption = None
    if (path / "consumption.parquet").exists():
        consumption = normalize_consumption(
            _read(path / "consumption.parquet"), origin, meta.consumption_offset_ms
        )
    carbon = None
    carbon_path = resolve_carbon_path(topology, path, topology_path or "topology.json")
    if carbon_path is None and (path / "carbon.parquet").exists():
        carbon_path = path / "carbon.parquet"
    if carbon_path is not None:
        carbon = normalize_carbon(_read(carbon_path), carbon_path.name)
    return Workload(
        path=path,
        meta=meta,
        tasks=tasks,
        fragments=fragments,
        topology=topology,
        consumption=consumption,
        carbon=carbon,
        origin_ms=origin,
    )
