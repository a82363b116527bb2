"""A real Apache Kafka 4.x broker in KRaft mode for the tests, from the jars `.ci/install-kafka` fetches from
Maven Central into ``.cache/kafka/<version>/libs``.

:class:`ApacheKafka` formats a fresh storage directory (with SCRAM users made at format time, ``--add-scram``)
and starts one combined broker+controller JVM with a PLAINTEXT listener, a SASL_SSL listener (SCRAM-SHA-256
and SCRAM-SHA-512, a server certificate signed by a CA both made here with the ``openssl`` CLI), an SSL
listener that requires a client certificate (mutual TLS, one signed by the same CA), and an internal
PLAINTEXT listener for the broker itself. :func:`unavailable` says why
it cannot run here (no Java 17+, no jars, no openssl), for a clean skip.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError

from opendt.kafka.broker import _die_with_parent_preexec, free_port

REPO = Path(__file__).resolve().parents[1]
VERSION = os.environ.get("KAFKA_VERSION", "4.1.1")
LIBS = REPO / ".cache" / "kafka" / VERSION / "libs"
USER = "opendt"
LIMITED = "limited"
"""A SCRAM user with no rights but the ACLs a test grants (:meth:`ApacheKafka.allow`); the others are super
users (the StandardAuthorizer is on)."""
PASSWORD = "scram-secret-" + uuid.uuid4().hex[:8]
STARTUP_S = 120.0
_LOG4J = """\
status = error
appender.err.type = Console
appender.err.name = ERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = ERR
"""


def java() -> str | None:
    """A ``java`` of version 17 or newer (Kafka 4.x brokers need 17), or None."""
    home = os.environ.get("JAVA_HOME")
    exe = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else None
    exe = exe or shutil.which("java")
    if exe is None:
        return None
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=60, check=False).stderr
    m = re.search(r'version "(\d+)', out)
    return exe if m and int(m.group(1)) >= 17 else None


def fetch() -> None:
    """Run `.ci/install-kafka` when the jars are not there (it never fails; a fetch takes about a minute)."""
    if not (LIBS / f"kafka_2.13-{VERSION}.jar").is_file():
        subprocess.run(["bash", str(REPO / ".ci" / "install-kafka")], timeout=960, check=False)


def unavailable() -> str | None:
    """Why Apache Kafka cannot run here, or None."""
    if java() is None:
        return "no Java 17+ (Apache Kafka 4.x brokers need it)"
    if shutil.which("openssl") is None:
        return "no openssl CLI (the SASL_SSL listener's certificate)"
    fetch()
    if not (LIBS / f"kafka_2.13-{VERSION}.jar").is_file():
        return f"Apache Kafka {VERSION} jars not in {LIBS} (bash .ci/install-kafka fetches them)"
    return None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, check=True, timeout=60)


def make_certificates(d: Path) -> tuple[Path, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (``client.pem`` with
    ``client.key``) signed by it: ``(ca.pem, keystore.pem)``."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=opendt-test-ca", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
             "-subj", "/CN=opendt-twin", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "2", cwd=d)  # fmt: skip
    keystore = d / "keystore.pem"
    keystore.write_text((d / "server.key").read_text() + (d / "server.pem").read_text())
    return d / "ca.pem", keystore


@dataclass
class ApacheKafka:
    """One KRaft broker+controller; :meth:`start` / :meth:`stop` (a context manager too)."""

    root: Path
    plaintext: str = ""
    """``host:port`` of the PLAINTEXT listener."""
    sasl_ssl: str = ""
    """``host:port`` of the SASL_SSL listener (SCRAM-SHA-256/512 user :data:`USER`/:data:`PASSWORD`)."""
    mtls: str = ""
    """``host:port`` of the SSL listener that requires a client certificate (:attr:`client_cert`)."""
    cafile: Path | None = None
    libs: Path = LIBS
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_cert(self) -> tuple[Path, Path]:
        """The client certificate and its key (PEM), signed by :attr:`cafile`'s CA."""
        tls = self.root / "tls"
        return tls / "client.pem", tls / "client.key"

    def _properties(self, ports: dict[str, int], keystore: Path) -> str:
        host = "127.0.0.1"
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{host}:{ports['CONTROLLER']}",
                "listeners=" + ",".join(f"{n}://{host}:{p}" for n, p in ports.items()),
                "advertised.listeners="
                + ",".join(f"{n}://{host}:{p}" for n, p in ports.items() if n != "CONTROLLER"),
                "listener.security.protocol.map=PLAIN:PLAINTEXT,SASL:SASL_SSL,MTLS:SSL,BROKER:PLAINTEXT,"
                "CONTROLLER:PLAINTEXT",
                "listener.name.mtls.ssl.client.auth=required",
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                f"super.users=User:ANONYMOUS;User:{USER};User:CN=opendt-twin",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={keystore.with_name('ca.pem')}",
                "inter.broker.listener.name=BROKER",
                "controller.listener.names=CONTROLLER",
                f"log.dirs={self.root / 'data'}",
                "num.partitions=1",
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
                f"listener.name.sasl.scram-sha-256.sasl.jaas.config={jaas}",
                f"listener.name.sasl.scram-sha-512.sasl.jaas.config={jaas}",
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={keystore}",
                "",
            ]
        )

    def _java(self, exe: str, *args: str) -> list[str]:
        return [
            exe, "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", *args,
        ]  # fmt: skip

    def start(self) -> ApacheKafka:
        exe = java()
        assert exe is not None
        self.root.mkdir(parents=True, exist_ok=True)
        self.cafile, keystore = make_certificates(self.root / "tls")
        ports = {name: free_port("127.0.0.1") for name in ("PLAIN", "SASL", "MTLS", "BROKER", "CONTROLLER")}
        config = self.root / "server.properties"
        config.write_text(self._properties(ports, keystore))
        (self.root / "log4j2.properties").write_text(_LOG4J)
        scram = [
            a
            for m in ("SCRAM-SHA-256", "SCRAM-SHA-512")
            for user in (USER, LIMITED)
            for a in ("--add-scram", f"{m}=[name={user},password={PASSWORD}]")
        ]
        cluster = uuid.uuid4().bytes.hex()[:22]
        subprocess.run(
            self._java(exe, "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(config), *scram),
            capture_output=True,
            check=True,
            timeout=120,
        )
        with (self.root / "broker.log").open("wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self._java(exe, "kafka.Kafka", str(config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent_preexec(),  # dies with the test process
            )
        self.plaintext = f"127.0.0.1:{ports['PLAIN']}"
        self.mtls = f"127.0.0.1:{ports['MTLS']}"
        self.sasl_ssl = f"127.0.0.1:{ports['SASL']}"
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"Apache Kafka exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", int(self.plaintext.rsplit(":", 1)[1])), 1):
                    pass
                if asyncio.run(_answers(self.plaintext)):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Apache Kafka did not answer within {STARTUP_S:.0f} s: {self.log_tail()}")

    def allow(
        self, principal: str, operations: list[str], resources: list[str], *, prefixed: bool = False
    ) -> None:
        """Grant ``operations`` on ``resources`` (``--topic NAME`` / ``--group NAME`` pairs, flattened) to
        ``principal`` with Apache Kafka's own kafka-acls (``org.apache.kafka.tools.AclCommand``)."""
        exe = java()
        assert exe is not None
        args = ["--bootstrap-server", self.plaintext, "--add", "--allow-principal", principal]
        args += [a for op in operations for a in ("--operation", op)] + resources
        if prefixed:
            args += ["--resource-pattern-type", "prefixed"]
        subprocess.run(
            self._java(exe, "org.apache.kafka.tools.AclCommand", *args),
            capture_output=True,
            check=True,
            timeout=120,
        )

    def log_tail(self) -> str:
        path = self.root / "broker.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


async def _answers(bootstrap: str) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except KafkaError:
        return False
    finally:
        await client.close()
