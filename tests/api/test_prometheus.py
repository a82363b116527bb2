"""``GET /metrics`` against the real Prometheus server and its ``promtool`` (Debian's package ``prometheus``;
``.ci/install-prometheus`` installs it, the tests skip where neither binary is on PATH).

A demo twin (replay at 4800×, about half a minute, with the optimizer and the engine cross-check against the
honest OpenDC stand-in) is scraped every second by a ``prometheus`` started on a temporary configuration;
PromQL through its HTTP API must see windows simulated at a positive rate, and the predicted watts of the last
durable window equal to ``/api/power``'s last simulated point (1e-9), and every panel's query of the provisioned
Grafana dashboard (grafana/provisioning/dashboards/opendt-prometheus.json) an answer. A scrape lists every family the README
documents, and ``promtool check metrics`` reports no problem with it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from opendt.api.app import create_app
from opendt.daemon import run_daemon, wait_until
from opendt.kafka.client import make_consumer, make_producer
from opendt.kafka.offsets import ConsumerOffsets
from opendt.settings import REPO_ROOT, ApiSettings, KafkaSettings, Settings
from opendt.twin.status import LatencyHistogram, TwinState

from ..opendc_standin import write_standin
from .conftest import DEMO

README = REPO_ROOT / "README.md"
GRAFANA = REPO_ROOT / "grafana" / "provisioning"
RATE = "$__rate_interval"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def prometheus(target: str, tmp: Path) -> AsyncIterator[str]:
    """A real ``prometheus`` scraping ``target`` (host:port) every second; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (apt-get install prometheus; see .ci/install-prometheus)")
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: opendt\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = _free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s, asyncio.timeout(60):
            while True:
                try:
                    async with s.get(f"{url}/-/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.returncode is None, (tmp / "prometheus.log").read_text()[-3000:]
                await asyncio.sleep(0.2)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(30):
                await proc.wait()
        log.close()


async def promql(url: str, query: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/api/v1/query", params={"query": query}) as r:
        doc = await r.json()
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def documented_families() -> set[str]:
    """The metric names of README's § Prometheus table (``| `opendt_…` | type | … |``)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n### Prometheus", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `((?:opendt|process)_\w+)`", section, re.MULTILINE))


def dashboard_queries() -> list[str]:
    """The PromQL of every panel of the provisioned Prometheus dashboard, which must read the provisioned
    Prometheus datasource and only documented families."""
    ds = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    doc = json.loads((GRAFANA / "dashboards" / "opendt-prometheus.json").read_text(encoding="utf-8"))
    documented = documented_families()
    exprs = []
    for panel in doc["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": ds["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            expr = target["expr"]
            names = set(re.findall(r"\b((?:opendt|process)_[a-z_]+)", expr))
            assert names, expr
            assert {re.sub(r"_bucket$", "", n) for n in names} <= documented, expr
            exprs.append(expr)
    return exprs


def _family_names(text: str) -> set[str]:
    names = set()
    for fam in text_string_to_metric_families(text):
        # the parser strips _total from counters and keeps the base name of histograms and info metrics
        names.add(fam.name + ("_total" if fam.type == "counter" else "_info" if fam.type == "info" else ""))
    return names


@pytest.fixture
def twin_settings(daemon_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    standin = write_standin(tmp_path / "bin", "honest")
    base = daemon_settings(DEMO, speed=4800)
    return base.model_copy(
        update={
            "simulation": base.simulation.model_copy(
                update={"opendc_bin": standin, "verify_every_s": 7200, "verify_range_s": 3600}
            ),
            "optimizer": base.optimizer.model_copy(update={"enabled": True}),
            "calibration": base.calibration.model_copy(update={"enabled": True}),
        }
    )


async def test_prometheus_scrapes_the_twin(twin_settings: Settings, tmp_path: Path) -> None:
    state = TwinState()
    stop = asyncio.Event()
    async with asyncio.timeout(240), asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(twin_settings, shutdown_trigger=stop.wait, state=state))
        try:
            await wait_until(state.ready, daemon, "serving")
            assert state.loop is not None
            target = state.api_url.removeprefix("http://")
            async with prometheus(target, tmp_path) as prom:
                await wait_until(state.loop.done, daemon, "the replay was simulated")
                simulated = state.loop.status().windows_simulated
                while True:  # until Prometheus has scraped the finished twin
                    got = await promql(prom, "opendt_windows_simulated_total")
                    if got and float(got[0]["value"][1]) == simulated:
                        break
                    await asyncio.sleep(0.5)
                rate = await promql(prom, "rate(opendt_windows_simulated_total[10m]) > 0")
                assert len(rate) == 1, rate
                assert float(rate[0]["value"][1]) > 0, rate
                watts = await promql(prom, "sum(opendt_predicted_power_watts)")
                by_cluster = await promql(prom, "opendt_predicted_power_watts")
                by_meter = await promql(prom, "opendt_measured_power_watts")
                empty = [e for e in dashboard_queries() if not await promql(prom, e.replace(RATE, "1m"))]
                assert not empty, empty
                up = await promql(prom, 'up{job="opendt"}')
                async with aiohttp.ClientSession() as s:
                    async with s.get(f"{state.api_url}/api/power") as r:
                        power = await r.json()
                    async with s.get(f"{state.api_url}/metrics") as r:
                        assert r.status == 200
                        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                        scrape = await r.text()
        finally:
            stop.set()
    assert daemon.result() == 0
    assert up
    assert up[0]["value"][1] == "1"
    last = power["simulated"][-1][1]
    assert len(watts) == 1
    assert abs(float(watts[0]["value"][1]) - last) <= 1e-9, (watts, last)
    assert [m["metric"].get("cluster") for m in by_cluster] == ["demo"], by_cluster  # the demo's one cluster
    assert [m["metric"].get("source") for m in by_meter] == ["PowerSource"], by_meter  # the demo meter

    names = _family_names(scrape)
    documented = documented_families()
    assert documented, "README's § Prometheus lists no family"
    assert documented <= names, sorted(documented - names)
    assert {n for n in names if n.startswith("opendt_")} <= documented, "undocumented families"
    for family in (
        "opendt_watermark_lag_seconds",
        "opendt_kafka_consumer_lag_records",
        "opendt_windows_simulated_total",
        "opendt_windows_failed_total",
        "opendt_messages_quarantined_total",
        "opendt_messages_dead_lettered_total",
        "opendt_window_latency_seconds",
        "opendt_records_ingested_total",
        "opendt_calibration_rounds_total",
        "opendt_calibration_mape_ratio",
        "opendt_predicted_power_watts",
        "opendt_measured_power_watts",
        "opendt_predicted_energy_joules",
        "opendt_measured_energy_joules",
        "opendt_predicted_carbon_grams",
        "opendt_crosscheck_divergence_ratio",
        "opendt_whatif_queued",
        "opendt_whatif_running",
        "opendt_whatif_rejected_total",
        "opendt_worker_restarts_total",
        "process_resident_memory_bytes",
    ):
        assert family in names, family
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(scrape)
        for s in fam.samples
    }
    assert samples[("opendt_window_latency_seconds_count", ())] == simulated
    assert samples[("opendt_crosscheck_divergence_ratio", ())] < 1e-6  # the honest stand-in
    ingested = {dict(k[1])["topic"]: v for k, v in samples.items() if k[0] == "opendt_records_ingested_total"}
    assert ingested[twin_settings.kafka.topics.tasks] > 0, ingested

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (apt-get install prometheus)")
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate(scrape.encode())
    assert proc.returncode == 0, out.decode()
    assert not out.strip(), out.decode()


async def test_metrics_without_a_twin_and_unknown_query() -> None:
    """``opendt serve`` without a run, or a twin still starting: a valid exposition (process metrics, the
    status), and an unknown query parameter is a 400 naming it."""
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(create_app(TwinState(), ApiSettings()))) as client:
        r = await client.get("/metrics")
        assert r.status == 200
        names = _family_names(await r.text())
        assert {"opendt_twin_status", "process_resident_memory_bytes"} <= names
        r = await client.get("/metrics", params={"name[]": "x"})
        assert r.status == 400
        assert (await r.json())["field"] == "name[]"


def test_latency_histogram_is_cumulative_and_bounded() -> None:
    h = LatencyHistogram()
    for s in (0.001, 0.02, 0.02, 7.0, 1e6):
        h.observe(s)
    cum = dict(h.cumulative())
    assert [cum[0.005], cum[0.025], cum[10.0], cum[float("inf")]] == [1, 3, 4, 5]
    assert len(h.counts) == len(h.bounds) + 1
    assert h.total_s == pytest.approx(1e6 + 7.041)


async def test_consumer_offsets_against_the_broker(
    kafka_bootstrap: str, kafka_settings: KafkaSettings, topic_factory: Callable[..., str]
) -> None:
    """ConsumerOffsets on a real consumer: position, high watermark and log start of each assigned partition
    (the log start fetched once, then kept until ``refresh_s``)."""
    topic = topic_factory("offsets", partitions=2)
    producer = make_producer(kafka_bootstrap, kafka_settings)
    await producer.start()
    try:
        for k in range(5):
            await producer.send_and_wait(topic, b"x", partition=k % 2)
    finally:
        await producer.stop()
    consumer = make_consumer(kafka_bootstrap, [], None, kafka_settings)
    await consumer.start()
    now = [0.0]
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        await consumer.seek_to_beginning()
        read = 0
        async with asyncio.timeout(30):
            while read < 5:
                read += sum(len(v) for v in (await consumer.getmany(timeout_ms=500)).values())
        offsets = ConsumerOffsets(consumer, clock=lambda: now[0])
        got = {(p.partition, p.position, p.log_start, p.highwater) for p in await offsets.offsets()}
        assert got == {(0, 3, 0, 3), (1, 2, 0, 2)}
        now[0] += 61.0  # past refresh_s: asked again, same answer
        assert {(p.partition, p.log_start) for p in await offsets.offsets()} == {(0, 0), (1, 0)}
    finally:
        await consumer.stop()
