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
from opendt.kafka.client import DeadLetter, datacenter_args, make_consumer, make_producer
from opendt.kafka.offsets import ConsumerOffsets
from opendt.kafka.security import client_options
from opendt.models.messages import DATACENTER_KEY, encode_sim_topology
from opendt.models.topology import Topology
from opendt.opendc.backends import opendc_backend
from opendt.opendc.pool import SimulationPool
from opendt.optimizer.component import Optimizer
from opendt.optimizer.journal import OptimizerJournal
from opendt.optimizer.llm import make_strategy
from opendt.optimizer.slo import SloError, SloWatcher
from opendt.settings import ConfigError, Settings
from opendt.stream.consumer import WindowConsumer
from opendt.stream.listener import TopologyListener
from opendt.stream.replay import ReplayProducer, ReplayProgress
from opendt.stream.resume import ClosedWindow
from opendt.twin.crosscheck import CrossCheck
from opendt.twin.history import TwinHistory
from opendt.twin.hooks import HookChain
from opendt.twin.liveness import Liveness, metadata_probe
from opendt.twin.loop import WindowLoop
from opendt.twin.opendc import OpenDCWindows
from opendt.twin.recovery import Recovery, can_rewind, durability_of
from opendt.twin.results import ResultStore
from opendt.twin.run import RunLock, identity, set_aside, write_run_json
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
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # our own shutdown is being cancelled: let it through
        # aiokafka's consumer.stop() re-raises the CancelledError of its own fetch tasks when the broker is
        # gone (it cancels them, then awaits them): not a cancellation of the daemon, which must go on to
        # report why it stops (a dead broker is exit 1 with daemon_failed, not 130)
        log.warning("close_cancelled", what=what)


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
    liveness: Liveness

    def runners(self) -> list[Coroutine[Any, Any, None]]:
        """The coroutines the supervisor runs in its TaskGroup besides the replay producer (which it cancels
        first at shutdown); each runs until done or cancelled."""
        out: list[Coroutine[Any, Any, None]] = [
            self.consumer.run(),
            self.loop.run(),
            self.listener.run(),
            self.liveness.run(),
        ]
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


