"""Builds the daemon's components from :class:`~opendt.settings.Settings` and connects them.

One read of :func:`build_twin` shows the whole process: the broker (embedded or external), the Kafka
producer and consumer, the replay producer (the datacenter stand-in), the window-accumulating consumer, the
window loop with its engine worker and hooks (calibrator, kept history, optimizer), the topology writer and
listener, the scenario runner, the SLO watcher and the API. Resources are entered into the caller's
``AsyncExitStack`` (released in reverse order); nothing runs until the supervisor (:mod:`opendt.daemon`)
starts the returned :meth:`Twin.runners` in its TaskGroup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer

from opendt.api.app import serve_api
from opendt.api.readmodel import TwinView
from opendt.calibration.component import Calibrator, calibrator_for
from opendt.clock import SystemClock
from opendt.kafka.broker import BrokerError, EmbeddedBroker, kafka_broker_for
from opendt.kafka.client import DeadLetter, make_consumer, make_producer
from opendt.models.messages import DATACENTER_KEY, encode_sim_topology
from opendt.optimizer.component import Optimizer
from opendt.optimizer.journal import OptimizerJournal
from opendt.optimizer.llm import make_strategy
from opendt.optimizer.slo import SloError, SloWatcher
from opendt.settings import ConfigError, Settings
from opendt.stream.consumer import ClosedWindow, WindowConsumer
from opendt.stream.listener import TopologyListener
from opendt.stream.replay import ReplayProducer, ReplayProgress
from opendt.twin.history import TwinHistory
from opendt.twin.hooks import HookChain
from opendt.twin.loop import WindowLoop
from opendt.twin.results import ResultStore
from opendt.twin.run import run_id_for
from opendt.twin.scenarios import ScenarioRunner
from opendt.twin.status import TwinState, WorkloadInfo
from opendt.twin.topology import SimTopology, TopologyBox, TopologyWriter
from opendt.worker.client import TwinEngine
from opendt.worker.pool import CandidatePool
from opendt.workload import load_workload

log = structlog.get_logger(component="daemon")

CLOSE_TIMEOUT_S = 5.0


async def bounded(close: Callable[[], Awaitable[object]], what: str) -> None:
    """A release step that cannot hang shutdown (a Kafka client whose broker is gone retries for long)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await close()
    except TimeoutError:
        log.warning("close_timeout", what=what, timeout_s=CLOSE_TIMEOUT_S)


@dataclass
class Twin:
    """The built components of one daemon (nothing running yet)."""

    run_dir: Path
    producer: AIOKafkaProducer
    broker: EmbeddedBroker | None
    consumer: WindowConsumer
    loop: WindowLoop
    replay: ReplayProducer | None
    listener: TopologyListener
    calibrator: Calibrator | None
    slo: SloWatcher | None
    optimizer: Optimizer | None

    def runners(self) -> list[Coroutine[Any, Any, None]]:
        """The coroutines the supervisor runs in its TaskGroup besides the replay producer (which it cancels
        first at shutdown); each runs until done or cancelled."""
        out: list[Coroutine[Any, Any, None]] = [self.consumer.run(), self.loop.run(), self.listener.run()]
        out.extend(c.run() for c in (self.calibrator, self.slo, self.optimizer) if c is not None)
        if self.broker is not None:
            out.append(_watch_broker(self.broker))
        return out


async def _watch_broker(broker: EmbeddedBroker) -> None:
    """The embedded broker must outlive the daemon's components: its exit is a daemon failure."""
    code = await broker.wait()
    raise BrokerError(f"the embedded Kafka broker exited (code {code}) while the twin was running")


def _slo_watcher(settings: Settings, run_dir: Path) -> SloWatcher | None:
    """The SLOs from ``optimizer.slo_path`` (or the run's live copy, written by PUT /api/slo), watched; a bad
    file is fatal only when the optimizer needs it."""
    opt = settings.optimizer
    try:
        return SloWatcher(opt.slo_path, interval_s=opt.slo_poll_s, live_path=run_dir / "slo.json")
    except SloError as e:
        if opt.enabled:
            raise ConfigError(str(e)) from None
        log.warning("slo_unavailable", path=str(opt.slo_path), error=str(e))
        return None


