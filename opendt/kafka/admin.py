"""Topic administration on Tansu and Kafka alike (CreateTopics and DeleteTopics via aiokafka's admin)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

log = structlog.get_logger(component="broker")

_ERR_NONE = 0
_ERR_UNKNOWN_TOPIC = 3
_ERR_TOPIC_EXISTS = 36


class TopicError(RuntimeError):
    """A topic could not be created or deleted; the message names the topic and the Kafka error."""


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    request_timeout_s: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created (existing ones are kept).

    Works on Tansu and Kafka (CreateTopics); an existing topic keeps its partition count. aiokafka speaks
    CreateTopics v0–v3, which cannot ask for the broker's default replication, so ``replication_factor``
    is explicit (1; pre-create the topics on a replicated production cluster). ``security``: the client
    options of :func:`opendt.kafka.security.client_options`.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(request_timeout_s * 1000), **(security or {})
    )
    await admin.start()
    try:
        resp = await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor) for n in wanted]
        )
    except KafkaError as e:
        raise TopicError(f"creating topics {wanted} on {bootstrap} failed: {e!r}") from e
    finally:
        await admin.close()
    created = []
    for topic, code, *rest in resp.topic_errors:
        if code == _ERR_NONE:
            created.append(topic)
        elif code != _ERR_TOPIC_EXISTS:
            message = rest[0] if rest else None
            raise TopicError(f"creating topic {topic!r} on {bootstrap} failed: error {code} {message or ''}")
    if created:
        await _until_visible(bootstrap, created, request_timeout_s, security)
    log.info("topics_ensured", bootstrap=bootstrap, created=created, existing=len(wanted) - len(created))
    return created


async def _until_visible(
    bootstrap: str, names: list[str], timeout_s: float, security: Mapping[str, Any] | None
) -> None:
    """Wait until the broker's metadata lists the new topics' partitions: Apache Kafka answers CreateTopics
    before its metadata has them, and a consumer that asks at once finds no partitions."""
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **(security or {})
    )
    try:
        async with asyncio.timeout(timeout_s):
            await client.bootstrap()
            while True:
                metadata = await client.fetch_all_metadata()
                if all(metadata.partitions_for_topic(n) for n in names):
                    return
                await asyncio.sleep(0.05)  # retry: metadata propagates within milliseconds
    except (TimeoutError, KafkaError) as e:
        raise TopicError(f"created topics {names} on {bootstrap} do not show in its metadata: {e!r}") from e
    finally:
        await client.close()


async def delete_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    request_timeout_s: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> None:
    """Delete the topics (unknown ones are ignored); Tansu and Kafka both support DeleteTopics."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(request_timeout_s * 1000), **(security or {})
    )
    await admin.start()
    try:
        resp = await admin.delete_topics(wanted)
    except KafkaError as e:
        raise TopicError(f"deleting topics {wanted} on {bootstrap} failed: {e!r}") from e
    finally:
        await admin.close()
    for topic, code, *_ in resp.topic_error_codes:
        if code not in (_ERR_NONE, _ERR_UNKNOWN_TOPIC):
            raise TopicError(f"deleting topic {topic!r} on {bootstrap} failed: error {code}")
