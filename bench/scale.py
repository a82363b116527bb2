"""The scale ladder: datacenters of K × SURF, measured (issue 25).

    .venv/bin/python bench/scale.py [--k 1 10 100 400] [--span-h 24] [--stream-k 1 10] [--check-k 10]

K × SURF is K copies of every task of SURF's first ``--span-h`` hours (new ids: ``id + k·10⁸``), fragments
cut at the span, K × the hosts (one host group of 277·K), and K × SURF's measured power; written as a
workload directory (``data/surf`` is read; carbon is SURF's). For each K:

* host table: seconds to build the engine's host table (``build_hosts``) of the K topology;
* engine: the one-shot engine over the span in a child process (load, ``Engine.advance`` + ``finish``):
  wall seconds and peak RSS (psutil, 0.2 s polling);
* what-if: the engine's run of the first day of the span (at most the span) from a fresh engine, with
  10 % fewer hosts, in a child process (wall, peak RSS); for K in ``--stream-k`` also ``POST /api/whatif``
  of that day against the twin that streamed it (the real path: checkpoint warm start, worker);
* twin (K in ``--stream-k``): ``opendt run --speed max`` (embedded broker, replay included) until it
  prints that every window is simulated: wall seconds, records/s (tasks + fragments + power samples over
  that wall), window latency p50/p95 (``windows.parquet``), the daemon tree's peak RSS, the newest
  checkpoint's size; then the latency of ``GET /api/power`` and of the Grafana datasource's ``/query`` over
  the first day (median of 5), and the size of ``GET /api/topology``;
* exact (K = ``--check-k``, in the twin's runs): the largest relative difference of the twin's energy per
  export interval against the one-shot engine's over the same inputs (must be ≤ 1e-9).

It prints one table (a row per K) and the growth exponent of each figure in K (the slope of log figure over
log K between the smallest and the largest K measured; 1 = linear). Calibration and optimizer rounds are
measured in a second streaming run with both on (K in ``--rounds-k``): the median duration of the
calibration rounds that scored candidates (``calibration.parquet``) and of the optimizer's rounds (its log).
The machine may be shared: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from logs import events  # bench/logs.py, beside this script
from pipeline import Tree  # bench/pipeline.py

from opendt.twin.tables import AGG, read_journal, read_rows

ROOT = Path(__file__).resolve().parents[1]
SURF = ROOT / "data" / "surf"
MB = 1024 * 1024
DAY_MS = 86_400_000
ID_STRIDE = 100_000_000


# -- the K × SURF workload (in a child: this process stays small) --------------------------------------------
def make_workload(dst: Path, k: int, span_h: float) -> dict[str, Any]:
    """Write K × SURF's first ``span_h`` hours to ``dst``; returns its counts."""
    import polars as pl

    from opendt.workload import load_workload

    wl = load_workload(SURF)
    end = wl.origin_ms + int(span_h * 3_600_000)
    tasks = pl.read_parquet(SURF / "tasks.parquet")
    frags = pl.read_parquet(SURF / "fragments.parquet")
    keep = wl.fragments.with_row_index("row").filter(pl.col("submission_ms") < end)
    frags = frags.with_row_index("row").join(keep.select("row"), on="row", how="semi").drop("row")
    ids = frags["id"].unique()
    tasks = tasks.filter(pl.col("id").is_in(ids.implode()))
    t_parts, f_parts = [], []
    for i in range(k):
        shift = pl.col("id").cast(pl.Int64) + i * ID_STRIDE
        t_parts.append(tasks.with_columns(shift.cast(pl.Utf8).alias("id")))
        f_parts.append(frags.with_columns(shift.cast(pl.Utf8).alias("id")))
    dst.mkdir(parents=True, exist_ok=True)
    pl.concat(t_parts).write_parquet(dst / "tasks.parquet")
    pl.concat(f_parts).write_parquet(dst / "fragments.parquet")
    cons = pl.read_parquet(SURF / "consumption.parquet")
    cons = cons.filter(pl.col("timestamp") < int(span_h * 3_600_000)).with_columns(
        pl.col("power_draw") * k, pl.col("energy_usage") * k
    )
    cons.write_parquet(dst / "consumption.parquet")
    (dst / "carbon.parquet").write_bytes((SURF / "carbon.parquet").read_bytes())
    (dst / "workload.yaml").write_text((SURF / "workload.yaml").read_text())
    topo = json.loads((SURF / "topology.json").read_text())
    topo["clusters"][0]["hosts"][0]["count"] *= k
    topo["clusters"][0]["powerSource"]["carbonTracePath"] = "carbon.parquet"
    (dst / "topology.json").write_text(json.dumps(topo))
    return {
        "hosts": topo["clusters"][0]["hosts"][0]["count"],
        "tasks": tasks.height * k,
        "fragments": frags.height * k,
        "samples": cons.height,
        "origin_ms": wl.origin_ms,
        "end_ms": end,
    }


