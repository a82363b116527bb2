"""``opendt replay``: stream a workload into a running Kafka (``kafka.bootstrap_servers``, required; the
topics are created when missing) and exit."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

from opendt.commands.errors import UsageError
from opendt.commands.run import check_workload
from opendt.settings import Settings


async def replay_cli(settings: Settings, stop: asyncio.Event) -> int:
    """Stream the workload into Kafka and exit when done (130 when stopped first)."""
    from opendt.clock import SystemClock
    from opendt.kafka.broker import kafka_for
    from opendt.kafka.client import make_producer
    from opendt.stream.replay import ReplayProducer, ReplayProgress
    from opendt.workload import load_workload

    check_workload(Path(settings.replay.workload))
    if not settings.kafka.bootstrap_servers:
        raise UsageError(
            "no Kafka to stream into: kafka.bootstrap_servers is not set. Give the address of a running "
            "Kafka (--bootstrap-servers HOST:PORT or OPENDT_KAFKA__BOOTSTRAP_SERVERS); `opendt broker` runs "
            "one and prints it. (A broker started for the replay alone would stop, and its data be lost, "
            "when the replay exits.)"
        )
    from opendt.kafka.security import check_kafka

    await check_kafka(settings.kafka)  # a wrong password: one line, exit 2
    workload = await asyncio.to_thread(load_workload, settings.replay.workload)
    progress = ReplayProgress()
    t0 = time.monotonic()
    async with kafka_for(settings.kafka) as bootstrap:
        producer = make_producer(bootstrap, settings.kafka)
        await producer.start()
        try:
            replay = asyncio.ensure_future(
                ReplayProducer(
                    workload,
                    producer,
                    settings.kafka.topics,
                    settings.replay,
                    SystemClock(),
                    progress,
                    datacenter=settings.kafka.datacenter,
                ).run()
            )
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({replay, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if replay not in done:
                replay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replay
                return 130
            stopper.cancel()
            replay.result()
        finally:
            await producer.stop()
    counts = ", ".join(f"{n:,} {kind}" for kind, n in progress.counts.items())
    sys.stdout.write(
        f"opendt replay done: {progress.sent:,} records ({counts}) of {workload.meta.name} to Kafka at "
        f"{bootstrap}, topics {settings.kafka.topics.tasks}, {settings.kafka.topics.fragments}, "
        f"{settings.kafka.topics.power}, {settings.kafka.topics.topology}; {time.monotonic() - t0:.1f} s\n"
    )
    return 0
