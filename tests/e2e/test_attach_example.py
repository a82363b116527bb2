"""README, "Attach your datacenter": the Python producer example, exactly as printed there, feeds a broker;
a --no-replay twin reading it simulates the hour it sent (12 windows) from those records."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from opendt.daemon import run_daemon
from opendt.kafka.admin import ensure_topics
from opendt.kafka.broker import EmbeddedBroker
from opendt.settings import ApiSettings, KafkaSettings, ReplaySettings, Settings, TopicNames

from .. import runfiles

REPO = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    """The first ```python block after the heading "### A producer in Python" of the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    head = text.index("### A producer in Python")
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, head)
    assert m is not None
    return m.group(1)


async def test_readme_producer_feeds_the_twin(tmp_path: Path) -> None:
    """1. a fresh broker with the default topics; 2. the README's example runs as a script (KAFKA=broker) and
    exits 0; 3. `run_daemon` with replay off and exit_when_done: 12 windows of 300 s from 2024-01-01T00:00Z,
    all ok, 60 tasks and 60 fragments, measured power 520 W at every sample, carbon 212.5 gCO2/kWh."""
    script = tmp_path / "producer.py"
    code = readme_example()
    assert 25 <= len(code.splitlines()) <= 40
    script.write_text(code)
    async with EmbeddedBroker(KafkaSettings()) as broker:
        bootstrap = broker.bootstrap_servers
        await ensure_topics(bootstrap, TopicNames().all(), 1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")} | {"KAFKA": bootstrap}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-2000:]
        settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=bootstrap),
            replay=ReplaySettings(enabled=False, workload=tmp_path / "none"),
            api=ApiSettings(port=0),
            data_dir=tmp_path / "data",
        )
        async with asyncio.timeout(120):
            assert await run_daemon(settings, exit_when_done=True) == 0
    (run,) = (tmp_path / "data" / "runs").iterdir()
    windows = runfiles.journal(run)
    starts = windows["window_start"].dt.epoch("ms").to_list()
    assert starts == [1_704_067_200_000 + i * 300_000 for i in range(12)]
    assert windows["status"].to_list() == ["ok"] * 12
    assert windows["tasks"].sum() == 60
    assert windows["fragments"].sum() == 60
    measured = runfiles.measured(run)
    assert measured.height == 120
    assert measured["power_draw"].unique().to_list() == [520.0]
    agg = runfiles.agg(run)
    assert agg.height > 0
    assert agg["carbon_intensity"].unique().to_list() == [212.5]
