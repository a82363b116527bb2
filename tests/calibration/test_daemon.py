"""The calibrator inside the daemon, on the real (session) broker, over the whole demo day."""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import polars as pl

from opendt.calibration.settings import CalibrationAxis, CalibrationSettings
from opendt.commands.demo import TRUE_CALIBRATION_FACTOR
from opendt.daemon import run_daemon
from opendt.kafka.client import make_consumer
from opendt.models.messages import SimTopologyMessage, decode
from opendt.settings import ApiSettings, KafkaSettings, ReplaySettings, Settings, TopicNames
from opendt.twin.status import TwinState

from .. import runfiles
from .conftest import DEMO

TOLERANCE = 0.5
"""The recovered calibrationFactor must lie within 6.5 ± 0.5 (the demo meter adds 1 % noise)."""


async def _sim_topology_messages(bootstrap: str, settings: Settings) -> list[SimTopologyMessage]:
    consumer = make_consumer(bootstrap, [settings.kafka.topics.sim_topology], None, settings.kafka)
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    out = []
    for recs in batches.values():
        for rec in recs:
            msg = decode("sim_topology", rec.key, rec.value)
            assert isinstance(msg, SimTopologyMessage)
            out.append(msg)
    return out


async def test_daemon_recovers_the_hidden_calibration_factor(
    kafka_bootstrap: str, unique_topic_names: Callable[[], TopicNames], tmp_path: Path
) -> None:
    """1. ``run_daemon`` with calibration enabled replays the demo day at max speed and exits 0; 2. every
    hour a round searches calibrationFactor 3…9 (+3 refinements) over the last 3 h; 3. the first eight
    rounds and the median over the rounds the model explains well (best MAPE < 1.5 %) are within 6.5 ± 0.5
    of the hidden factor (the published topology says 4); 4. winners are published on sim.topology (source
    calibrator, increasing versions) and the twin's rows carry them; 5. the status provider shows the last
    round."""
    topics = unique_topic_names()
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topics=topics),
        replay=ReplaySettings(workload=DEMO, speed="max"),
        api=ApiSettings(port=0),
        calibration=CalibrationSettings(
            enabled=True,
            lookback_s=3 * 3600,
            grid=[CalibrationAxis(parameter="cpuPowerModel.calibrationFactor", linspace=(3.0, 9.0, 7))],
            refine_steps=3,
        ),
        data_dir=tmp_path / "data",
    )
    state = TwinState()
    async with asyncio.timeout(240):
        assert await run_daemon(settings, exit_when_done=True, state=state) == 0
    run_dir = tmp_path / "data" / "runs" / state.run_id
    rounds = pl.read_parquet(run_dir / "calibration.parquet")
    assert rounds.height >= 20
    assert set(rounds["status"].to_list()) <= {"applied", "kept", "chosen"}
    values = rounds["value"].to_list()
    assert all(abs(v - TRUE_CALIBRATION_FACTOR) <= TOLERANCE for v in values[:8]), values[:8]
    good = rounds.filter(pl.col("winner_score") < 1.5)["value"].to_list()
    assert len(good) >= 10
    assert abs(statistics.median(good) - TRUE_CALIBRATION_FACTOR) <= TOLERANCE

    messages = [
        m for m in await _sim_topology_messages(kafka_bootstrap, settings) if m.source == "calibrator"
    ]
    applied = rounds.filter(pl.col("status") == "applied")
    assert [m.version for m in messages] == applied["version"].to_list()
    assert all("mape" in m.reason for m in messages)
    first = json.loads(applied["winner"][0])["cpuPowerModel.calibrationFactor"]
    assert {h.cpuPowerModel.calibrationFactor for c in messages[0].topology.clusters for h in c.hosts} == {
        first
    }
    agg = runfiles.agg(run_dir)
    assert set(applied["version"].to_list()) <= set(agg["topology_version"].unique().to_list())

    view = state.snapshot()["calibration"]
    assert view["rounds"] == rounds.height
    assert view["last_round"]["round"] == rounds["round"][-1]
    assert view["last_round"]["candidates"] >= 7
