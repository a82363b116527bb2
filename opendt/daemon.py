"""The supervisor: builds the components from Settings and runs them in one TaskGroup.

Shutdown is an injectable trigger (``shutdown_trigger``: an awaitable that returns when the daemon must stop;
the CLI passes ``stop_event.wait``, set by SIGINT/SIGTERM). Order: stop intake (replay and consumer), drain
the windows already closed up to ``SHUTDOWN_DRAIN_S``, cancel what is left, release resources in reverse
order of acquisition (AsyncExitStack). A crashing component cancels the others; the daemon exits 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer

from opendt.api.app import TwinView, serve_api
from opendt.calibration.component import calibrator_for
from opendt.clock import SystemClock
from opendt.kafka.broker import BrokerError, EmbeddedBroker, kafka_broker_for
from opendt.kafka.client import make_consumer, make_producer
from opendt.models.messages import (
    DATACENTER_KEY,
    MessageError,
    SimTopologyMessage,
    decode,
    encode_sim_topology,
    to_ms,
)
from opendt.models.topology import Topology
from opendt.optimizer.component import Optimizer
from opendt.optimizer.journal import OptimizerJournal
from opendt.optimizer.llm import make_strategy
from opendt.optimizer.slo import SloError, SloWatcher
from opendt.settings import ConfigError, Settings
from opendt.stream.consumer import ClosedWindow, WindowConsumer
from opendt.stream.replay import ReplayProducer, ReplayProgress
from opendt.twin.history import TwinHistory
from opendt.twin.hooks import HookChain
from opendt.twin.loop import WindowLoop
from opendt.twin.results import ResultStore
from opendt.twin.scenarios import ScenarioRunner
from opendt.twin.status import TwinState
from opendt.twin.topology import SimTopology, TopologyBox
from opendt.worker.client import TwinEngine
from opendt.worker.pool import CandidatePool
from opendt.workload import Workload, load_workload

log = structlog.get_logger(component="daemon")

SHUTDOWN_DRAIN_S = 4.0


class ShutdownRequested(Exception):
    """Raised inside the TaskGroup when the daemon must stop."""


def run_id_for(settings: Settings, workload: Workload) -> str:
    """Deterministic: the same workload and twin configuration resume the same run directory."""
    key = orjson.dumps(
        [
            str(workload.path.resolve()),
            settings.windowing.window_s,
            settings.simulation.export_interval_s,
            settings.simulation.engine,
            workload.topology.to_json_dict(),
        ]
    )
    return f"{workload.meta.name}-{hashlib.sha1(key, usedforsecurity=False).hexdigest()[:10]}"


async def run_daemon(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    exit_when_done: bool = False,
    state: TwinState | None = None,
) -> int:
    """Run the twin until the trigger fires or (``exit_when_done``) the last window is durable: exit 0.
    A component failure: exit 1, with the error logged."""
    state = state if state is not None else TwinState()
    failed: list[BaseException] = []
    try:
        await _supervise(settings, state, shutdown_trigger or asyncio.Event().wait, exit_when_done)
    except* Exception as eg:  # noqa: BLE001 - the daemon boundary: log every failure, exit 1
        failed.extend(eg.exceptions)
    if failed:
        state.status = "failed"
        for exc in failed:
            log.error("daemon_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return 1
    return 0


CLOSE_TIMEOUT_S = 5.0


async def _bounded(close: Callable[[], Awaitable[object]], what: str) -> None:
    """A release step that cannot hang shutdown (a Kafka client whose broker is gone retries for long)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await close()
    except TimeoutError:
        log.warning("close_timeout", what=what, timeout_s=CLOSE_TIMEOUT_S)


def _slo_watcher(settings: Settings) -> SloWatcher | None:
    """The SLOs from ``optimizer.slo_path``, watched; a bad file is fatal only when the optimizer needs it."""
    opt = settings.optimizer
    try:
        return SloWatcher(opt.slo_path, interval_s=opt.slo_poll_s)
    except SloError as e:
        if opt.enabled:
            raise ConfigError(str(e)) from None
        log.warning("slo_unavailable", path=str(opt.slo_path), error=str(e))
        return None


async def _watch_broker(broker: EmbeddedBroker) -> None:
    """The embedded broker must outlive the daemon's components: its exit is a daemon failure."""
    code = await broker.wait()
    raise BrokerError(f"the embedded Kafka broker exited (code {code}) while the twin was running")


async def _listen_topology(bootstrap: str, settings: Settings, box: TopologyBox, state: TwinState) -> None:
    """Follow ``sim.topology``: a newer version is taken by the simulator at its next window."""
    consumer = make_consumer(bootstrap, [settings.kafka.topics.sim_topology], None, settings.kafka)
    await consumer.start()
    try:
        async for rec in consumer:
            try:
                msg = decode("sim_topology", rec.key, rec.value)
            except MessageError as e:
                state.counters.malformed_messages += 1
                log.warning(
                    "message_malformed",
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                    reason=str(e),
                )
                continue
            assert isinstance(msg, SimTopologyMessage)
            if box.offer(
                SimTopology(msg.version, msg.source, msg.reason, msg.topology, to_ms(msg.timestamp))
            ):
                log.info("topology_received", version=msg.version, source=msg.source, reason=msg.reason)
    finally:
        await consumer.stop()


