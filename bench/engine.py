"""Benchmark ``python -m opendt.engine`` on the SURF week (and scaled copies) as a real subprocess.

    .venv/bin/python bench/engine.py [--runs 5] [--scales 0.25,0.5,1,4] [--files powerSource,host,...]

The SURF workload (data/surf) is converted to OpenDC's schema in a temp dir first (not
timed). Scale s < 1 keeps the first s of the tasks and s of the hosts; s > 1 replicates tasks (new ids)
and hosts s times. Wall time, CPU time (user + system) and peak RSS are of the whole child process
(``wait4`` rusage); wall is reported as median and minimum of the runs, RSS as the maximum. The import
share is the part of a child's wall time spent importing modules (one extra run with ``-X importtime``).
The machine may be shared: the load average is printed with every row.

The conversion runs in its own process and this one never imports polars: a child's ``ru_maxrss``
includes the memory of the parent it was forked from (the kernel carries the old address space's
high-water mark over ``exec``), so a large parent would inflate the children's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SURF = ROOT / "data" / "surf"


def convert(dst: Path, scale: float) -> tuple[int, int]:
    """Write tasks/fragments/topology for ``scale``; returns (hosts, fragments)."""
    import polars as pl

    tasks = pl.read_parquet(SURF / "tasks.parquet")
    frags = pl.read_parquet(SURF / "fragments.parquet")
    ids = tasks.select(pl.col("id").cast(pl.Utf8)).with_row_index("n")
    sub = tasks["submission_time"]
    if sub.dtype == pl.Datetime:
        sub = sub.cast(pl.Datetime("ms")).dt.epoch("ms")
    t = pl.DataFrame(
        {
            "id": ids["n"].cast(pl.Int32),
            "submission_time": sub.cast(pl.Int64),
            "duration": tasks["duration"].cast(pl.Int64),
            "cpu_count": tasks["cpu_count"].cast(pl.Int32),
            "cpu_capacity": tasks["cpu_capacity"].cast(pl.Float64),
            "mem_capacity": tasks["mem_capacity"].cast(pl.Int64),
        }
    )
    f = (
        frags.with_columns(pl.col("id").cast(pl.Utf8))
        .join(ids.rename({"n": "nid"}), on="id", how="inner", maintain_order="left")
        .select(
            pl.col("nid").cast(pl.Int32).alias("id"),
            pl.col("duration").cast(pl.Int64),
            pl.col("cpu_usage").cast(pl.Float64),
        )
    )
    topo = json.loads((SURF / "topology.json").read_text())
    hosts = topo["clusters"][0]["hosts"][0]["count"]
    if scale < 1:
        keep = int(t.height * scale)
        t = t.head(keep)
        f = f.filter(pl.col("id") < keep)
        hosts = max(1, int(hosts * scale))
    elif scale > 1:
        k = int(scale)
        n = t.height
        t = pl.concat([t.with_columns(pl.col("id") + i * n) for i in range(k)])
        f = pl.concat([f.with_columns(pl.col("id") + i * n) for i in range(k)])
        hosts *= k
    topo["clusters"][0]["hosts"][0]["count"] = hosts
    topo["clusters"][0]["powerSource"]["carbonTracePath"] = str(SURF / "carbon.parquet")
    dst.mkdir(parents=True, exist_ok=True)
    t.write_parquet(dst / "tasks.parquet")
    f.write_parquet(dst / "fragments.parquet")
    (dst / "topology.json").write_text(json.dumps(topo))
    return hosts, f.height


def convert_in_child(dst: Path, scale: float) -> tuple[int, int]:
    """:func:`convert` in a separate process (keeps this one small)."""
    out = subprocess.run(
        [sys.executable, __file__, "--convert", str(dst), str(scale)],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    hosts, fragments = json.loads(out)
    return int(hosts), int(fragments)


@dataclass(frozen=True)
class Run:
    wall: float  # s
    cpu: float  # user + system s
    rss: float  # peak MB


def _cmd(exp: Path, *flags: str) -> list[str]:
    return [sys.executable, *flags, "-m", "opendt.engine", "--experiment-path", str(exp)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_once(exp: Path, cwd: Path) -> Run:
    """One child run."""
    t = time.perf_counter()
    proc = subprocess.Popen(_cmd(exp), cwd=cwd, env=_env(), stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"engine failed: {proc.stderr.read().decode() if proc.stderr else status}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)")


def import_share(exp: Path, cwd: Path) -> float:
    """Share of one child run's wall time spent in imports: the top-level entries of ``-X importtime``
    (over the wall time of that same, instrumented run)."""
    t = time.perf_counter()
    r = subprocess.run(_cmd(exp, "-X", "importtime"), cwd=cwd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t
    total_us = 0
    for line in r.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m and m.group(2) == "":  # no indentation: imported directly, its time includes its children
            total_us += int(m.group(1))
    return total_us / 1e6 / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scales", default="0.25,0.5,1,4")
    ap.add_argument("--files", default="powerSource,host,task,service")
    ap.add_argument("--convert", nargs=2, metavar=("DIR", "SCALE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.convert:
        print(json.dumps(convert(Path(a.convert[0]), float(a.convert[1]))))
        return 0
    if not SURF.is_dir():
        print(f"SURF workload not found at {SURF}")
        return 1
    print(f"files: {a.files}; {a.runs} runs per scale; {os.cpu_count()} CPUs")
    print(
        f"{'scale':>6} {'hosts':>6} {'fragments':>10} {'wall med':>9} {'wall min':>9} {'cpu med':>8}"
        f" {'peak RSS MB':>12} {'imports':>8} {'load 1m':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for scale in [float(s) for s in a.scales.split(",")]:
            d = Path(tmp) / f"s{scale}"
            hosts, n_frag = convert_in_child(d / "workload", scale)
            exp = {
                "name": "bench",
                "topologies": [{"pathToFile": "workload/topology.json"}],
                "workloads": [{"pathToFile": "workload", "type": "ComputeWorkload"}],
                "outputFolder": "out",
                "exportModels": [{"exportInterval": 150, "filesToExport": a.files.split(",")}],
            }
            (d / "exp.json").write_text(json.dumps(exp))
            res = [run_once(d / "exp.json", d) for _ in range(a.runs)]
            load = os.getloadavg()[0]
            wall = statistics.median(r.wall for r in res)
            share = import_share(d / "exp.json", d)
            print(
                f"{scale:>6} {hosts:>6} {n_frag:>10} {wall:>9.2f} {min(r.wall for r in res):>9.2f}"
                f" {statistics.median(r.cpu for r in res):>8.2f} {max(r.rss for r in res):>12.0f}"
                f" {share:>8.0%} {load:>8.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
