"""Several datacenters on one set of topics (issue 28 item 1, DESIGN §4): three workloads replayed as datacenters
``ams``, ``fra`` and ``par`` (``opendt replay --datacenter``) into the same topics of two partitions through the
real broker; ``ams`` and ``fra`` share partition 0 (the partition function), ``par`` has partition 1. Twins of
``ams`` and ``par`` (``opendt run --no-replay --datacenter``) each read only their partition, skip the other
datacenter's records (heartbeats included) and give the results of their workload replayed alone, unnamed, on
topics of its own (1e-9); their run ids name their datacenter, and a calibrated topology one twin publishes on
the shared ``sim.topology`` never reaches the other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from opendt.clock import SystemClock
from opendt.daemon import run_daemon
from opendt.kafka.client import datacenter_args, make_producer
from opendt.models.datacenter import partition_for
from opendt.models.messages import DATACENTER_KEY, encode_sim_topology
from opendt.models.patch import apply_patch
from opendt.settings import KafkaSettings, Settings, TopicNames
from opendt.stream.replay import ReplayProducer
from opendt.twin.status import TwinState
from opendt.workload import load_workload

from .. import runfiles
from .conftest import max_rel_diff, read_results, write_small_workload

PARTITIONS = 2


async def _twin(settings: Settings) -> TwinState:
    """Run a daemon until every window of its stream is simulated (the replay's final heartbeat)."""
    state, stop = TwinState(), asyncio.Event()
    async with asyncio.timeout(180), asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        while state.loop is None or not state.loop.done.is_set():
            assert not daemon.done(), "the daemon stopped"
            await asyncio.sleep(0.05)
        stop.set()
    assert daemon.result() == 0
    return state


async def _replay(kafka: KafkaSettings, workload: Path, datacenter: str, base: Settings) -> None:
    producer = make_producer(kafka.bootstrap_servers or "", kafka)
    await producer.start()
    try:
        await ReplayProducer(
            load_workload(workload), producer, kafka.topics, base.replay, SystemClock(), datacenter=datacenter
        ).run()
    finally:
        await producer.stop()


async def _publish_foreign_topology(kafka: KafkaSettings, workload: Path) -> None:
    """A simulated topology of ams (a far higher idle power) on the shared sim.topology, as ams's calibrator
    would publish it: par's twin must ignore it."""
    other = apply_patch(load_workload(workload).topology, {"cpuPowerModel.idlePower": 150.0})
    producer = make_producer(kafka.bootstrap_servers or "", kafka)
    await producer.start()
    try:
        await producer.send_and_wait(
            kafka.topics.sim_topology,
            encode_sim_topology(7, "calibrator", 0, "ams's calibration", other),
            key=DATACENTER_KEY,
            **await datacenter_args(producer, kafka.topics.sim_topology, "ams"),
        )
    finally:
        await producer.stop()


async def shared_topics_check(make: Callable[[Path], Settings], shared: TopicNames, tmp_path: Path) -> None:
    """The check on any broker: ``make(workload)`` gives a replaying daemon's settings on topics of its own,
    ``shared`` are topics of :data:`PARTITIONS` partitions."""
    assert (
        partition_for("ams", PARTITIONS)
        == partition_for("fra", PARTITIONS)
        != partition_for("par", PARTITIONS)
    )
    workloads = {
        dc: write_small_workload(tmp_path / dc, tasks=10, seed=seed, hours=0.5)
        for dc, seed in (("ams", 3), ("fra", 5), ("par", 11))
    }
    # each alone, unnamed, on topics of its own: the reference
    refs = {}
    for dc in ("ams", "par"):
        alone = make(workloads[dc]).model_copy(update={"data_dir": tmp_path / f"alone-{dc}"})
        await _twin(alone)
        refs[dc] = read_results(alone.data_dir)[0]

    base = make(workloads["ams"])
    kafka = base.kafka.model_copy(update={"topics": shared, "partitions": PARTITIONS})
    for dc in ("ams", "fra", "par"):  # the datacenters stream one after the other; the twins read them back
        await _replay(kafka, workloads[dc], dc, base)

    for dc in ("ams", "par"):
        if dc == "par":
            await _publish_foreign_topology(kafka, workloads["ams"])
        mine = base.model_copy(
            update={
                "kafka": kafka.model_copy(update={"datacenter": dc}),
                "replay": base.replay.model_copy(update={"enabled": False}),
                "data_dir": tmp_path / "fleet",
            }
        )
        state = await _twin(mine)
        assert state.run_id.startswith(f"{dc}-"), state.run_id
        windows = state.snapshot()["windows"]
        # ams shares its partition with fra: fra's records (and heartbeats) are skipped; par's is its own
        assert (windows["other_datacenters"] > 0) == (dc == "ams"), windows
        run = tmp_path / "fleet" / "runs" / state.run_id
        got = runfiles.agg(run)
        assert set(runfiles.journal(run)["status"].to_list()) == {"ok"}
        assert got.height == refs[dc].height, (dc, got.height, refs[dc].height)
        assert max_rel_diff(got, refs[dc]) <= 1e-9, dc
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "fleet" / "runs").iterdir()) == ["ams", "par"]


async def test_datacenters_share_topics_and_each_twin_keeps_its_own(
    daemon_settings: Callable[..., Settings], topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    """On the embedded Tansu (Apache Kafka: tests/pipeline/test_apache_kafka.py)."""
    shared = TopicNames(
        **{k: topic_factory(k.replace("_", ""), partitions=PARTITIONS) for k in TopicNames.model_fields}
    )
    await shared_topics_check(daemon_settings, shared, tmp_path)