async def _supervise(
    settings: Settings, state: TwinState, trigger: Callable[[], Awaitable[object]], exit_when_done: bool
) -> None:
    t0 = time.monotonic()
    workload = await asyncio.to_thread(load_workload, settings.replay.workload)
    state.run_id = run_id_for(settings, workload)
    run_dir = Path(settings.data_dir) / "runs" / state.run_id
    store = ResultStore(run_dir)
    await asyncio.to_thread(store.load)
    state.workload = {
        "path": str(workload.path),
        "name": workload.meta.name,
        "tasks": workload.tasks.height,
        "fragments": workload.fragments.height,
        "hosts": workload.topology.host_count,
        "start_ms": workload.origin_ms,
        "end_ms": workload.end_ms,
    }
    topics = settings.kafka.topics
    box = TopologyBox(workload.topology)
    if box.resume(store):
        log.info("topology_resumed", version=box.current.version, source=box.current.source)
    queue: asyncio.Queue[ClosedWindow | None] = asyncio.Queue(maxsize=settings.windowing.queue_size)
    progress = ReplayProgress()
    async with AsyncExitStack() as stack:
        bootstrap, broker = await stack.enter_async_context(kafka_broker_for(settings.kafka))
        state.bootstrap_servers = bootstrap
        producer: AIOKafkaProducer = make_producer(bootstrap, settings.kafka)
        await producer.start()
        stack.push_async_callback(_bounded, producer.stop, "producer")
        kconsumer = make_consumer(bootstrap, [], f"{settings.kafka.group_id}-{state.run_id}", settings.kafka)
        await kconsumer.start()
        stack.push_async_callback(_bounded, kconsumer.stop, "consumer")
        windows = WindowConsumer(kconsumer, topics, settings.windowing.window_s * 1000, queue)

        async def publish_topology(topology: Topology, source: str, reason: str) -> int:
            """Publish a simulated topology on sim.topology; the simulator applies it at its next window."""
            version = box.next_version()
            await producer.send_and_wait(
                topics.sim_topology,
                encode_sim_topology(
                    version, source, state.watermark_or(workload.origin_ms), reason, topology
                ),
                key=DATACENTER_KEY,
            )
            return version

        async def publish(key: bytes, value: dict[str, object]) -> None:
            await producer.send(topics.sim_results, orjson.dumps(value), key=key)

        async def publish_calibrated(sim: SimTopology) -> None:
            await producer.send_and_wait(
                topics.sim_topology,
                encode_sim_topology(sim.version, sim.source, sim.timestamp_ms, sim.reason, sim.topology),
                key=DATACENTER_KEY,
            )

        twin = TwinEngine(timeout_s=settings.simulation.timeout_s)
        calibrator = None
        if settings.calibration.enabled:
            calibrator = calibrator_for(
                settings,
                box,
                twin,
                workload.carbon,
                run_dir,
                publish=publish_calibrated,
                is_durable=store.is_durable,
            )
            state.providers["calibration"] = calibrator.view
        api = settings.api
        history = TwinHistory(
            lambda: twin.snapshot(archive="running"),
            retention_ms=(api.whatif_max_range_s + api.whatif_snapshot_every_s) * 1000,
            snapshot_every_ms=api.whatif_snapshot_every_s * 1000,
        )
        scenario_pool = CandidatePool(api.whatif_workers, timeout_s=api.whatif_timeout_s)
        stack.push_async_callback(_bounded, scenario_pool.stop, "scenario_pool")
        scenarios = ScenarioRunner(
            history,
            scenario_pool,
            export_interval_ms=settings.simulation.export_interval_s * 1000,
            carbon=workload.carbon,
            initial=workload.topology,
            max_queue=api.whatif_queue,
        )
        state.providers["scenarios"] = scenarios.view
        slo = _slo_watcher(settings)
        optimizer = None
        if settings.optimizer.enabled:
            assert slo is not None  # _slo_watcher raises when the optimizer needs it
            optimizer = Optimizer(
                settings.optimizer,
                box,
                scenarios,
                slo,
                make_strategy(settings.optimizer),
                window_ms=settings.windowing.window_s * 1000,
                publish_topology=publish_topology,
                journal=OptimizerJournal(run_dir / "optimizer.jsonl"),
            )
            if resumed := optimizer.resume():
                log.info("optimizer_resumed", rounds=resumed, kept=optimizer.best is not None)
            state.providers["optimizer"] = optimizer.summary
        simulator = WindowLoop(
            queue,
            twin,
            store,
            box,
            settings.simulation,
            workload.carbon,
            publish=publish,
            commit=windows.commit_durable,
            hooks=HookChain(calibrator, history, optimizer),
        )
        _publish_views(state, progress, windows, simulator, store, box, run_dir)
        await producer.send_and_wait(
            topics.sim_topology,
            encode_sim_topology(0, "initial", workload.origin_ms, "physical topology", workload.topology),
            key=DATACENTER_KEY,
        )
        if settings.api.enabled:
            view = TwinView(
                store=store,
                measured=workload.consumption,
                box=box,
                publish_topology=publish_topology,
                calibration_view=None if calibrator is None else calibrator.view,
                calibration_series=None if calibrator is None else calibrator.series,
                calibration_rounds=None if calibrator is None else calibrator.rounds,
                scenarios=scenarios,
                slo=slo,
                optimizer=optimizer,
            )
            state.api_url = await stack.enter_async_context(serve_api(state, settings.api, view))
        state.status = "running"
        log.info(
            "daemon_started",
            run_id=state.run_id,
            run_dir=str(run_dir),
            workload=workload.meta.name,
            kafka=bootstrap,
            resumed_windows=store.durable_count,
            startup_s=round(time.monotonic() - t0, 3),
        )
        replay: asyncio.Task[None] | None = None

        async def stop_when(cause: Callable[[], Awaitable[object]], reason: str) -> None:
            await cause()
            log.info("shutdown_started", reason=reason)
            state.status = "stopping"
            if replay is not None:
                replay.cancel()
            windows.stop_intake()
            try:
                async with asyncio.timeout(SHUTDOWN_DRAIN_S):
                    await simulator.done.wait()
            except TimeoutError:
                log.warning("shutdown_drain_timeout", queued=queue.qsize())
            raise ShutdownRequested

        try:
            async with asyncio.TaskGroup() as tg:
                if settings.replay.enabled:
                    replay = tg.create_task(
                        ReplayProducer(
                            workload, producer, topics, settings.replay, SystemClock(), progress
                        ).run()
                    )
                tg.create_task(windows.run())
                tg.create_task(simulator.run())
                if calibrator is not None:
                    tg.create_task(calibrator.run())
                if slo is not None:
                    tg.create_task(slo.run())
                if optimizer is not None:
                    tg.create_task(optimizer.run())
                tg.create_task(_listen_topology(bootstrap, settings, box, state))
                tg.create_task(stop_when(trigger, "signal"))
                if broker is not None:
                    tg.create_task(_watch_broker(broker))
                if exit_when_done:
                    tg.create_task(stop_when(simulator.done.wait, "done"))
        except* ShutdownRequested:
            pass
        await _bounded(producer.flush, "producer_flush")
    state.status = "stopped"
    log.info(
        "daemon_stopped",
        run_id=state.run_id,
        windows=simulator.stats.windows_simulated,
        failed=simulator.stats.windows_failed,
        uptime_s=round(time.monotonic() - t0, 3),
    )


