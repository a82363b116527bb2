"""Fixtures shared by every test directory (pytest finds them; nothing needs importing).

- ``kafka_bootstrap`` (session): ``host:port`` of a real broker. ``TEST_KAFKA_BOOTSTRAP`` or
  ``OPENDT_KAFKA__BOOTSTRAP_SERVERS`` selects an external one; otherwise one embedded Tansu is started
  for the session on a background thread, so it works with the default function-scoped event loops.
- ``topic_factory``: ``make(prefix="t", partitions=1) -> str`` creates a topic unique to the test and
  deletes it afterwards. Tests using either fixture get the ``kafka`` marker (``-m "not kafka"``).
- ``kafka_settings`` (session): ``KafkaSettings`` matching that broker; pass it to ``make_producer`` /
  ``make_consumer`` (with the embedded broker it shortens the consumer-group session timeout).
- ``shared_dir``: the Path of ``../shared`` next to the repository; skips the test when it is absent.
- ``daemon_settings``: ``make(workload, **replay_overrides)`` → Settings for ``run_daemon`` on that broker,
  topics unique to the test, API on a free port, data under the test's tmp dir.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from opendt.kafka.admin import delete_topics, ensure_topics
from opendt.kafka.testing import BrokerThread
from opendt.settings import (
    REPO_ROOT,
    ApiSettings,
    KafkaSettings,
    OptimizerSettings,
    ReplaySettings,
    Settings,
    TopicNames,
)

_KAFKA_FIXTURES = {"kafka_bootstrap", "topic_factory", "kafka_thread", "kafka_settings"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def kafka_settings() -> KafkaSettings:
    """KafkaSettings describing the session's broker (``bootstrap_servers`` set only when external)."""
    external = os.environ.get("TEST_KAFKA_BOOTSTRAP") or os.environ.get("OPENDT_KAFKA__BOOTSTRAP_SERVERS")
    return KafkaSettings(bootstrap_servers=external or None)


@pytest.fixture(scope="session")
def kafka_thread(kafka_settings: KafkaSettings) -> Iterator[BrokerThread]:
    """The session's broker, held by an event loop on a background thread."""
    with BrokerThread(kafka_settings) as thread:
        yield thread


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_thread: BrokerThread) -> str:
    """Bootstrap servers of the session's broker (embedded Tansu unless configured)."""
    return kafka_thread.bootstrap_servers


@pytest.fixture
def topic_factory(kafka_thread: BrokerThread, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Create topics unique to this test (``make(prefix="t", partitions=1)``); deleted after the test."""
    created: list[str] = []
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80].strip("-")

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{slug}-{uuid.uuid4().hex[:8]}"
        kafka_thread.run(ensure_topics(kafka_thread.bootstrap_servers, [name], partitions))
        created.append(name)
        return name

    yield make
    if created:
        kafka_thread.run(delete_topics(kafka_thread.bootstrap_servers, created))


@pytest.fixture
def unique_topic_names(topic_factory: Callable[..., str]) -> Callable[[], TopicNames]:
    """``make() -> TopicNames``: every topic of the twin created unique to this test (deleted after it)."""

    def make() -> TopicNames:
        return TopicNames(
            tasks=topic_factory("tasks"),
            fragments=topic_factory("fragments"),
            power=topic_factory("power"),
            carbon=topic_factory("carbon"),
            topology=topic_factory("topology"),
            sim_topology=topic_factory("simtopo"),
            sim_results=topic_factory("results"),
            dead_letter=topic_factory("dlq"),
        )

    return make


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared read-only material (``../shared``); the test is skipped when it is not there."""
    path = Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip(f"shared material not found at {path}")
    return path


@pytest.fixture
def daemon_settings(
    kafka_bootstrap: str, unique_topic_names: Callable[[], TopicNames], tmp_path: Path
) -> Callable[..., Settings]:
    """``make(workload, **replay_overrides)``: Settings for ``run_daemon`` on the session broker, every topic
    unique to the test (``unique_topic_names``), API on a free port, data under tmp."""

    def make(workload: Path, **replay: Any) -> Settings:
        topics = unique_topic_names()
        slo = tmp_path / "slo.json"  # a copy: API tests may PUT /api/slo, which writes the file
        slo.write_bytes((REPO_ROOT / "config" / "slo.json").read_bytes())
        return Settings(
            kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topics=topics),
            replay=ReplaySettings(workload=workload, **{"speed": "max", "heartbeat_s": 60, **replay}),
            api=ApiSettings(port=0),
            optimizer=OptimizerSettings(slo_path=slo),
            data_dir=tmp_path / "data",
        )

    return make
