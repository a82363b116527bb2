"""Benchmark ``GET /metrics`` (the Prometheus exposition) while the twin replays and after: does a scrape cost
the same early in a run and at its end?

    .venv/bin/python bench/metrics_scrape.py [--workload DIR] [--scrapes 50] [--every-s 1]

1. ``opendt run --speed max`` as a real process (its own broker, replay, engine worker) on the SURF week
   (data/surf; ``--workload data/demo`` for a quick one), API on a free loopback port.
2. While it replays, one scrape every ``--every-s`` (as Prometheus would, more often than its usual 15 s):
   wall time per scrape as the client sees it, with the windows durable at that moment.
3. Once every window is durable: ``--scrapes`` scrapes back to back.

Printed: p50 / p95 / max of the scrape time during the first and the last quarter of the replay and after it,
the body size, and the windows durable, so that a cost growing with the run's length would show; and, for
comparison, ``GET /api/status`` after the replay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
SURF = ROOT / "data" / "surf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def scrape(s: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    async with s.get(f"{url}/metrics") as r:
        body = await r.read()
        assert r.status == 200, r.status
    return time.perf_counter() - t0, len(body)


async def status(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with s.get(f"{url}/api/status") as r:
        return dict(await r.json())


def line(label: str, xs: list[tuple[float, int, int]]) -> str:
    if not xs:
        return f"{label:<28} (no scrape)"
    ms = [1000 * x[0] for x in xs]
    return (
        f"{label:<28} n={len(xs):>3}  p50 {pct(ms, 0.5):6.2f} ms  p95 {pct(ms, 0.95):6.2f} ms  "
        f"max {max(ms):6.2f} ms  body {xs[-1][1]:,} B  windows {xs[0][2]}..{xs[-1][2]}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", type=Path, default=SURF)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--every-s", type=float, default=1.0)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="opendt-bench-metrics-"))
    env = {**os.environ, "OPENDT_API__PORT": str(port), "OPENDT_LOG__FORMAT": "json"}
    opendt = Path(sys.executable).with_name("opendt")
    cmd = [str(opendt), "run", "--workload", str(args.workload), "--speed", "max", "--data-dir", str(tmp)]
    log = (tmp / "daemon.log").open("wb")
    daemon = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220 - before any load
    during: list[tuple[float, int, int]] = []
    after: list[tuple[float, int, int]] = []
    status_after: list[tuple[float, int, int]] = []
    try:
        async with aiohttp.ClientSession() as s:
            t0 = time.monotonic()
            st: dict[str, Any] | None = None
            while st is None:
                try:
                    st = await status(s, url)
                except aiohttp.ClientError:
                    if time.monotonic() - t0 > 300:
                        raise
                    await asyncio.sleep(0.2)
            while True:
                sim = st.get("simulation") or {}
                dt, size = await scrape(s, url)
                during.append((dt, size, int(sim.get("windows_durable", 0))))
                if sim.get("done"):
                    break
                await asyncio.sleep(args.every_s)
                st = await status(s, url)
            total = int((st.get("simulation") or {}).get("windows_durable", 0))
            for _ in range(args.scrapes):
                dt, size = await scrape(s, url)
                after.append((dt, size, total))
            for _ in range(args.scrapes):  # for comparison: the JSON status document
                t1 = time.perf_counter()
                body = await (await s.get(f"{url}/api/status")).read()
                status_after.append((time.perf_counter() - t1, len(body), total))
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()
    quarter = max(1, len(during) // 4)
    print(f"workload {args.workload.name}: {total} windows; {len(during)} scrapes while replaying")
    print(line("first quarter of the replay", during[:quarter]))
    print(line("last quarter of the replay", during[-quarter:]))
    print(line("after (back to back)", after))
    print(line("GET /api/status, after", status_after))


if __name__ == "__main__":
    asyncio.run(main())
