"""What TLS and SASL cost the twin's Kafka clients: N fragment messages produced (BatchSender) and consumed
with decoding through one Apache Kafka 4.1 broker (KRaft, started here from .cache/kafka, see
.ci/install-kafka) over PLAINTEXT, then over SASL_SSL with SCRAM-SHA-256 and SCRAM-SHA-512.

Usage: ``.venv/bin/python bench/kafka_security.py [N] [--partitions 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kafka_roundtrip import encode_fragments

from opendt.kafka.admin import ensure_topics
from opendt.kafka.client import DecodeStats, consume_decoded, make_consumer, make_producer, send_many
from opendt.kafka.security import client_options
from opendt.log import configure_logging
from opendt.settings import KafkaSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
apache_kafka: Any = importlib.import_module(
    "apache_kafka"
)  # the tests' broker helper (tests/apache_kafka.py)


async def run(settings: KafkaSettings, records: list[tuple[bytes | None, bytes]], partitions: int) -> None:
    bootstrap = settings.bootstrap_servers or ""
    topic = f"bench-sec-{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, [topic], partitions, security=client_options(settings))
    n = len(records)
    nbytes = sum(len(k or b"") + len(v) for k, v in records)
    t0 = time.perf_counter()
    async with make_producer(bootstrap, settings) as producer:
        await send_many(producer, topic, records)
    produce_s = time.perf_counter() - t0
    consumer = make_consumer(bootstrap, [topic], None, settings)
    await consumer.start()
    stats = DecodeStats()
    t0 = time.perf_counter()
    try:
        async for _ in consume_decoded(consumer, "fragments", stats=stats):
            if stats.decoded >= n:
                break
    finally:
        await consumer.stop()
    consume_s = time.perf_counter() - t0
    label = settings.security_protocol + (f" {settings.sasl_mechanism}" if settings.sasl_mechanism else "")
    print(
        f"{label:<28} produce {n / produce_s:>9,.0f} msg/s ({nbytes / produce_s / 1e6:5.1f} MB/s)   "
        f"consume+decode {n / consume_s:>9,.0f} msg/s"
    )


async def measure(broker: Any, n: int, partitions: int) -> None:
    records = encode_fragments(n, 2000)
    print(f"{n:,} fragment messages, {partitions} partitions, Apache Kafka {apache_kafka.VERSION}")
    await run(KafkaSettings(bootstrap_servers=broker.plaintext), records, partitions)
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        settings = KafkaSettings.model_validate(
            {
                "bootstrap_servers": broker.sasl_ssl,
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": mechanism,
                "sasl_username": apache_kafka.USER,
                "sasl_password": apache_kafka.PASSWORD,
                "ssl_cafile": broker.cafile,
            }
        )
        await run(settings, records, partitions)


def main(n: int, partitions: int) -> None:
    reason = apache_kafka.unavailable()
    if reason is not None:
        raise SystemExit(f"cannot run Apache Kafka here: {reason}")
    with tempfile.TemporaryDirectory() as d, apache_kafka.ApacheKafka(Path(d)) as broker:  # started sync
        asyncio.run(measure(broker, n, partitions))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("n", nargs="?", type=int, default=100_000, help="messages (default 100000)")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    configure_logging("warning", "console", stream=sys.stderr)
    main(args.n, args.partitions)
