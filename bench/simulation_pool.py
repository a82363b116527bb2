"""Bench: SimulationPool overhead and priority latency, with trivial child processes.

Usage: .venv/bin/python bench/simulation_pool.py [--runs N] [--parallel P] [--low N]

1. Throughput: N runs of ``python -c pass`` through the pool (max_parallel P) vs. the same N processes
   started sequentially with subprocess.run; prints wall time per run for both.
2. Priority: one slot, N low-priority runs of ``python -c 'import time; time.sleep(0.1)'`` queued, then a
   high-priority run: prints how long the high-priority run waited in the queue (≈ one low run, not N).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from opendt.opendc.pool import Priority, SimulationPool  # noqa: E402

NOOP = [sys.executable, "-c", "pass"]
SLOW = [sys.executable, "-c", "import time; time.sleep(0.1)"]


def sequential(runs: int) -> float:
    t0 = time.perf_counter()
    for _ in range(runs):
        subprocess.run(NOOP, check=True)
    return time.perf_counter() - t0


async def throughput(runs: int, parallel: int, seq: float) -> None:
    async with SimulationPool(max_parallel=parallel, timeout_s=60) as pool:
        t0 = time.perf_counter()
        await asyncio.gather(*(pool.run(NOOP) for _ in range(runs)))
        pooled = time.perf_counter() - t0
        run_s = sorted(r.run_s for r in pool.history)
    print(
        f"throughput: {runs} runs; sequential subprocess.run {1000 * seq / runs:.1f} ms/run; "
        f"pool(max_parallel={parallel}) {1000 * pooled / runs:.1f} ms/run wall, "
        f"median per-run {1000 * run_s[len(run_s) // 2]:.1f} ms"
    )


async def priority(low: int) -> None:
    async with SimulationPool(max_parallel=1, timeout_s=60) as pool:
        lows = [asyncio.create_task(pool.run(SLOW, priority=Priority.LOW, label="low")) for _ in range(low)]
        await asyncio.sleep(0)  # let every low run take its place in the queue first
        assert pool.load.queued == low - 1, pool.load
        high = await pool.run(SLOW, priority=Priority.HIGH, label="high")
        await asyncio.gather(*lows)
        low_waits = sorted(r.queued_s for r in pool.history if r.label == "low")
    print(
        f"priority: {low} low runs queued first; high run waited {1000 * high.record.queued_s:.0f} ms "
        f"(low runs waited up to {1000 * low_waits[-1]:.0f} ms)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--low", type=int, default=20)
    args = ap.parse_args()
    asyncio.run(throughput(args.runs, args.parallel, sequential(args.runs)))
    asyncio.run(priority(args.low))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
