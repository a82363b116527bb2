"""Ingest at the broker's speed (issue 30): a separate producer process fills the topics with a workload, then
the twin (``opendt run --no-replay --exit-when-done``, a real process) consumes them; beside it, raw aiokafka
consumption of the same messages (no decoding) as the limit.

    .venv/bin/python bench/ingest.py [--workload DIR] [--modes 1 2000]

Per mode (``replay.batch_records``: 1 = one record per message, N = NDJSON batches of up to N records):

* **produce**: ``opendt replay --speed max`` as its own process into the embedded Tansu (records/s, wall);
* **raw consume**: one aiokafka consumer in this process reads every input topic to its end (messages/s and
  records/s; records of a batch counted by its lines, nothing decoded);
* **consumer**: the twin's window-accumulating consumer alone, in this process (the same ``WindowConsumer``
  the daemon runs: decode, time gate, dedup, windowing, closed windows handed on), its closed windows taken
  and dropped at once: records/s from start to the last window, and its CPU seconds;
* **twin**: records/s from the consumer's start to the last window durable (``consumer_started`` ..
  ``consumer_finished`` in the daemon's JSON log: every record decoded, gated, windowed, simulated and
  written; the simulator back-pressures the consumer, so this is the simulator's pace), the whole process's
  wall, and the twin's CPU seconds.

The SURF week (``data/surf``) is the default workload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from aiokafka import TopicPartition
from logs import events  # bench/logs.py, beside this script

from opendt.kafka.admin import ensure_topics
from opendt.kafka.broker import EmbeddedBroker
from opendt.kafka.client import make_consumer
from opendt.settings import KafkaSettings, TopicNames
from opendt.stream.consumer import WindowConsumer
from opendt.stream.resume import ClosedWindow

ROOT = Path(__file__).resolve().parents[1]
SURF = ROOT / "data" / "surf"
KINDS = ("tasks", "fragments", "power", "carbon", "topology")


def _env(bootstrap: str, topics: dict[str, str], batch: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update(
        {
            "OPENDT_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "OPENDT_REPLAY__BATCH_RECORDS": str(batch),
            "OPENDT_LOG__FORMAT": "json",
            "OPENDT_API__PORT": "0",
        }
    )
    for kind, name in topics.items():
        env[f"OPENDT_KAFKA__TOPICS__{kind.upper()}"] = name
    return env


def _at(rec: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(rec["timestamp"]).replace("Z", "+00:00")).timestamp()


async def _raw_consume(bootstrap: str, topics: list[str]) -> dict[str, float]:
    consumer = make_consumer(bootstrap, [], None, KafkaSettings(bootstrap_servers=bootstrap))
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        messages = records = 0
        t0 = time.perf_counter()
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=200, max_records=20_000)).values():
                messages += len(batch)
                for r in batch:
                    records += (r.value or b"").count(b"\n") + 1 if r.headers else 1
        wall = time.perf_counter() - t0
    finally:
        await consumer.stop()
    return {"messages": messages, "records": records, "wall_s": wall, "records_per_s": records / wall}


async def _consumer(bootstrap: str, topics: dict[str, str]) -> dict[str, float]:
    """The window consumer alone over the filled topics; its windows dropped as they close."""
    names = TopicNames(**topics)
    consumer = make_consumer(bootstrap, [], None, KafkaSettings(bootstrap_servers=bootstrap))
    await consumer.start()
    queue: asyncio.Queue[ClosedWindow | None] = asyncio.Queue(maxsize=64)
    wc = WindowConsumer(consumer, names, 300_000, queue, commit=False)
    windows = 0
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(wc.run())
            while await queue.get() is not None:
                windows += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        await consumer.stop()
    events = wc.status().events
    return {
        "windows": windows,
        "events": events,
        "wall_s": wall,
        "cpu_s": cpu,
        "records_per_s": events / wall,
    }


def _twin(env: dict[str, str], data_dir: Path, log_path: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "opendt",
        "run",
        "--no-replay",
        "--exit-when-done",
        "--data-dir",
        str(data_dir),
    ]
    t0 = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    ps = psutil.Process(proc.pid)
    cpu = 0.0
    while proc.poll() is None:
        try:
            times = ps.cpu_times()
            cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"opendt run exited {proc.returncode}; see {log_path}")
    start, end = events(log_path, "consumer_started")[0], events(log_path, "consumer_finished")[0]
    return {
        "wall_s": wall,
        "consume_s": _at(end) - _at(start),
        "events": end["events"],
        "malformed": end["malformed"],
        "cpu_s": cpu,
    }


async def bench(
    workload: Path, modes: list[int], tmp: Path, *, skip_twin: bool = False
) -> list[dict[str, Any]]:
    rows = []
    async with EmbeddedBroker(KafkaSettings()) as broker:
        bootstrap = broker.bootstrap_servers
        for batch in modes:
            topics = {k: f"{k}-{uuid.uuid4().hex[:8]}" for k in KINDS}
            await ensure_topics(bootstrap, topics.values(), 1)
            env = _env(bootstrap, topics, batch)
            t0 = time.perf_counter()
            replay = [sys.executable, "-m", "opendt", "replay", "--workload", str(workload), "--speed", "max"]
            await asyncio.to_thread(
                subprocess.run,
                replay,
                cwd=ROOT,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            produce_s = time.perf_counter() - t0
            raw = await _raw_consume(
                bootstrap, [topics[k] for k in ("tasks", "fragments", "power", "carbon")]
            )
            alone = await _consumer(bootstrap, topics)
            twin = (
                {"wall_s": float("nan"), "consume_s": 1.0, "events": float("nan"), "cpu_s": float("nan")}
                if skip_twin
                else await asyncio.to_thread(_twin, env, tmp / f"data-{batch}", tmp / f"twin-{batch}.log")
            )
            rows.append(
                {"batch_records": batch, "produce_s": produce_s, "raw": raw, "consumer": alone, "twin": twin}
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", type=Path, default=SURF)
    ap.add_argument("--modes", type=int, nargs="+", default=[1, 2000])
    ap.add_argument("--skip-twin", action="store_true", help="the consumer alone, not the daemon")
    args = ap.parse_args()
    print(f"workload: {args.workload}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="opendt-ingest-") as tmp:
        rows = asyncio.run(bench(args.workload, args.modes, Path(tmp), skip_twin=args.skip_twin))
    print()
    print(
        f"{'batch':>6} {'records':>10} {'produce/s':>11} {'raw msgs/s':>11} {'raw rec/s':>11} "
        f"{'consumer/s':>11} {'cons. cpu':>9} {'twin rec/s':>11} {'twin wall':>10} {'twin cpu':>9}"
    )
    for r in rows:
        raw, alone, twin = r["raw"], r["consumer"], r["twin"]
        print(
            f"{r['batch_records']:>6} {raw['records']:>10,} {raw['records'] / r['produce_s']:>11,.0f} "
            f"{raw['messages'] / raw['wall_s']:>11,.0f} {raw['records_per_s']:>11,.0f} "
            f"{alone['records_per_s']:>11,.0f} {alone['cpu_s']:>8.1f}s "
            f"{twin['events'] / twin['consume_s']:>11,.0f} {twin['wall_s']:>9.1f}s {twin['cpu_s']:>8.1f}s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