def _publish_views(
    state: TwinState,
    progress: ReplayProgress,
    windows: WindowConsumer,
    simulator: WindowLoop,
    store: ResultStore,
    box: TopologyBox,
    run_dir: Path,
) -> None:
    def sim_view() -> dict[str, Any]:
        lat = simulator.stats.latencies_s
        return {
            "windows_simulated": simulator.stats.windows_simulated,
            "windows_failed": simulator.stats.windows_failed,
            "windows_replayed": simulator.stats.windows_replayed,
            "windows_durable": store.durable_count,
            "last_window_end_ms": simulator.stats.last_window_end_ms,
            "latency_p50_s": round(statistics.median(lat), 4) if lat else None,
            "latency_p95_s": round(sorted(lat)[int(0.95 * (len(lat) - 1))], 4) if lat else None,
            "worker_restarts": simulator.twin.stats.restarts,
            "done": simulator.done.is_set(),
        }

    def windows_view() -> dict[str, Any]:
        ws = windows.windower.stats if windows.windower is not None else None
        return {
            "watermark_ms": windows.watermark_ms,
            "events": ws.events if ws else 0,
            "duplicates": ws.duplicates if ws else 0,
            "late": ws.late if ws else 0,
            "malformed": windows.stats.malformed,
            "queued": windows.out.qsize(),
        }

    def counters() -> dict[str, int]:
        return {
            "malformed_messages": state.counters.malformed_messages + windows.stats.malformed,
            "windows_simulated": simulator.stats.windows_simulated,
            "windows_failed": simulator.stats.windows_failed,
            "windows_skipped": simulator.stats.windows_replayed,
        }

    state.providers.update(
        counters=counters,
        watermark_ms=lambda: windows.watermark_ms,
        replay=progress.as_dict,
        simulation=sim_view,
        windows=windows_view,
        topology=lambda: {
            "version": box.current.version,
            "source": box.current.source,
            "reason": box.current.reason,
        },
        run_dir=lambda: str(run_dir),
    )
