"""Kafka as operators run it: TLS and SASL for every client, and the start-up check of access and topics.

:func:`client_options` turns ``kafka.security_protocol`` / ``sasl_*`` / ``ssl_*`` into the keyword arguments
every aiokafka client of the twin takes (producer, consumers, admin, the liveness probe); the passwords are
read out of their ``SecretStr`` only here, into the client. :func:`check_kafka` runs before the daemon starts
on an external cluster: one connection that authenticates (a wrong password is :class:`KafkaAccessError`,
one line, exit 2, instead of a daemon that retries forever) and, with ``kafka.create_topics: false``, the
check that every topic exists with enough partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from typing import Any

import structlog
from aiokafka import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from opendt.settings import ConfigError, KafkaSettings

log = structlog.get_logger(component="kafka")


class KafkaAccessError(ConfigError):
    """The cluster cannot be used as configured (authentication, TLS, missing topics); one line."""


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """The security keyword arguments of an aiokafka client (none for PLAINTEXT)."""
    proto = settings.security_protocol
    if proto == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": proto}
    if proto in ("SSL", "SASL_SSL"):
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=settings.ssl_cafile,
                certfile=settings.ssl_certfile,
                keyfile=settings.ssl_keyfile,
                password=None
                if settings.ssl_key_password is None
                else settings.ssl_key_password.get_secret_value(),
            )
        except (OSError, ssl.SSLError) as e:
            files = [str(f) for f in (settings.ssl_cafile, settings.ssl_certfile, settings.ssl_keyfile) if f]
            raise KafkaAccessError(f"kafka TLS files {', '.join(files)} cannot be used: {e}") from None
    if proto.startswith("SASL_"):
        assert settings.sasl_password is not None  # KafkaSettings checks it
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password.get_secret_value(),
        )
    return options


def _who(settings: KafkaSettings) -> str:
    if settings.security_protocol.startswith("SASL_"):
        return (
            f"user {settings.sasl_username!r} ({settings.sasl_mechanism} over {settings.security_protocol})"
        )
    return settings.security_protocol


async def _connect_first(bootstrap: str, settings: KafkaSettings, options: dict[str, Any]) -> None:
    """Open one authenticated connection to a bootstrap server; raises :class:`KafkaAccessError`."""
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                conn = await create_conn(
                    host.strip("[]"),
                    int(port),
                    client_id=settings.client_id,
                    request_timeout_ms=int(settings.request_timeout_s * 1000),
                    **options,
                )
            conn.close()
            return
        except (OSError, KafkaError, TimeoutError, ssl.SSLError, ValueError) as e:
            errors.append(f"{server.strip()}: {type(e).__name__}: {e}".rstrip(": "))
    reason = "; ".join(errors)
    if "Authentication" in reason or "SASL" in reason.upper():
        raise KafkaAccessError(f"kafka at {bootstrap}: authentication failed for {_who(settings)}: {reason}")
    raise KafkaAccessError(f"kafka at {bootstrap} cannot be reached as {_who(settings)}: {reason}")


async def missing_topics(
    bootstrap: str, settings: KafkaSettings, names: Iterable[str], partitions: int
) -> list[str]:
    """The topics of ``names`` that do not exist or have fewer than ``partitions`` partitions, each as
    ``name`` or ``name (k partitions, need n)``."""
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        client_id=settings.client_id,
        request_timeout_ms=int(settings.request_timeout_s * 1000),
        **client_options(settings),
    )
    try:
        await client.bootstrap()
        wanted = list(dict.fromkeys(names))
        metadata = await client.fetch_all_metadata()
    except KafkaError as e:
        raise KafkaAccessError(f"kafka at {bootstrap}: cannot read the topics' metadata: {e}") from None
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    out = []
    for name in wanted:
        have = metadata.partitions_for_topic(name)
        if not have:
            out.append(name)
        elif len(have) < partitions:
            out.append(f"{name} ({len(have)} partitions, need {partitions})")
    return out


async def check_topics(bootstrap: str, settings: KafkaSettings) -> None:
    """``kafka.create_topics: false``: every topic of ``kafka.topics`` exists with ``kafka.partitions``."""
    missing = await missing_topics(bootstrap, settings, settings.topics.all(), settings.partitions)
    if missing:
        raise KafkaAccessError(
            f"kafka.create_topics is false and the cluster at {bootstrap} lacks {', '.join(missing)}: create "
            "them (or allow the twin to: kafka.create_topics true and the Create ACL)"
        )


async def check_kafka(settings: KafkaSettings) -> None:
    """Before the daemon starts on an external cluster: the credentials work, and the topics exist unless the
    twin may create them. Raises :class:`KafkaAccessError` with one line."""
    if not settings.bootstrap_servers:
        return
    await _connect_first(settings.bootstrap_servers, settings, client_options(settings))
    if not settings.create_topics:
        await check_topics(settings.bootstrap_servers, settings)
    log.info("kafka_checked", bootstrap=settings.bootstrap_servers, security=settings.security_protocol)
