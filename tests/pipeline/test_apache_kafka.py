"""The twin against a real Apache Kafka 4.x broker in KRaft mode (issue 24 item 4), fetched from Maven Central
and started by the tests themselves (tests/apache_kafka.py): the same results as on Tansu, over SASL_SSL with
SCRAM-SHA-256/512 and a certificate made in the test, a wrong password and a missing topic as one line and
exit 2, and a foreign producer (Apache Kafka's own kafka-console-producer) feeding a --no-replay twin to the
replay's results. Skipped when Java 17+, openssl or the jars are unavailable."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from opendt.daemon import run_daemon
from opendt.kafka.admin import TopicError, ensure_topics
from opendt.kafka.client import make_consumer, make_producer
from opendt.kafka.security import KafkaAccessError, check_kafka, client_options
from opendt.models.messages import DATACENTER_KEY, encode_heartbeat, encode_topology_message
from opendt.settings import ApiSettings, KafkaSettings, ReplaySettings, Settings, TopicNames
from opendt.stream.replay import encode_chunk, event_order, streams_of
from opendt.workload import load_workload

from .. import apache_kafka
from .conftest import last_window_end_ms, max_rel_diff, one_shot, read_results, write_small_workload
from .test_datacenters import PARTITIONS, shared_topics_check

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def apache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[apache_kafka.ApacheKafka]:
    """One Apache Kafka broker for the module: PLAINTEXT and SASL_SSL (SCRAM) listeners."""
    reason = apache_kafka.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with apache_kafka.ApacheKafka(tmp_path_factory.mktemp("apache-kafka")) as broker:
        yield broker


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_workload(tmp_path_factory.mktemp("wl") / "wl")


def _topics() -> TopicNames:
    tag = uuid.uuid4().hex[:8]
    return TopicNames(**{k: f"{v}-{tag}" for k, v in TopicNames().model_dump().items()})


def _settings(data: Path, kafka: KafkaSettings, workload: Path, *, replay: bool = True) -> Settings:
    return Settings(
        kafka=kafka,
        replay=ReplaySettings(enabled=replay, workload=workload, speed="max", heartbeat_s=60),
        api=ApiSettings(port=0),
        data_dir=data,
    )


def _sasl(apache: apache_kafka.ApacheKafka, mechanism: str, password: str, **kw: object) -> KafkaSettings:
    return KafkaSettings.model_validate(
        {
            "bootstrap_servers": apache.sasl_ssl,
            "topics": _topics(),
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "sasl_username": apache_kafka.USER,
            "sasl_password": password,
            "ssl_cafile": apache.cafile,
        }
        | kw
    )


@pytest.fixture(scope="module")
def apache_run(
    apache: apache_kafka.ApacheKafka, workload: Path, tmp_path_factory: pytest.TempPathFactory
) -> pl.DataFrame:
    """agg_results of the twin replaying the workload through Apache Kafka (PLAINTEXT)."""
    data = tmp_path_factory.mktemp("apache-run")
    kafka = KafkaSettings(bootstrap_servers=apache.plaintext, topics=_topics())
    code = asyncio.run(
        asyncio.wait_for(run_daemon(_settings(data, kafka, workload), exit_when_done=True), 180)
    )
    assert code == 0
    agg, windows = read_results(data)
    assert windows["status"].to_list() == ["ok"] * windows.height
    return agg


async def test_results_equal_tansu(
    apache_run: pl.DataFrame, daemon_settings: Callable[..., Settings], workload: Path
) -> None:
    """The same workload replayed through Apache Kafka and through the embedded Tansu: identical results."""
    settings = daemon_settings(workload)
    async with asyncio.timeout(120):
        assert await run_daemon(settings, exit_when_done=True) == 0
    tansu, _ = read_results(settings.data_dir)
    assert tansu.height > 0
    assert apache_run.equals(tansu)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_ssl_scram(
    apache: apache_kafka.ApacheKafka, workload: Path, tmp_path: Path, mechanism: str
) -> None:
    """The twin over SASL_SSL (SCRAM, the broker's certificate signed by a CA made in the test, hostname
    checked): every window simulated, the results those of the one-shot engine (as on Tansu)."""
    settings = _settings(tmp_path / "data", _sasl(apache, mechanism, apache_kafka.PASSWORD), workload)
    async with asyncio.timeout(180):
        assert await run_daemon(settings, exit_when_done=True) == 0
    agg, windows = read_results(settings.data_dir)
    assert windows["status"].to_list() == ["ok"] * windows.height
    ref = one_shot(workload, last_window_end_ms(windows))
    assert agg["timestamp"].to_list() == ref["timestamp"].to_list()
    assert max_rel_diff(agg, ref) <= 1e-6


async def test_mutual_tls(apache: apache_kafka.ApacheKafka) -> None:
    """SSL with a client certificate (kafka.ssl_certfile/keyfile): the start-up check passes, topics are
    created, a record goes through the twin's producer and consumer; without the certificate the broker
    refuses the handshake and the check says so in one line."""
    cert, key = apache.client_cert
    settings = KafkaSettings(
        bootstrap_servers=apache.mtls,
        security_protocol="SSL",
        ssl_cafile=apache.cafile,
        ssl_certfile=cert,
        ssl_keyfile=key,
        topics=_topics(),
    )
    await check_kafka(settings)
    topic = settings.topics.tasks
    assert await ensure_topics(apache.mtls, [topic], 1, security=client_options(settings)) == [topic]
    async with make_producer(apache.mtls, settings) as producer:
        await producer.send_and_wait(topic, b'{"heartbeat": "2024-01-01T00:00:00Z"}')
    consumer = make_consumer(apache.mtls, [topic], None, settings)
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            got = await consumer.getone()
    finally:
        await consumer.stop()
    assert got.value == b'{"heartbeat": "2024-01-01T00:00:00Z"}'
    anonymous = settings.model_copy(update={"ssl_certfile": None, "ssl_keyfile": None})
    with pytest.raises(KafkaAccessError) as e:
        await check_kafka(anonymous.model_copy(update={"request_timeout_s": 10.0}))
    assert "\n" not in str(e.value)
    assert apache.mtls in str(e.value)


def _opendt_run(kafka: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env |= {f"OPENDT_KAFKA__{k.upper()}": v for k, v in kafka.items()}
    env |= {"OPENDT_API__PORT": "0", "OPENDT_LOG__FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "opendt", "run", "--no-replay", "--data-dir", str(tmp_path / "data")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_wrong_password_exits_2_with_one_line(apache: apache_kafka.ApacheKafka, tmp_path: Path) -> None:
    """`opendt run` with a wrong SCRAM password: exit 2, one line on stderr naming the authentication
    failure and the user, the password nowhere in the output."""
    wrong = "wrong-" + uuid.uuid4().hex
    done = _opendt_run(
        {
            "bootstrap_servers": apache.sasl_ssl,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": apache_kafka.USER,
            "sasl_password": wrong,
            "ssl_cafile": str(apache.cafile),
        },
        tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "authentication failed" in lines[0]
    assert apache_kafka.USER in lines[0]
    assert wrong not in done.stdout + done.stderr


def test_create_topics_false_names_the_missing_topic(
    apache: apache_kafka.ApacheKafka, tmp_path: Path
) -> None:
    """kafka.create_topics false against a cluster that has every topic but dc.carbon: exit 2, one line
    naming dc.carbon (and no other), and the twin created nothing."""
    topics = _topics()
    present = [t for t in topics.all() if t != topics.carbon]
    asyncio.run(ensure_topics(apache.plaintext, present, 1))
    env = {"bootstrap_servers": apache.plaintext, "create_topics": "false"}
    env |= {f"topics__{k}": v for k, v in topics.model_dump().items()}
    done = _opendt_run(env, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert topics.carbon in lines[0]
    assert not any(t in lines[0] for t in present)
    created = asyncio.run(ensure_topics(apache.plaintext, [topics.carbon], 1))
    assert created == [topics.carbon]  # it was still missing: the twin did not create it


# --- a producer that is not ours ---------------------------------------------------------------------------


def _console_lines(workload: Path, topics: TopicNames) -> dict[str, list[str]]:
    """Per topic, the lines kafka-console-producer reads (``headers<TAB>key<TAB>value``, ``<null>`` for a
    null key): the replay's records in time order with a heartbeat every 60 s of trace time and a final one,
    the physical topology first."""
    wl = load_workload(workload)
    source = wl.topology.clusters[0].powerSource.name
    firsts = [int(f["submission_ms"].min()) for f in (wl.tasks, wl.fragments)]  # type: ignore[arg-type]
    assert wl.consumption is not None
    firsts.append(int(wl.consumption["timestamp_ms"].min()))  # type: ignore[arg-type]
    first_ms = min(firsts)
    streams = streams_of(wl, source, first_ms=first_ms)
    records = encode_chunk(streams, event_order(streams))
    head = "content-type:application/json"
    out: dict[str, list[str]] = {
        topics.topology: [
            f"{head}\t{DATACENTER_KEY.decode()}\t{encode_topology_message(first_ms, wl.topology).decode()}"
        ]
    }
    end_ms = max(wl.end_ms, int(records["t"].max()))  # type: ignore[arg-type]
    for i, s in enumerate(streams):
        mine = records.filter(pl.col("stream") == i)
        lines = []
        next_hb = (first_ms // 60_000 + 1) * 60_000
        for t, key, value in mine.select("t", "key", "value").iter_rows():
            while t >= next_hb:
                lines.append(f"{head}\t<null>\t{encode_heartbeat(next_hb).decode()}")
                next_hb += 60_000
            lines.append(f"{head}\t{key}\t{value}")
        while next_hb <= end_ms:
            lines.append(f"{head}\t<null>\t{encode_heartbeat(next_hb).decode()}")
            next_hb += 60_000
        lines.append(f"{head}\t<null>\t{encode_heartbeat(end_ms, final=True).decode()}")
        out[getattr(topics, s.kind)] = lines
    return out


def _console_produce(apache: apache_kafka.ApacheKafka, topic: str, lines: list[str]) -> None:
    exe = apache_kafka.java()
    assert exe is not None
    props = {
        "parse.key": "true",
        "key.separator": "\t",
        "parse.headers": "true",
        "headers.delimiter": "\t",
        "headers.separator": ",",
        "headers.key.separator": ":",
        "null.marker": "<null>",
    }
    cmd = [
        exe, "-Xmx256m", "-cp", f"{apache_kafka.LIBS}/*", "org.apache.kafka.tools.ConsoleProducer",
        "--bootstrap-server", apache.plaintext, "--topic", topic,
        *[a for k, v in props.items() for a in ("--property", f"{k}={v}")],
    ]  # fmt: skip
    done = subprocess.run(
        cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_console_producer_feeds_a_no_replay_twin(
    apache: apache_kafka.ApacheKafka, apache_run: pl.DataFrame, workload: Path, tmp_path: Path
) -> None:
    """1. Apache Kafka's kafka-console-producer (JSON lines, parse.key, a content-type header, null keys for
    heartbeats) writes the workload's topology, carbon, power, tasks and fragments into fresh topics; 2. a
    --no-replay twin reads them: its results equal those of the replay through the same broker."""
    topics = _topics()
    asyncio.run(ensure_topics(apache.plaintext, topics.all(), 1))
    for topic, lines in _console_lines(workload, topics).items():
        _console_produce(apache, topic, lines)
    kafka = KafkaSettings(bootstrap_servers=apache.plaintext, topics=topics)
    settings = _settings(tmp_path / "data", kafka, tmp_path / "no-such-workload", replay=False)
    assert asyncio.run(asyncio.wait_for(run_daemon(settings, exit_when_done=True), 180)) == 0
    agg, windows = read_results(settings.data_dir)
    assert windows["status"].to_list() == ["ok"] * windows.height
    assert agg.equals(apache_run)


async def _produce_lines(bootstrap: str, lines_by_topic: dict[str, list[str]]) -> None:
    """The console producer's lines, sent with the twin's producer (``headers<TAB>key<TAB>value``)."""
    async with make_producer(bootstrap, KafkaSettings(bootstrap_servers=bootstrap)) as producer:
        for topic, lines in lines_by_topic.items():
            for line in lines:
                head, key, value = line.split("\t")
                name, _, header = head.partition(":")
                await producer.send(
                    topic,
                    value.encode(),
                    key=None if key == "<null>" else key.encode(),
                    headers=[(name, header.encode())],
                )


def test_the_readme_acls_suffice(
    apache: apache_kafka.ApacheKafka, apache_run: pl.DataFrame, workload: Path, tmp_path: Path
) -> None:
    """Under Apache Kafka's StandardAuthorizer, a principal with exactly the README's ACLs (create_topics
    false: no Create) runs a --no-replay twin to the replay's results; without Create it cannot make a
    topic (the authorizer is on)."""
    topics = _topics()
    asyncio.run(ensure_topics(apache.plaintext, topics.all(), 1))
    asyncio.run(_produce_lines(apache.plaintext, _console_lines(workload, topics)))
    user = f"User:{apache_kafka.LIMITED}"
    inputs = [topics.tasks, topics.fragments, topics.power, topics.carbon, topics.topology]
    apache.allow(user, ["Read", "Describe"], [a for t in inputs for a in ("--topic", t)])
    apache.allow(user, ["Read", "Write", "Describe"], ["--topic", topics.sim_topology])
    apache.allow(user, ["Write", "Describe"], ["--topic", topics.sim_results, "--topic", topics.dead_letter])
    apache.allow(user, ["Read"], ["--group", "opendt-twin-"], prefixed=True)
    kafka = _sasl(apache, "SCRAM-SHA-512", apache_kafka.PASSWORD, sasl_username=apache_kafka.LIMITED)
    kafka = kafka.model_copy(update={"topics": topics, "create_topics": False})
    with pytest.raises(TopicError):
        asyncio.run(
            ensure_topics(
                apache.sasl_ssl, [f"not-allowed-{uuid.uuid4().hex[:6]}"], 1, security=client_options(kafka)
            )
        )
    settings = _settings(tmp_path / "data", kafka, tmp_path / "no-such-workload", replay=False)
    assert asyncio.run(asyncio.wait_for(run_daemon(settings, exit_when_done=True), 180)) == 0
    agg, windows = read_results(settings.data_dir)
    assert windows["status"].to_list() == ["ok"] * windows.height
    assert agg.equals(apache_run)


async def test_datacenters_share_topics(apache: apache_kafka.ApacheKafka, tmp_path: Path) -> None:
    """Several datacenters on one set of topics (tests/pipeline/test_datacenters.py) on Apache Kafka."""
    shared = _topics()
    await ensure_topics(apache.plaintext, list(shared.model_dump().values()), PARTITIONS)

    def make(workload: Path) -> Settings:
        return _settings(
            tmp_path / "data", KafkaSettings(bootstrap_servers=apache.plaintext, topics=_topics()), workload
        )

    await shared_topics_check(make, shared, tmp_path)