async def build_twin(settings: Settings, state: TwinState, stack: AsyncExitStack) -> Twin:
    """Build and connect every component; the API serves when this returns."""
    workload = await asyncio.to_thread(load_workload, settings.replay.workload)
    state.run_id = run_id_for(settings, workload)
    run_dir = Path(settings.data_dir) / "runs" / state.run_id
    state.run_dir = str(run_dir)
    store = ResultStore(run_dir)
    await asyncio.to_thread(store.load)
    state.workload = WorkloadInfo(
        path=str(workload.path),
        name=workload.meta.name,
        tasks=workload.tasks.height,
        fragments=workload.fragments.height,
        hosts=workload.topology.host_count,
        start_ms=workload.origin_ms,
        end_ms=workload.end_ms,
    )
    topics = settings.kafka.topics
    box = TopologyBox(workload.topology)
    if box.resume(store):
        log.info("topology_resumed", version=box.current.version, source=box.current.source)
    state.box = box

    bootstrap, broker = await stack.enter_async_context(kafka_broker_for(settings.kafka))
    state.bootstrap_servers = bootstrap
    producer = make_producer(bootstrap, settings.kafka)
    await producer.start()
    stack.push_async_callback(bounded, producer.stop, "producer")
    kconsumer = make_consumer(bootstrap, [], f"{settings.kafka.group_id}-{state.run_id}", settings.kafka)
    await kconsumer.start()
    stack.push_async_callback(bounded, kconsumer.stop, "consumer")
    queue: asyncio.Queue[ClosedWindow | None] = asyncio.Queue(maxsize=settings.windowing.queue_size)
    consumer = WindowConsumer(
        kconsumer,
        topics,
        settings.windowing.window_s * 1000,
        queue,
        dead_letter=DeadLetter(producer, topics.dead_letter),
    )
    state.windows = consumer

    async def publish_topology(sim: SimTopology) -> None:
        value = encode_sim_topology(sim.version, sim.source, sim.timestamp_ms, sim.reason, sim.topology)
        await producer.send_and_wait(topics.sim_topology, value, key=DATACENTER_KEY)

    async def publish_results(key: bytes, value: dict[str, object]) -> None:
        await producer.send(topics.sim_results, orjson.dumps(value), key=key)

    writer = TopologyWriter(box, publish_topology, lambda: state.watermark_or(workload.origin_ms))
    twin = TwinEngine(timeout_s=settings.simulation.timeout_s)
    calibrator = None
    if settings.calibration.enabled:
        calibrator = calibrator_for(
            settings, box, twin, workload.carbon, run_dir, writer=writer, is_durable=store.is_durable
        )
        state.calibration = calibrator
    api = settings.api
    history = TwinHistory(
        lambda: twin.snapshot(archive="running"),
        retention_ms=(api.whatif_max_range_s + api.whatif_snapshot_every_s) * 1000,
        snapshot_every_ms=api.whatif_snapshot_every_s * 1000,
    )
    scenario_pool = CandidatePool(api.whatif_workers, timeout_s=api.whatif_timeout_s)
    stack.push_async_callback(bounded, scenario_pool.stop, "scenario_pool")
    scenarios = ScenarioRunner(
        history,
        scenario_pool,
        export_interval_ms=settings.simulation.export_interval_s * 1000,
        carbon=workload.carbon,
        initial=workload.topology,
        max_queue=api.whatif_queue,
    )
    state.scenarios = scenarios
    slo = _slo_watcher(settings, run_dir)
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
            writer=writer,
            journal=OptimizerJournal(run_dir / "optimizer.jsonl"),
        )
        if resumed := optimizer.resume():
            log.info("optimizer_resumed", rounds=resumed, kept=optimizer.best is not None)
        state.optimizer = optimizer
    loop = WindowLoop(
        queue,
        twin,
        store,
        box,
        settings.simulation,
        workload.carbon,
        publish=publish_results,
        commit=consumer.commit_durable,
        hooks=HookChain(calibrator, history, optimizer),
    )
    state.loop = loop
    await publish_topology(
        SimTopology(0, "initial", "physical topology", workload.topology, workload.origin_ms)
    )
    replay = None
    if settings.replay.enabled:
        progress = ReplayProgress()
        state.replay = progress
        replay = ReplayProducer(workload, producer, topics, settings.replay, SystemClock(), progress)
    if settings.api.enabled:
        view = TwinView(
            store=store,
            measured=workload.consumption,
            box=box,
            writer=writer,
            calibration_view=None if calibrator is None else calibrator.view,
            calibration_series=None if calibrator is None else calibrator.series,
            calibration_rounds=None if calibrator is None else calibrator.rounds,
            scenarios=scenarios,
            slo=slo,
            optimizer=optimizer,
        )
        state.api_url = await stack.enter_async_context(serve_api(state, settings.api, view))
    return Twin(
        run_dir=run_dir,
        producer=producer,
        broker=broker,
        consumer=consumer,
        loop=loop,
        replay=replay,
        listener=TopologyListener(bootstrap, settings.kafka, box, state.counters),
        calibrator=calibrator,
        slo=slo,
        optimizer=optimizer,
    )
