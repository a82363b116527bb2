"""`opendt replay` alone against an existing Kafka: every record of the workload arrives, then it exits 0."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from opendt.kafka.client import make_consumer
from opendt.models.messages import Heartbeat, decode
from opendt.settings import KafkaSettings
from opendt.stream.columns import decode_fetch
from opendt.workload import load_workload

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


async def test_replay_command_streams_the_demo(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """1. run `opendt replay --speed max` pointed at the session broker and fresh topics; 2. it exits 0;
    3. it ends with a summary line of the records sent; the topics hold every task, fragment, power sample and
    carbon step of the demo, then a final heartbeat."""
    names = {k: topic_factory(k) for k in ("tasks", "fragments", "power", "carbon", "topology")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env["OPENDT_KAFKA__BOOTSTRAP_SERVERS"] = kafka_bootstrap
    env["OPENDT_LOG__FORMAT"] = "json"
    for kind, topic in names.items():
        env[f"OPENDT_KAFKA__TOPICS__{kind.upper()}"] = topic
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opendt", "replay", "--speed", "max", "--workload", str(DEMO),
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    wl = load_workload(DEMO)
    # the closing summary (issue 18 item 9): what was sent, where
    assert wl.consumption is not None
    assert wl.carbon is not None
    expected = {
        "tasks": wl.tasks.height,
        "fragments": wl.fragments.height,
        "power": wl.consumption.height,
        "carbon": wl.carbon.height,
    }
    assert out.decode().startswith(f"opendt replay done: {sum(expected.values()):,} records"), out
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    for kind in ("tasks", "fragments", "power", "carbon"):
        consumer = make_consumer(kafka_bootstrap, [names[kind]], None, settings)
        await consumer.start()
        rows = 0
        final = False
        try:
            async with asyncio.timeout(60):
                while not final:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        if kind != "carbon":  # NDJSON batches (the replay's default) and heartbeats
                            fetch = decode_fetch(kind, records)  # type: ignore[arg-type]
                            assert fetch.bad == []
                            rows += fetch.frame.height
                            final = final or any(hb.final for _, _, hb in fetch.heartbeats)
                            continue
                        for r in records:
                            row = decode("carbon", r.key, r.value)
                            if isinstance(row, Heartbeat):
                                final = final or row.final
                            else:
                                rows += 1
        finally:
            await consumer.stop()
        assert rows == expected[kind], kind
