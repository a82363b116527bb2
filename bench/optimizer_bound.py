"""How far can *any* host count and core speed go? An exhaustive check of the optimizer's SURF rounds.

    .venv/bin/python bench/optimizer_bound.py --rounds r3600.json [--rounds r1800.json] [--out grid.json]
    .venv/bin/python bench/optimizer_bound.py --rounds r3600.json --grid grid.json [--grid more.json]

The second form re-analyses grids written by ``--out`` (several: merged per round, e.g. more speeds).

``--rounds``: dumps of ``bench/optimizer.py --dump`` (``GET /api/optimizer``). For every round with a
proposal in any of them, the round's range is re-simulated with **every** host count from 1 to the physical
count at each core speed of ``--speeds`` (default: 100 MHz steps from the physical 2100 MHz down to the
rules' floor, 1800 MHz, and the rules' × 0.9 = 1890 MHz; SURF: 75 rounds × 1,385 points, ~25 min on 2
cores), from the twin's state at the round's start, exactly as the optimizer simulates a candidate (the twin
advanced window by window as the daemon's, its snapshot, :func:`run_candidate`, the outcome in SLO units).
Printed per dump: the share of its rounds with a proposal where *some* grid point meets the energy SLO
without the wait p95 above its SLO (the ceiling any count/speed proposal could reach on the issue's target),
the optimizer's own share, the wait SLO at which 80 % would become reachable, and how the grid's outcomes
agree with the candidates the optimizer simulated (the same topology must give the same outcome).

One host group (SURF: 277 hosts × 16 cores, 98 % of the tasks take 16 cores): a count is the whole
topology's count. Core counts are left out: under 16 the 16-core tasks fit nowhere; above it the host's
power model, in watts, does not grow with its cores, so a lower utilization would show a saving no hardware
gives (the rules raise cores for performance only).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from opendt.commands.calibrate import cut_windows
from opendt.engine import Engine
from opendt.optimizer.round import outcome_of
from opendt.settings import SimulationSettings
from opendt.twin.scenarios import ScenarioResult, scenario_header
from opendt.worker.warm import prepare, run_candidate, snapshot
from opendt.workload import load_workload

ROOT = Path(__file__).resolve().parents[1]
SURF = ROOT / "data" / "surf"
EXPORT_MS = SimulationSettings().export_interval_s * 1000  # the twin's export grid (the default settings)


def simulate_grid(
    job: tuple[int, int, bytes, pl.DataFrame, pl.DataFrame, dict[str, Any], list[float], int, int],
) -> dict[str, Any]:
    """Every (count, speed) of one round: energy per window (kWh), wait p95 (s), tasks re-queued."""
    start, end, blob, tasks, frags, topo, speeds, n_max, n_windows = job
    header = scenario_header(start, end, EXPORT_MS, topo)  # as the optimizer's scenario runs
    base = prepare(header, {"tasks": tasks, "fragments": frags, "snapshot": pl.DataFrame({"blob": [blob]})})
    grid = []
    t0 = time.perf_counter()
    for speed in speeds:
        for n in range(1, n_max + 1):
            t = copy.deepcopy(topo)
            host = t["clusters"][0]["hosts"][0]
            host["count"], host["cpu"]["coreSpeed"] = n, speed
            extra: dict[str, pl.DataFrame] = {}
            rows = run_candidate(base, t, extra)
            stats = extra["stats"].row(0, named=True)
            o = outcome_of(ScenarioResult(rows, tasks=stats), n_windows)
            grid.append(
                {
                    "count": n,
                    "speed": speed,
                    "energy_kwh": o.energy_kwh,
                    "wait_p95_s": o.task_wait_p95_s,
                    "requeued": stats["tasks_requeued"],
                }
            )
    return {"start_ms": start, "end_ms": end, "grid": grid, "compute_s": time.perf_counter() - t0}


def run_grid(args: argparse.Namespace, ranges: list[tuple[int, int]]) -> list[dict[str, Any]]:
    w = load_workload(args.workload)
    topo = w.topology.to_json_dict()
    hosts = topo["clusters"][0]["hosts"]
    if len(topo["clusters"]) != 1 or len(hosts) != 1:
        raise SystemExit("this check enumerates one host group; the topology has more")
    n_max = int(hosts[0]["count"])
    window_ms = args.window_s * 1000
    n_windows = (ranges[0][1] - ranges[0][0]) // window_ms
    carbon = None if w.carbon is None else w.carbon.rename({"timestamp_ms": "timestamp"})
    engine = Engine(w.topology, export_interval_ms=EXPORT_MS, carbon=carbon)
    wanted = dict(ranges)
    t0 = time.perf_counter()
    windows = cut_windows(w, window_ms)
    print(f"{len(ranges)} rounds × {n_max} counts × {len(args.speeds)} speeds; twin: {len(windows)} windows")
    out, futures = [], []
    frames: dict[int, list[tuple[pl.DataFrame, pl.DataFrame]]] = {}
    blobs: dict[int, bytes] = {}
    # spawn: a forked child of a process whose polars thread pool is running can deadlock
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for win in windows:
            for start in wanted:  # the twin's state at a round's start, and the round's window inputs
                if win.start_ms == start:
                    blobs[start] = snapshot(engine, "running")
                    frames[start] = []
            tf = win.frames()
            for start, end in wanted.items():
                if start in frames and win.start_ms < end:
                    frames[start].append(tf)
                    if win.end_ms == end:
                        got = frames.pop(start)
                        tasks = pl.concat([f[0] for f in got], how="vertical_relaxed")
                        frags = pl.concat([f[1] for f in got], how="vertical_relaxed")
                        job = (
                            start,
                            end,
                            blobs.pop(start),
                            tasks,
                            frags,
                            topo,
                            args.speeds,
                            n_max,
                            n_windows,
                        )
                        futures.append(pool.submit(simulate_grid, job))
            engine.advance(win.end_ms, *tf)
        for i, f in enumerate(futures):
            out.append(f.result())
            if (i + 1) % 10 == 0:
                print(f"  {i + 1} of {len(futures)} rounds ({time.perf_counter() - t0:.0f} s)", flush=True)
    cost = [r["compute_s"] / len(r["grid"]) for r in out]
    print(f"grid: {sum(len(r['grid']) for r in out)} simulations, {time.perf_counter() - t0:.0f} s wall, "
          f"engine {statistics.median(cost):.3f} s per candidate (median)")  # fmt: skip
    return out


def analyse(dump_path: Path, dump: dict[str, Any], grid: dict[tuple[int, int], list[dict[str, Any]]]) -> None:
    slo = dump["slo_targets"]
    e_slo, w_slo = slo["energy_kwh_per_window"], slo.get("task_wait_p95_s")

    def within_wait(wait: float | None) -> bool:
        return w_slo is None or wait is None or wait <= w_slo

    proposed = [r for r in dump["history"] if r["proposal"] is not None]
    missing = [r for r in proposed if (r["start_ms"], r["end_ms"]) not in grid]
    if missing:  # a dump of another run analysed against a grid of these rounds
        print(f"{dump_path.name}: {len(missing)} of its rounds with a proposal are not in the grid, left out")
        proposed = [r for r in proposed if r not in missing]
    reach, own, best_gap = 0, 0, []
    diffs: list[float] = []
    wait_diffs = 0
    for r in proposed:
        g = grid[(r["start_ms"], r["end_ms"])]
        reach += any(p["energy_kwh"] <= e_slo and within_wait(p["wait_p95_s"]) for p in g)
        c = r["candidate"]
        own += c is not None and c["energy_kwh"] <= e_slo and within_wait(c["task_wait_p95_s"])
        fits = [p["energy_kwh"] for p in g if within_wait(p["wait_p95_s"])]
        if fits and min(fits) > e_slo:
            best_gap.append(min(fits) / e_slo - 1)
        # the optimizer's candidates vs the grid point of the same count and speed
        at = {(p["count"], p["speed"]): p for p in g}
        host = r["proposal"]["topology"]["clusters"][0]["hosts"][0]  # the baseline: the proposal undone
        undo = {x["path"].rsplit("].", 1)[-1]: x["before"] for x in r["proposal"]["changes"]}
        physical = (undo.get("count", host["count"]), undo.get("cpu.coreSpeed", host["cpu"]["coreSpeed"]))
        for t in r["candidates"]:
            ch = {x["path"].rsplit("].", 1)[-1]: x["after"] for x in t["changes"]}
            p = at.get((ch.get("count", physical[0]), float(ch.get("cpu.coreSpeed", physical[1]))))
            if p is not None:
                diffs.append(abs(p["energy_kwh"] - t["outcome"]["energy_kwh"]))
                wait_diffs += p["wait_p95_s"] != t["outcome"]["task_wait_p95_s"]
    n = len(proposed)
    points = statistics.median(len(grid[(r["start_ms"], r["end_ms"])]) for r in proposed)
    print(f"{dump_path.name}: SLO {slo}; {n} rounds with a proposal, {points:.0f} grid points each")
    print(f"  the optimizer's proposals meet both SLOs in {own} = {100 * own / n:.1f} %")
    print(
        f"  SOME grid point (any count × speed) meets both in {reach} = {100 * reach / n:.1f} %: the ceiling"
    )
    if best_gap:
        print(f"  the other {len(best_gap)} rounds: the lowest energy of any grid point within the wait SLO "
              f"is over the energy SLO by median {100 * statistics.median(best_gap):+.1f} %, "
              f"min {100 * min(best_gap):+.1f} %")  # fmt: skip
        more = -(-8 * n // 10) - reach  # rounds short of 80 %
        if 0 < more <= len(best_gap):
            kth = 100 * sorted(best_gap)[more - 1]
            print(f"  80 % needs {more} of them; the {more} closest are up to {kth:+.1f} % over the energy "
                  f"SLO at best")  # fmt: skip
    # the least wait p95 a grid point meeting the energy SLO needs, per round: which wait SLO 80 % would take
    need = sorted(
        min((p["wait_p95_s"] or 0.0 for p in grid[(r["start_ms"], r["end_ms"])] if p["energy_kwh"] <= e_slo),
            default=float("inf"))
        for r in proposed
    )  # fmt: skip
    at80 = need[max(0, -(-8 * n // 10) - 1)]
    print(f"  the least wait p95 at which a grid point meets the energy SLO, per round: median "
          f"{statistics.median(need):.0f} s; 80 % of the rounds become reachable only with a wait SLO of "
          f"{at80:.0f} s ({at80 / 3600:.1f} h)")  # fmt: skip
    if diffs:
        print(f"  agreement with the {len(diffs)} candidates the optimizer simulated: energy max |Δ| "
              f"{max(diffs):.2e} kWh, wait p95 differs in {wait_diffs}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", type=Path, default=SURF)
    ap.add_argument("--rounds", type=Path, action="append", required=True)
    ap.add_argument("--speeds", type=float, nargs="+", default=[2100.0, 2000.0, 1900.0, 1890.0, 1800.0])
    ap.add_argument("--window-s", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the grid here as JSON")
    ap.add_argument(
        "--grid",
        type=Path,
        action="append",
        help="analyse grids written by --out (merged) instead of simulating",
    )
    args = ap.parse_args()
    dumps = {p: json.loads(p.read_text()) for p in args.rounds}
    ranges = sorted(
        {
            (r["start_ms"], r["end_ms"])
            for d in dumps.values()
            for r in d["history"]
            if r["proposal"] is not None
        }
    )
    if args.grid:
        results = [r for f in args.grid for r in json.loads(f.read_text())]
    else:
        results = run_grid(args, ranges)
        if args.out is not None:
            args.out.write_text(json.dumps(results))
    grid: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in results:
        grid.setdefault((r["start_ms"], r["end_ms"]), []).extend(r["grid"])
    for p, d in dumps.items():
        analyse(p, d, grid)


if __name__ == "__main__":
    main()
