"""BrokerThread: a broker for synchronous callers (the session fixture), with its errors surfaced."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from opendt.kafka.admin import ensure_topics
from opendt.kafka.broker import BrokerError
from opendt.kafka.testing import BrokerThread
from opendt.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_broker_thread_runs_admin_coroutines_and_stops_its_broker() -> None:
    """The thread's broker takes coroutines from sync code and is gone after stop (twice is harmless)."""
    thread = BrokerThread(KafkaSettings())
    bootstrap = thread.start()
    try:
        assert thread.bootstrap_servers == bootstrap
        assert thread.run(ensure_topics(bootstrap, ["bt-topic"], 2), timeout=30) == ["bt-topic"]
        with pytest.raises(BrokerError, match="already started"):
            thread.start()
    finally:
        thread.stop()
    thread.stop()
    assert thread.pid is not None
    assert not psutil.pid_exists(thread.pid)
    with pytest.raises(BrokerError, match="not running"):
        thread.run(ensure_topics(bootstrap, ["x"], 1))


def test_broker_thread_reports_a_startup_failure(tmp_path: Path) -> None:
    """A broker that cannot start raises in the caller's thread with the reason."""
    with pytest.raises(BrokerError, match="did not start: Tansu binary not found"):
        BrokerThread(KafkaSettings(tansu_bin=tmp_path / "absent")).start()


def test_broker_thread_with_external_bootstrap_starts_nothing(kafka_bootstrap: str) -> None:
    """With bootstrap_servers set the thread only hosts a loop for admin calls against that broker."""
    with BrokerThread(KafkaSettings(bootstrap_servers=kafka_bootstrap, tansu_bin=Path("/absent"))) as thread:
        assert thread.bootstrap_servers == kafka_bootstrap
        assert thread.pid is None
