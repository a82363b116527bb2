"""Forged tasks that hold every host for 10 years (issue 29): the demo workload windowed like the twin (the
real windower: forged tasks reusing real ids come first and keep them, their 10-year first fragments make the
real first fragments duplicates), then the engine window by window, the final window's tail bounded as the
twin bounds it (``simulation.max_tail_s``) or not.

    .venv/bin/python bench/forged_tasks.py [--workload data/demo] [--forged 36]

Prints, for the clean feed and the forged one, the engine's seconds for the windows and for the final flush,
and the rows made. Before the bound the forged feed's final flush integrated 10 years (2.1 M rows).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from opendt.engine import Engine
from opendt.models.messages import FragmentRow, TaskRow
from opendt.settings import SimulationSettings
from opendt.stream.windowing import Window, Windower
from opendt.workload import Workload, load_workload

ROOT = Path(__file__).resolve().parents[1]
W = 300_000
TEN_YEARS_MS = 3650 * 86_400_000
TASK_COLS = ["id", "submission_ms", "duration", "cpu_count", "cpu_capacity", "mem_capacity"]
FRAG_COLS = ["id", "submission_ms", "duration", "cpu_count", "cpu_usage", "index"]


def windows(wl: Workload, forged: int) -> tuple[list[Window], int]:
    """The feed through the windower (forged tasks first); the windows and the conflicts counted."""
    tasks = wl.tasks.sort("submission_ms")
    cores = max(h.cpu.coreCount for c in wl.topology.clusters for h in c.hosts)
    src_t, src_f = ("tasks", 0), ("fragments", 0)
    w = Windower(W, [src_t, src_f], max_orphans=100_000)
    first = int(tasks["submission_ms"].min())  # type: ignore[arg-type]
    for tid in tasks["id"].head(forged).to_list():
        w.add_task(src_t, TaskRow(tid, first, TEN_YEARS_MS, cores, cores * 3000.0, 1))
        w.add_fragment(src_f, FragmentRow(tid, first, TEN_YEARS_MS, cores, cores * 3000.0, 0), 0)
    events: list[tuple[int, int, TaskRow | FragmentRow]] = [
        (r[1], 0, TaskRow(*r)) for r in tasks.select(TASK_COLS).iter_rows()
    ]
    events += [(r[1], 1, FragmentRow(*r)) for r in wl.fragments.select(FRAG_COLS).iter_rows()]
    events.sort(key=lambda e: (e[0], e[1]))
    out: list[Window] = []
    for t, _, row in events:
        if isinstance(row, TaskRow):
            w.add_task(src_t, row)
        else:
            w.add_fragment(src_f, row, 0)
        w.heartbeat(src_t, t)
        w.heartbeat(src_f, t)
        out += w.close_ready()
    end = events[-1][0] + W
    w.heartbeat(src_t, end, final=True)
    w.heartbeat(src_f, end, final=True)
    out += w.close_ready()
    return out, w.stats.conflicts


def run(wl: Workload, ws: list[Window], tail_ms: int | None) -> dict[str, float]:
    engine = Engine(wl.topology, export_interval_ms=150_000, carbon=wl.carbon)
    rows = 0
    t0 = time.perf_counter()
    for w in ws[:-1]:
        tasks, frags = w.frames()
        rows += engine.advance(w.end_ms, tasks, frags).height
    t1 = time.perf_counter()
    last = ws[-1]
    tasks, frags = last.frames()
    rows += engine.advance(last.end_ms, tasks, frags).height
    rows += engine.finish(None if tail_ms is None else last.end_ms + tail_ms).height
    return {"windows_s": t1 - t0, "final_s": time.perf_counter() - t1, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", type=Path, default=ROOT / "data" / "demo")
    ap.add_argument("--forged", type=int, default=36, help="forged tasks (the demo has 36 hosts)")
    args = ap.parse_args()
    wl = load_workload(args.workload)
    tail = SimulationSettings().max_tail_s * 1000
    clean, _ = windows(wl, 0)
    forged, conflicts = windows(wl, args.forged)
    print(f"{len(clean)} windows; {args.forged} forged tasks ({conflicts} real ones refused as conflicts)")
    for name, ws, cap in [
        ("clean", clean, tail),
        ("forged, tail bounded", forged, tail),
        ("forged, unbounded", forged, None),
    ]:
        r = run(wl, ws, cap)
        total = r["windows_s"] + r["final_s"]
        print(
            f"{name:>22}: windows {r['windows_s']:6.2f} s, final {r['final_s']:6.2f} s, "
            f"total {total:6.2f} s, rows {r['rows']:,}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
