"""The embedded Tansu broker: start, stop, no orphans, clear startup errors, topics, external brokers."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from structlog.testing import capture_logs

import opendt.kafka.broker as broker_module
from opendt.kafka.admin import delete_topics, ensure_topics
from opendt.kafka.broker import (
    BrokerError,
    EmbeddedBroker,
    free_port,
    kafka_for,
    run_broker_forever,
)
from opendt.settings import KafkaSettings, TopicNames

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]

_PARENT_SCRIPT = """
import asyncio, sys
from opendt.kafka.broker import EmbeddedBroker
from opendt.log import configure_logging
from opendt.settings import KafkaSettings

async def main():
    configure_logging("warning", "json", stream=sys.stderr)
    async with EmbeddedBroker(KafkaSettings()) as broker:
        print("PID", broker.pid, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def _topics(bootstrap: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = await admin.list_topics()
        described = await admin.describe_topics(names) if names else []
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described}


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def _wait_exit(pid: int, timeout_s: float) -> None:
    """Wait until ``pid`` (not our child) has terminated, using a pidfd that becomes readable on exit."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(fd, exited.set_result, None)
    try:
        async with asyncio.timeout(timeout_s):
            await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-tansu"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


async def test_broker_starts_and_answers_metadata() -> None:
    """A started broker listens on loopback and answers admin requests."""
    async with EmbeddedBroker(KafkaSettings()) as broker:
        assert broker.bootstrap_servers.startswith("127.0.0.1:")
        assert broker.pid is not None
        assert await _topics(broker.bootstrap_servers) == {}


async def test_stop_leaves_no_process_and_lifecycle_is_strict() -> None:
    """After stop the Tansu process group is gone; start twice fails; stop twice is harmless."""
    broker = EmbeddedBroker(KafkaSettings())
    await broker.start()
    pid = broker.pid
    assert pid is not None
    with pytest.raises(BrokerError, match="already started"):
        await broker.start()
    await broker.stop()
    await broker.stop()
    assert not psutil.pid_exists(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap_servers


async def test_broker_dies_when_parent_is_sigkilled() -> None:
    """1. a Python process starts a broker; 2. it is SIGKILLed; 3. the Tansu process exits too."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PARENT_SCRIPT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert parent.stdout is not None
    tansu_pid = None
    try:
        async with asyncio.timeout(30):
            line = await parent.stdout.readline()
        assert line.startswith(b"PID "), line
        tansu_pid = int(line.split()[1])
        assert psutil.Process(tansu_pid).name() == "tansu"
        parent.kill()
        await parent.wait()
        await _wait_exit(tansu_pid, timeout_s=10)
        assert _gone(tansu_pid)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if tansu_pid is not None and not _gone(tansu_pid):
            os.kill(tansu_pid, signal.SIGKILL)


async def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    """A configured binary that does not exist is named in the error."""
    with pytest.raises(BrokerError, match=r"not found: .*absent"):
        await EmbeddedBroker(KafkaSettings(tansu_bin=tmp_path / "absent")).start()


async def test_non_executable_binary_is_a_clear_error(tmp_path: Path) -> None:
    """A configured binary without the execute bit is rejected before anything starts."""
    path = tmp_path / "tansu"
    path.write_text("not a program")
    with pytest.raises(BrokerError, match="not executable"):
        await EmbeddedBroker(KafkaSettings(tansu_bin=path)).start()


async def test_binary_exiting_at_once_reports_code_and_output(tmp_path: Path) -> None:
    """A broker that exits during startup gives its exit code and the tail of its stderr."""
    fake = _script(tmp_path, 'echo "boom: storage engine unusable" >&2\nexit 3')
    with pytest.raises(BrokerError, match=r"(?s)exited with code 3.*boom: storage engine unusable"):
        await EmbeddedBroker(KafkaSettings(tansu_bin=fake)).start()


async def test_binary_never_answering_times_out_and_is_killed(tmp_path: Path) -> None:
    """A broker that never answers fails after startup_timeout_s and its process is killed."""
    fake = _script(tmp_path, 'echo "waiting forever"\nexec sleep 60')
    broker = EmbeddedBroker(KafkaSettings(tansu_bin=fake, startup_timeout_s=0.5))
    with pytest.raises(BrokerError, match=r"(?s)did not answer .* within 0.5 s.*waiting forever"):
        await broker.start()
    assert broker.pid is not None
    assert not psutil.pid_exists(broker.pid)


async def test_fixed_port_in_use_is_a_clear_error() -> None:
    """A configured port that is already taken is reported without starting Tansu."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = EmbeddedBroker(KafkaSettings(port=port))
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port} \\(kafka.port\\)"):
            await broker.start()
        assert broker.pid is None


async def test_lost_port_race_is_retried_on_another_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the picked free port is taken before Tansu binds it, the broker retries on another one."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = iter([taken.getsockname()[1], free_port("127.0.0.1")])
        monkeypatch.setattr(broker_module, "free_port", lambda host: next(picks))
        async with EmbeddedBroker(KafkaSettings()) as broker:
            assert broker.bootstrap_servers != f"127.0.0.1:{taken.getsockname()[1]}"
            assert await _topics(broker.bootstrap_servers) == {}


async def test_fixed_port_is_used() -> None:
    """With kafka.port set, the broker listens on exactly that port."""
    port = free_port("127.0.0.1")
    async with EmbeddedBroker(KafkaSettings(port=port)) as broker:
        assert broker.bootstrap_servers == f"127.0.0.1:{port}"


async def test_kafka_for_embedded_creates_the_configured_topics() -> None:
    """Without bootstrap_servers, kafka_for starts Tansu and creates every configured topic."""
    settings = KafkaSettings(partitions=3)
    async with kafka_for(settings) as bootstrap:
        topics = await _topics(bootstrap)
    assert topics == dict.fromkeys(settings.topics.all(), 3)


async def test_kafka_for_external_starts_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    """With bootstrap_servers set, kafka_for starts no process and creates the topics on that broker."""
    tag = uuid.uuid4().hex[:8]
    names = TopicNames(**{f: f"ext-{f}-{tag}" for f in TopicNames.model_fields})
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topics=names, tansu_bin=tmp_path / "absent")
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    try:
        async with kafka_for(settings) as bootstrap:
            assert bootstrap == kafka_bootstrap
            assert {p.pid for p in me.children(recursive=True)} == before
            topics = await _topics(bootstrap)
        assert set(names.all()) <= set(topics)
    finally:
        await delete_topics(kafka_bootstrap, names.all())


async def test_ensure_topics_is_idempotent(kafka_bootstrap: str) -> None:
    """Creating existing topics succeeds and reports only the new ones as created."""
    name = f"idem-{uuid.uuid4().hex[:8]}"
    try:
        assert await ensure_topics(kafka_bootstrap, [name], 2) == [name]
        assert await ensure_topics(kafka_bootstrap, [name, name], 2) == []
        assert (await _topics(kafka_bootstrap))[name] == 2
    finally:
        await delete_topics(kafka_bootstrap, [name])
    assert name not in await _topics(kafka_bootstrap)


async def test_crash_after_start_is_logged_and_seen_by_wait() -> None:
    """A broker that dies while running is logged as broker_exited and wait() returns its code."""
    async with EmbeddedBroker(KafkaSettings()) as broker:
        assert broker.pid is not None
        with capture_logs() as logs:
            os.kill(broker.pid, signal.SIGKILL)
            assert await broker.wait() == -signal.SIGKILL
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["broker_exited"]
        with pytest.raises(BrokerError, match="not running"):
            _ = broker.bootstrap_servers


async def test_wildcard_host_advertises_the_machine_name() -> None:
    """Listening on 0.0.0.0 advertises this host's name and is reachable on loopback."""
    async with EmbeddedBroker(KafkaSettings(host="0.0.0.0")) as broker:
        host, _, port = broker.bootstrap_servers.rpartition(":")
        assert host == socket.getfqdn()
        assert await _topics(f"127.0.0.1:{port}") == {}


class _LineSignal(io.StringIO):
    """A text stream that sets an event when a full line has been written."""

    def __init__(self) -> None:
        super().__init__()
        self.line = asyncio.Event()

    def write(self, s: str) -> int:
        n = super().write(s)
        if "\n" in self.getvalue():
            self.line.set()
        return n


async def test_run_broker_forever_prints_address_and_stops_on_event() -> None:
    """The broker CLI prints a reachable host:port and returns once the stop event is set."""
    out = _LineSignal()
    stop = asyncio.Event()
    task = asyncio.create_task(run_broker_forever(KafkaSettings(), stop, out))
    try:
        async with asyncio.timeout(30):
            await out.line.wait()
        address = out.getvalue().strip()
        assert "dc.fragments" in await _topics(address)
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


async def test_run_broker_forever_fails_when_the_broker_dies() -> None:
    """If Tansu exits before the stop event, the broker command raises instead of hanging."""
    out = _LineSignal()
    task = asyncio.create_task(run_broker_forever(KafkaSettings(), asyncio.Event(), out))
    async with asyncio.timeout(30):
        await out.line.wait()
    url = "tcp://" + out.getvalue().strip()
    (tansu,) = [p for p in psutil.Process().children() if url in p.cmdline()]
    tansu.kill()
    with pytest.raises(BrokerError, match="exited with code"):
        async with asyncio.timeout(30):
            await task


async def test_run_broker_forever_refuses_an_external_broker() -> None:
    """The broker command with bootstrap_servers set explains there is nothing to start."""
    with pytest.raises(BrokerError, match="only runs the embedded broker"):
        await run_broker_forever(KafkaSettings(bootstrap_servers="kafka:9092"), asyncio.Event())