# -- child measurements --------------------------------------------------------------------------------------
def child_table(workload: Path) -> dict[str, Any]:
    from opendt.engine.hosts import build_hosts
    from opendt.models.topology import load_topology

    topo = load_topology(workload / "topology.json")
    t0 = time.perf_counter()
    table = build_hosts(topo)
    return {"table_s": time.perf_counter() - t0, "hosts": table.n}


def _engine(workload: Path, until_ms: int | None, *, fewer: float = 0.0, out: Path | None = None) -> float:
    import polars as pl

    from opendt.engine import Engine
    from opendt.twin.results import aggregate_rows
    from opendt.workload import load_workload

    wl = load_workload(workload)
    topo = wl.topology
    if fewer:
        doc = topo.to_json_dict()
        host = doc["clusters"][0]["hosts"][0]
        host["count"] = max(1, round(host["count"] * (1 - fewer)))
        topo = type(topo).model_validate(doc)
    carbon = None if wl.carbon is None else wl.carbon.rename({"timestamp_ms": "timestamp"})
    tasks, frags = wl.tasks, wl.fragments
    if until_ms is not None:
        tasks = tasks.filter(pl.col("submission_ms") < until_ms)
        frags = frags.filter(pl.col("submission_ms") < until_ms)
    t0 = time.perf_counter()
    engine = Engine(topo, export_interval_ms=150_000, carbon=carbon)
    until = until_ms if until_ms is not None else int(frags["submission_ms"].max()) + 1  # type: ignore[arg-type]
    rows = pl.concat([engine.advance(until, tasks, frags), engine.finish()], how="vertical_relaxed")
    wall = time.perf_counter() - t0
    if out is not None:
        aggregate_rows(rows, 0, 0).write_parquet(out)
    return wall


def child_engine(workload: Path, out: Path) -> dict[str, Any]:
    return {"engine_s": _engine(workload, None, out=out)}


def child_whatif(workload: Path, until_ms: int) -> dict[str, Any]:
    return {"whatif_s": _engine(workload, until_ms, fewer=0.1)}


def run_child(mode: str, *args: str) -> tuple[dict[str, Any], float]:
    """A child measurement: its JSON answer and the child's peak RSS (MB)."""
    tree = Tree()
    cmd = [sys.executable, __file__, "--child", mode, *args]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        tree.sample(root, 0.0)
        time.sleep(0.2)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed ({proc.returncode})")
    answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return answer, tree.peak_rss / MB


# -- the streaming twin --------------------------------------------------------------------------------------
def _get(url: str, timeout: float = 120) -> tuple[bytes, float]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
    return body, time.perf_counter() - t0


