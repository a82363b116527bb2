"""``python -m opendt.engine --experiment-path X.json``: OpenDC's CLI contract (DESIGN §7).

Start-up matters here (a SURF week takes well under a second), so the CLI imports neither polars nor, for
plain topology files, pydantic: inputs are read with pyarrow into numpy arrays (workload.py), ingested and
dropped before the run (simulate.py), and each output table is written with pyarrow as soon as it is
built, on a background thread while the next one is computed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.parquet as pq

    from .experiment import Experiment, Scenario
    from .simulate import OneShot
    from .table import Table

FLOAT32 = {
    "powerSource": ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission"),
}
NON_NULL_EXCEPT = {
    "host": {"boot_time"},
    "task": {
        "gpu_count",
        "gpu_limit",
        "gpu_usage",
        "gpu_demand",
        "gpu_time_active",
        "gpu_time_idle",
        "gpu_time_steal",
        "gpu_time_lost",
        "schedule_time",
        "submission_time",
        "finish_time",
        "task_state",
    },
}


class ParquetOutput:
    """One output file as OpenDC writes it: ZSTD parquet with OpenDC's types and nullability.

    Tables are appended as row groups. String columns are dictionary arrays written without the Arrow
    schema, so readers see plain strings (as in OpenDC's files). For write speed (the host table of a SURF
    week has 1.1M rows), only strings are dictionary-encoded and only the timestamps carry statistics; the
    values are the same, the files a little larger than OpenDC's.
    """

    def __init__(self, path: Path, kind: str, *, float64: bool = False) -> None:
        self.path = path
        self.float32 = frozenset(() if float64 else FLOAT32.get(kind, ()))
        self.nullable = frozenset(NON_NULL_EXCEPT.get(kind, ()))
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: Table) -> None:
        import pyarrow.parquet as pq

        from .table import Col, to_arrow

        f32 = self.float32
        table = {k: Col("f32", c.values, c.labels, c.valid) if k in f32 else c for k, c in table.items()}
        arrow = to_arrow(table, nullable=self.nullable)
        if self.writer is None:
            strings = [k for k, c in table.items() if c.kind == "str"]
            self.writer = pq.ParquetWriter(
                self.path,
                arrow.schema,
                compression="zstd",
                store_schema=False,
                use_dictionary=strings,
                write_statistics=[k for k in ("timestamp", "timestamp_absolute") if k in table],
            )
        self.writer.write_table(arrow)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_table(table: Table, path: Path, kind: str) -> None:
    """Write one output table to ``path`` (see :class:`ParquetOutput`)."""
    out = ParquetOutput(path, kind)
    out.write(table)
    out.close()


def run_scenario(sc: Scenario) -> OneShot:
    """Load the scenario's workload and simulate it."""
    from .frames import InputError
    from .simulate import merge_fragments, one_shot_engine, run_one_shot
    from .workload import read_workload

    w = sc.workload
    scaling = w.get("scalingPolicy", "NoDelay")
    eng = one_shot_engine(
        sc.spec,
        export_interval_ms=sc.interval_ms,
        scaling=scaling,
        carbon_by_cluster=sc.carbon,
        tables=frozenset(sc.files),
    )
    tasks, fragments = read_workload(Path(w["pathToFile"]), submission_time=w.get("submissionTime"))
    eng.ingest(tasks, fragments, merge=merge_fragments(scaling))
    del tasks, fragments  # the engine keeps what it needs: free the inputs before the run
    if eng.t0 is None:  # no task was loaded: none has a fragment
        raise InputError(f"workload {w['pathToFile']} has no task with fragments (OpenDC crashes on it)")
    return run_one_shot(eng, scaling)


def run(path: Path, *, float64: bool = False) -> None:
    """Run every scenario and seed of the experiment and write OpenDC's output tree (``float64``: the
    powerSource values unrounded, where OpenDC stores float32)."""
    from .experiment import read_experiment, trackr_entry

    exp = read_experiment(path)
    base = exp.output_folder / exp.name
    for sub in ("power_draw", "carbon_emission"):
        (base / "simulation-analysis" / sub).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet") as pool:
        for sc in exp.scenarios:
            _write_scenario(exp, sc, pool, base, float64=float64)
    trackr = [trackr_entry(exp, sc) for sc in exp.scenarios]
    (base / "trackr.json").write_text(json.dumps(trackr, indent=4), encoding="utf-8")


def _write_scenario(
    exp: Experiment, sc: Scenario, pool: ThreadPoolExecutor, base: Path, *, float64: bool = False
) -> None:
    """Simulate, then build and write one table at a time (the writer thread overlaps the next build)."""
    result = run_scenario(sc)
    outs = [base / "raw-output" / str(sc.index) / f"seed={seed}" for seed in range(exp.runs)]
    for d in outs:
        d.mkdir(parents=True, exist_ok=True)
    # the host table is the slowest to build: its integration overlaps the writing of the others
    kinds = [k for k in ("powerSource", "service", "task", "host") if k in sc.files]
    last: Future[None] | None = None
    for kind in kinds:
        file = ParquetOutput(outs[0] / f"{kind}.parquet", kind, float64=float64)
        for part in result.parts(kind, last=kind == kinds[-1]):
            if last is not None:
                last.result()  # one part in the writer at a time (bounds memory)
            last = pool.submit(file.write, part)
            del part
        last = pool.submit(file.close)
    if last is not None:
        last.result()
    for d in outs[1:]:  # every seed gives the same (deterministic) output
        for kind in kinds:
            shutil.copyfile(outs[0] / f"{kind}.parquet", d / f"{kind}.parquet")


def _tune_memory() -> None:
    """Allocator settings for this short-lived, array-heavy process (measured on the SURF week).

    * numpy asks for transparent huge pages for large arrays; with the usual ``defrag=madvise`` kernel
      setting a fault there may compact memory on the spot, which cost about 0.2 s of system time.
    * glibc returns every freed array above its dynamic mmap threshold to the kernel, so the next array of
      that size page-faults again; a fixed 32 MiB threshold and a high trim threshold keep freed memory for
      reuse (about 0.05–0.15 s less system time, the same peak RSS).
    """
    import ctypes

    import numpy as np

    setter = getattr(getattr(np, "_core", None), "multiarray", None)
    setter = getattr(setter, "_set_madvise_hugepage", None)
    if setter is not None:
        setter(False)
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc
            return
        m_trim_threshold, m_mmap_threshold = -1, -3
        mallopt(m_mmap_threshold, 32 << 20)
        mallopt(m_trim_threshold, 1 << 30)


def main(argv: list[str] | None = None) -> int:
    """Entry point; invalid input gives a one-line error on stderr and exit code 2."""
    ap = argparse.ArgumentParser(prog="python -m opendt.engine", description=__doc__)
    ap.add_argument("--experiment-path", default="resources/experiment.json", type=Path)
    ap.add_argument(
        "--float64",
        action="store_true",
        help="write powerSource values as float64 (not OpenDC's float32): a stand-in whose output is exact",
    )
    args = ap.parse_args(argv)
    _tune_memory()
    try:
        run(args.experiment_path, float64=args.float64)
    except (ValueError, OSError) as e:  # ExperimentError, TopologyError, InputError, CarbonError, Arrow's
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"error: {msg}\n")
        return 2
    return 0
