"""Benchmark the API under load while the twin replays, and a what-if over one day.

    .venv/bin/python bench/api_latency.py [--workload DIR] [--clients 50] [--seconds 20] [--step-s 60]

1. ``opendt run --speed max`` as a real process (its own broker, replay, engine worker) on the SURF week
   (data/surf, else the demo day), API on a free loopback port.
2. Once the first windows are durable, ``--clients`` concurrent aiohttp clients (this process, one connection
   each) request ``/api/power`` for the whole trace at ``--step-s`` steps, back to back, for ``--seconds``:
   p50 / p95 / p99 / max latency and requests per second; the twin's watermark before and after shows it was
   replaying all along.
3. After the replay is done: ``POST /api/whatif`` over one day (the trace's second day) with every host's
   coreSpeed × 0.9, three times: wall time per request as the client sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
SURF = ROOT / "data" / "surf"
DEMO = ROOT / "data" / "demo"
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def status(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with s.get(f"{url}/api/status") as r:
        return dict(await r.json())


async def wait_for(s: aiohttp.ClientSession, url: str, pred: Any, limit_s: float) -> dict[str, Any]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        try:
            st = await status(s, url)
            if pred(st):
                return st
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the daemon did not get there in time")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def load(url: str, query: dict[str, str], clients: int, seconds: float) -> tuple[list[float], int, int]:
    lat: list[float] = []
    errors = 0
    bytes_ = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal errors, bytes_
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                async with s.get(f"{url}/api/power", params=query) as r:
                    body = await r.read()
                lat.append(time.perf_counter() - t0)
                bytes_ = len(body)
                errors += r.status != 200

    await asyncio.gather(*(client() for _ in range(clients)))
    return lat, errors, bytes_


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", type=Path, default=SURF if SURF.exists() else DEMO)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--step-s", type=int, default=60)
    ap.add_argument("--whatif-repeats", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="opendt-bench-api-"))
    env = {
        **os.environ,
        "OPENDT_API__PORT": str(port),
        "OPENDT_API__TOKEN": TOKEN,
        "OPENDT_LOG__FORMAT": "json",
        "OPENDT_LOG__LEVEL": "info",
    }
    opendt = Path(sys.executable).with_name("opendt")
    cmd = [str(opendt), "run", "--workload", str(args.workload), "--speed", "max", "--data-dir", str(tmp)]
    log = (tmp / "daemon.log").open("wb")
    daemon = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220 - before any load
    try:
        async with aiohttp.ClientSession() as s:
            st = await wait_for(
                s, url, lambda st: (st.get("simulation") or {}).get("windows_durable", 0) >= 5, 600
            )
            w = st["workload"]
            start, end = int(w["start_ms"]), int(w["end_ms"]) + 1
            query = {"start": str(start), "end": str(end), "step_s": str(args.step_s)}
            durable: list[int] = []

            async def watch() -> None:
                while True:
                    durable.append(int((await status(s, url))["simulation"]["windows_durable"]))
                    await asyncio.sleep(1)

            watcher = asyncio.create_task(watch())
            lat, errors, size = await load(url, query, args.clients, args.seconds)
            watcher.cancel()
            done = (await status(s, url))["simulation"]["done"]
            print(f"workload: {args.workload}  ({w['tasks']} tasks, {w['fragments']} fragments)")
            print(
                f"/api/power whole trace at {args.step_s} s steps ({size / 1e6:.2f} MB per answer), "
                f"{args.clients} concurrent clients for {args.seconds:.0f} s during --speed max replay:"
            )
            print(
                f"  requests {len(lat)}  errors {errors}  {len(lat) / args.seconds:.0f} req/s  "
                f"p50 {pct(lat, 0.5) * 1e3:.1f} ms  p95 {pct(lat, 0.95) * 1e3:.1f} ms  "
                f"p99 {pct(lat, 0.99) * 1e3:.1f} ms  max {max(lat) * 1e3:.1f} ms"
            )
            print(f"  windows durable, sampled each second during the load: {durable} (replay done: {done})")

            st = await wait_for(s, url, lambda st: st["simulation"]["done"], 900)
            day0 = (start // 86_400_000 + 1) * 86_400_000
            body: dict[str, Any] = {"start": day0, "end": day0 + 86_400_000, "patch": {"cpu.coreSpeed": 0}}
            async with s.get(f"{url}/api/topology") as r:
                topo = (await r.json())["simulated"]["topology"]
            speeds = {h["cpu"]["coreSpeed"] for c in topo["clusters"] for h in c["hosts"]}
            body["patch"] = {"cpu.coreSpeed": round(0.9 * max(speeds))}
            walls = []
            doc: dict[str, Any] = {}
            for _ in range(args.whatif_repeats):
                t0 = time.perf_counter()
                async with s.post(
                    f"{url}/api/whatif", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
                ) as r:
                    doc = await r.json()
                walls.append(time.perf_counter() - t0)
                if r.status != 200:
                    raise SystemExit(f"what-if failed: {r.status} {doc}")
            runs = ", ".join(f"{x:.3f}" for x in walls)
            print(
                f"what-if one day ({doc['start']} → {doc['end']}), coreSpeed → "
                f"{body['patch']['cpu.coreSpeed']} MHz: wall median {statistics.median(walls):.3f} s "
                f"({runs}), "
                f"engine {doc['elapsed_s']:.3f} s; energy {doc['delta']['energy_pct']:+.2f} % vs baseline"
            )
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()


if __name__ == "__main__":
    asyncio.run(main())