async def build_twin(
    settings: Settings, state: TwinState, stack: AsyncExitStack, *, fresh: bool = False
) -> Twin:
    """Build and connect every component; the API serves when this returns. The workload directory is read
    only when the replay producer runs (``replay.enabled``): the twin itself learns everything from Kafka."""
    workload = None
    if settings.replay.enabled:
        workload = await asyncio.to_thread(load_workload, settings.replay.workload)
        state.workload = WorkloadInfo(
            path=str(workload.path),
            name=workload.meta.name,
            tasks=workload.tasks.height,
            fragments=workload.fragments.height,
            hosts=workload.topology.host_count,
            start_ms=workload.origin_ms,
            end_ms=workload.end_ms,
        )
    ident = await asyncio.to_thread(identity, settings, workload)
    state.run_id = ident.run_id
    run_dir = Path(settings.data_dir) / "runs" / ident.run_id
    state.run_dir = str(run_dir)
    lock = RunLock(run_dir)
    await asyncio.to_thread(lock.acquire)
    stack.callback(lock.release)
    if fresh and (moved := await asyncio.to_thread(set_aside, run_dir)) is not None:
        log.info("run_set_aside", run_id=ident.run_id, moved_to=str(moved))
        await asyncio.to_thread(lock.acquire)  # the lock file moved with the old directory
    store = ResultStore(run_dir)
    durability = durability_of(settings, run_dir)

    def rewind(kept: list[int], end_ms: int) -> bool:
        return can_rewind(durability, run_dir, kept, end_ms)

    await asyncio.to_thread(store.load, rewind=rewind)
    await asyncio.to_thread(write_run_json, run_dir, ident)
    if store.durable_count:
        log.info(
            "run_resumed",
            run_id=ident.run_id,
            run_dir=str(run_dir),
            windows_durable=store.durable_count,
            why="same input source and result settings (run.json); opendt run --fresh starts a new run",
        )
    topics = settings.kafka.topics
    box = TopologyBox(None if workload is None else workload.topology)
    if box.resume(store):
        log.info("topology_resumed", version=box.current.version, source=box.current.source)
    state.box = box
    twin = TwinEngine(
        timeout_s=settings.simulation.timeout_s, max_tail_ms=settings.simulation.max_tail_s * 1000
    )
    recovery = Recovery(
        durability,
        store,
        box,
        twin,
        export_interval_ms=settings.simulation.export_interval_s * 1000,
    )
    await asyncio.to_thread(recovery.load)
    resume = await asyncio.to_thread(
        recovery.stream_resume,
        external=settings.kafka.bootstrap_servers is not None,
        horizon_ms=settings.windowing.dedup_horizon_s * 1000,
        replay=workload is not None,
    )

    bootstrap, broker = await stack.enter_async_context(kafka_broker_for(settings.kafka))
    state.bootstrap_servers = bootstrap
    producer = make_producer(bootstrap, settings.kafka)
    await producer.start()
    stack.push_async_callback(bounded, producer.stop, "producer")
    kconsumer = make_consumer(bootstrap, [], f"{settings.kafka.group_id}-{state.run_id}", settings.kafka)
    await kconsumer.start()
    # Apache Kafka answers the start-up metadata request of a consumer without subscriptions with no topics
    # (Tansu: with all): load every topic now, or the window consumer finds its topics without partitions
    await kconsumer._client.force_metadata_update()
    stack.push_async_callback(bounded, kconsumer.stop, "consumer")
    queue: asyncio.Queue[ClosedWindow | None] = asyncio.Queue(maxsize=settings.windowing.queue_size)
    consumer = WindowConsumer(
        kconsumer,
        topics,
        settings.windowing.window_s * 1000,
        queue,
        dead_letter=DeadLetter(producer, topics.dead_letter),
        watermark_kinds=tuple(settings.windowing.watermark_topics),
        dedup_horizon_ms=settings.windowing.dedup_horizon_s * 1000,
        resume=resume,
        max_skew_ms=settings.windowing.max_skew_s * 1000,
        final_grace_s=settings.windowing.final_grace_s,
        idle_after_s=settings.windowing.idle_after_s,
        allowed_lateness_s=settings.windowing.allowed_lateness_s,
        jump_confirm=settings.windowing.jump_confirm,
        max_orphans=settings.windowing.max_orphans,
        # a live twin (no replay of a past trace): nothing is believed far ahead of the wall clock
        wall_ms=None if settings.replay.enabled else (lambda: int(SystemClock().time() * 1000)),
        datacenter=settings.kafka.datacenter,
    )
    state.windows = consumer
    state.offsets = ConsumerOffsets(kconsumer)

    async def publish_topology(sim: SimTopology) -> None:
        value = encode_sim_topology(sim.version, sim.source, sim.timestamp_ms, sim.reason, sim.topology)
        dc = await datacenter_args(producer, topics.sim_topology, settings.kafka.datacenter)
        await producer.send_and_wait(topics.sim_topology, value, key=DATACENTER_KEY, **dc)

    async def publish_results(key: bytes, value: dict[str, object]) -> None:
        dc = await datacenter_args(producer, topics.sim_results, settings.kafka.datacenter)
        await producer.send(topics.sim_results, orjson.dumps(value), key=key, **dc)

    writer = TopologyWriter(box, publish_topology, lambda: state.watermark_or(0))
    inputs, checkpoints = recovery.d.inputs, recovery.d.checkpoints
    calibrator = None
    if settings.calibration.enabled:
        calibrator = calibrator_for(
            settings,
            box,
            twin,
            run_dir,
            inputs=inputs,
            checkpoints=checkpoints,
            store=store,
            writer=writer,
            is_durable=store.is_durable,
        )
        state.calibration = calibrator
    api = settings.api
    history = TwinHistory(inputs, checkpoints)
    if not store.windows.is_empty():
        ends = store.windows["window_end"].dt.epoch("ms")
        history.resume(int(store.windows["window_start"].dt.epoch("ms").min()), int(ends.max()))  # type: ignore[arg-type]
    scenario_pool = CandidatePool(api.whatif_workers, timeout_s=api.whatif_timeout_s)
    stack.push_async_callback(bounded, scenario_pool.stop, "scenario_pool")
    scenarios = ScenarioRunner(
        history,
        scenario_pool,
        export_interval_ms=settings.simulation.export_interval_s * 1000,
        box=box,
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

    async def on_physical(topology: Topology, at_ms: int, first: bool) -> None:
        """The datacenter's hardware: the first topology is version 0; a new one becomes the base, with
        the calibrated values in effect re-applied and API/optimizer changes made for the old one dropped."""
        if first:
            await publish_topology(SimTopology(0, "initial", "physical topology", topology, at_ms))
            return
        base = topology if calibrator is None else calibrator.rebase(topology)
        dropped = box.current.source in ("api", "optimizer")
        log.info(
            "physical_topology_changed", at_ms=at_ms, dropped_override=dropped, hosts=topology.host_count
        )
        await writer.write(base, "physical", "new physical topology (dc.topology)", at_ms=at_ms)

    pool, opendc = None, None
    if settings.simulation.engine == "opendc" or settings.simulation.verify_every_s is not None:
        pool = SimulationPool.from_settings(settings.simulation)
        await pool.start()
        stack.push_async_callback(bounded, pool.stop, "simulation_pool")
    if settings.simulation.engine == "opendc":
        assert pool is not None
        opendc = OpenDCWindows(
            pool,
            opendc_backend(settings.simulation),
            inputs,
            run_dir,
            export_interval_s=settings.simulation.export_interval_s,
            every_windows=settings.simulation.opendc_every_windows,
        )
        await asyncio.to_thread(opendc.load)
    crosscheck = None
    if settings.simulation.verify_every_s is not None:
        assert pool is not None
        crosscheck = CrossCheck(
            pool,
            opendc_backend(settings.simulation),
            inputs,
            lambda: box.current.topology,
            run_dir,
            every_s=settings.simulation.verify_every_s,
            range_s=settings.simulation.verify_range_s,
            export_interval_s=settings.simulation.export_interval_s,
        )
        stack.push_async_callback(crosscheck.stop)  # before the pool stops (callbacks run in reverse)
    loop = WindowLoop(
        queue,
        twin,
        store,
        box,
        settings.simulation,
        publish=publish_results,
        commit=consumer.commit_durable,
        hooks=HookChain(calibrator, history, optimizer),
        on_physical=on_physical,
        recovery=recovery,
        opendc=opendc,
        crosscheck=crosscheck,
    )
    state.loop = loop
    replay = None
    if workload is not None:
        await publish_topology(SimTopology(0, "initial", "physical topology", workload.topology, 0))
        progress = ReplayProgress()
        state.replay = progress
        replay = ReplayProducer(
            workload,
            producer,
            topics,
            settings.replay,
            SystemClock(),
            progress,
            start_at_ms=None if resume is None else resume.next_start_ms,
            datacenter=settings.kafka.datacenter,
        )
    state.liveness = Liveness(
        metadata_probe(bootstrap, settings.api.health_probe_s, client_options(settings.kafka)),
        lambda: loop.busy_since,
        interval_s=settings.api.health_probe_s,
        probe_timeout_s=settings.api.health_probe_s,
        broker_limit_s=settings.api.health_broker_s,
        loop_limit_s=settings.api.health_loop_s,
        stream=lambda: (consumer.watermark_ms, consumer.stats.decoded + consumer.stats.malformed),
        stall_limit_s=settings.api.health_stall_s,
    )
    if settings.api.enabled:
        view = TwinView(
            store=store,
            box=box,
            writer=writer,
            calibration_view=None if calibrator is None else calibrator.view,
            calibration_series=None if calibrator is None else calibrator.series,
            calibration_rounds=None if calibrator is None else calibrator.rounds,
            scenarios=scenarios,
            slo=slo,
            optimizer=optimizer,
            divergence=None if crosscheck is None else crosscheck.series,
        )
        state.api_url = await stack.enter_async_context(serve_api(state, settings.api, view))
    # unwound first: queued or running what-ifs are cancelled (503) before the API waits for its handlers
    stack.push_async_callback(scenarios.close)
    return Twin(
        run_dir=run_dir,
        producer=producer,
        broker=broker,
        consumer=consumer,
        loop=loop,
        replay=replay,
        listener=TopologyListener(bootstrap, settings.kafka, box, state.counters),
        liveness=state.liveness,
        calibrator=calibrator,
        slo=slo,
        optimizer=optimizer,
    )
