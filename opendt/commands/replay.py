"""``opendt replay``: stream a workload into Kafka (the configured one, or an embedded broker) and exit."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

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
                    workload, producer, settings.kafka.topics, settings.replay, SystemClock(), progress
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