def _post(url: str, doc: dict[str, Any], timeout: float = 600) -> tuple[bytes, float]:
    req = urllib.request.Request(
        url, data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body: bytes = resp.read()
    return body, time.perf_counter() - t0


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def stream(
    workload: Path, tmp: Path, counts: dict[str, Any], *, rounds: bool = False, api_whatif: bool = True
) -> dict[str, Any]:
    """``opendt run --speed max`` until every window is simulated, then the API figures; with ``rounds``,
    calibration and the optimizer on, and only the duration of their rounds."""
    data_dir, log_path = tmp / "data", tmp / "run.log"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json", "OPENDT_WINDOWING__WINDOW_S": "300"})
    if rounds:
        env.update({"OPENDT_CALIBRATION__ENABLED": "true", "OPENDT_OPTIMIZER__ENABLED": "true"})
    cmd = [sys.executable, "-m", "opendt", "run", "--workload", str(workload), "--data-dir", str(data_dir)]
    tree = Tree()
    t0 = time.monotonic()
    with log_path.open("wb") as log:  # the CLI's progress lines and the JSON log both go to stderr
        proc = subprocess.Popen(
            [*cmd, "--speed", "max"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    root = psutil.Process(proc.pid)
    try:
        while "opendt: replay done" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None:
                raise SystemExit(f"opendt run exited {proc.returncode}; see {log_path}")
            tree.sample(root, time.monotonic() - t0)
            time.sleep(0.2)
        wall = time.monotonic() - t0
        url = events(log_path, "api_listening")[0]["url"]
        [run] = list((data_dir / "runs").iterdir())

        if rounds:
            return round_figures(run, log_path)

        windows = read_journal(run)
        assert windows is not None
        lat = windows["latency_s"].drop_nulls().to_list()
        ckpts = sorted((run / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
        ckpt_mb = sum(f.stat().st_size for f in ckpts[-1].iterdir()) / MB if ckpts else 0.0
        lo = counts["origin_ms"]
        hi = min(counts["end_ms"], lo + DAY_MS)
        q = f"start={_iso(lo)}&end={_iso(hi)}"
        power = [_get(f"{url}/api/power?{q}") for _ in range(5)]
        graf_doc = {
            "range": {"from": _iso(lo), "to": _iso(hi)},
            "targets": [{"target": "power_simulated", "refId": "A"}],
            "maxDataPoints": 1000,
        }
        graf = [_post(f"{url}/grafana/query", graf_doc) for _ in range(5)]
        topo_body, _ = _get(f"{url}/api/topology")
        whatif_s = None
        if api_whatif:
            try:
                patch = {"count": round(counts["hosts"] * 0.9)}
                doc = {"start": _iso(lo), "end": _iso(hi), "patch": patch}
                _, whatif_s = _post(f"{url}/api/whatif", doc)
            except OSError as e:
                print(f"  what-if via the API failed: {e}", flush=True)
        tree.sample(root, time.monotonic() - t0)
        return {
            "twin_s": wall,
            "records_per_s": (counts["tasks"] + counts["fragments"] + counts["samples"]) / wall,
            "windows": windows.height,
            "failed": int((windows["status"] != "ok").sum()),
            "latency_p50_s": statistics.median(lat) if lat else math.nan,
            "latency_p95_s": sorted(lat)[max(0, math.ceil(0.95 * len(lat)) - 1)] if lat else math.nan,
            "tree_rss_mb": tree.peak_rss / MB,
            "checkpoint_mb": ckpt_mb,
            "api_power_s": statistics.median(t for _, t in power),
            "api_power_bytes": len(power[0][0]),
            "grafana_s": statistics.median(t for _, t in graf),
            "grafana_bytes": len(graf[0][0]),
            "topology_bytes": len(topo_body),
            "api_whatif_s": whatif_s,
            "run": run,
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def round_figures(run: Path, log_path: Path) -> dict[str, Any]:
    """Median duration of the calibration rounds that scored candidates and of the optimizer's rounds."""
    import polars as pl

    out: dict[str, Any] = {}
    if (run / "calibration.parquet").exists():
        cal = pl.read_parquet(run / "calibration.parquet").filter(pl.col("status") != "skipped")
        if cal.height:
            out["calibration_round_s"] = float(cal["duration_s"].median())  # type: ignore[arg-type]
            out["calibration_rounds"] = cal.height
    opt = [float(e["duration_s"]) for e in events(log_path, "optimizer_round")]
    if opt:
        out["optimizer_round_s"] = statistics.median(opt)
        out["optimizer_rounds"] = len(opt)
    return out


def exactness(run: Path, one_shot: Path) -> tuple[float, int]:
    """Largest relative difference of the twin's energy per interval from the one-shot engine's (and the
    number of intervals compared)."""
    import polars as pl

    agg = read_rows(run, AGG)
    assert agg is not None
    ref = pl.read_parquet(one_shot).with_columns(pl.col("timestamp").dt.cast_time_unit("ms"))
    agg = agg.with_columns(pl.col("timestamp").dt.cast_time_unit("ms"))
    j = agg.join(ref, on="timestamp", how="inner", suffix="_ref")
    rel = (j["energy_usage"] - j["energy_usage_ref"]).abs() / j["energy_usage_ref"].abs().clip(
        lower_bound=1e-12
    )
    return float(rel.max() or 0.0), j.height  # type: ignore[arg-type]


# -- the ladder ----------------------------------------------------------------------------------------------
COLUMNS = [
    ("hosts", "hosts", "{:.0f}"),
    ("fragments", "fragments", "{:.0f}"),
    ("table_s", "table s", "{:.3f}"),
    ("engine_s", "engine s", "{:.2f}"),
    ("engine_rss_mb", "engine MB", "{:.0f}"),
    ("whatif_s", "what-if s", "{:.2f}"),
    ("whatif_rss_mb", "what-if MB", "{:.0f}"),
    ("twin_s", "twin s", "{:.1f}"),
    ("records_per_s", "records/s", "{:.0f}"),
    ("latency_p50_s", "lat p50 s", "{:.2f}"),
    ("latency_p95_s", "lat p95 s", "{:.2f}"),
    ("tree_rss_mb", "tree MB", "{:.0f}"),
    ("checkpoint_mb", "ckpt MB", "{:.2f}"),
    ("api_whatif_s", "API what-if s", "{:.2f}"),
    ("api_power_s", "power s", "{:.3f}"),
    ("grafana_s", "grafana s", "{:.3f}"),
    ("topology_bytes", "topo B", "{:.0f}"),
    ("max_rel_diff", "twin vs engine", "{:.1e}"),
    ("calibration_round_s", "calib round s", "{:.2f}"),
    ("optimizer_round_s", "optim round s", "{:.2f}"),
]


def measure(
    k: int, span_h: float, tmp: Path, *, stream_it: bool, check: bool, rounds: bool, api_whatif: bool
) -> dict[str, Any]:
    wdir = tmp / f"k{k}" / "workload"
    counts, _ = run_child("make", str(wdir), str(k), str(span_h))
    row: dict[str, Any] = {"k": k, **counts}
    row.update(run_child("table", str(wdir))[0])
    ref = tmp / f"k{k}" / "one_shot.parquet"
    answer, rss = run_child("engine", str(wdir), str(ref))
    row.update(answer, engine_rss_mb=rss)
    until = min(counts["end_ms"], counts["origin_ms"] + DAY_MS)
    answer, rss = run_child("whatif", str(wdir), str(until))
    row.update(answer, whatif_rss_mb=rss)
    if stream_it:
        row.update(stream(wdir, tmp / f"k{k}", counts, api_whatif=api_whatif))
        if check:
            row["max_rel_diff"], row["intervals_compared"] = exactness(row["run"], ref)
    if rounds:
        row.update(stream(wdir, tmp / f"k{k}" / "rounds", counts, rounds=True))
    return row


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def print_table(rows: list[dict[str, Any]], span_h: float) -> None:
    print(f"\nK × SURF, first {span_h:g} h (load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    head = ["K", *(h for _, h, _ in COLUMNS)]
    cells = [[str(r["k"]), *(_cell(r, key, fmt) for key, _, fmt in COLUMNS)] for r in rows]
    exps = ["exp."]
    for key, _, _ in COLUMNS:
        have = [(r["k"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and r[key] > 0]
        if len(have) >= 2 and have[-1][0] != have[0][0]:
            (k1, v1), (k2, v2) = have[0], have[-1]
            exps.append(f"{math.log(v2 / v1) / math.log(k2 / k1):.2f}")
        else:
            exps.append("—")
    widths = [max(len(x[i]) for x in [head, *cells, exps]) for i in range(len(head))]
    for line in [head, *cells, exps]:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    for r in rows:
        if "max_rel_diff" in r:
            ok = "within" if r["max_rel_diff"] <= 1e-9 else "NOT within"
            print(f"K={r['k']}: twin vs one-shot engine over {r['intervals_compared']} intervals: {ok} 1e-9")
        if r.get("failed"):
            print(f"K={r['k']}: {r['failed']} of {r['windows']} windows failed")


def child_main(mode: str, args: list[str]) -> None:
    if mode == "make":
        out: dict[str, Any] = make_workload(Path(args[0]), int(args[1]), float(args[2]))
    elif mode == "table":
        out = child_table(Path(args[0]))
    elif mode == "engine":
        out = child_engine(Path(args[0]), Path(args[1]))
    elif mode == "whatif":
        out = child_whatif(Path(args[0]), int(args[1]))
    else:
        raise SystemExit(f"unknown child mode {mode}")
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 10, 100, 400])
    ap.add_argument("--span-h", type=float, default=24.0)
    ap.add_argument("--stream-k", type=int, nargs="*", default=[1, 10], help="K whose twin is streamed")
    ap.add_argument("--check-k", type=int, nargs="*", default=[10], help="K checked twin = one-shot engine")
    ap.add_argument(
        "--rounds-k",
        type=int,
        nargs="*",
        default=[1, 10],
        help="K streamed again with calibration and optimizer",
    )
    ap.add_argument("--no-api-whatif", action="store_true", help="skip POST /api/whatif after streaming")
    ap.add_argument("--keep", type=Path, help="keep the workloads and runs under DIR")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child_main(a.child[0], a.child[1:])
        return 0
    if not SURF.is_dir():
        print(f"SURF workload not found at {SURF}")
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = a.keep or Path(t)
        for k in a.k:
            row = measure(
                k,
                a.span_h,
                tmp,
                stream_it=k in a.stream_k,
                check=k in a.check_k,
                rounds=k in a.rounds_k,
                api_whatif=not a.no_api_whatif,
            )
            rows.append(row)
            shown = {key: v for key, v in row.items() if key != "run"}
            print(f"K={k}: {json.dumps(shown, default=str)}", flush=True)
        print_table(rows, a.span_h)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
