"""Optional feeds (issue 24): a datacenter that sends only its topology, tasks and fragments — no measured
power, no carbon intensity, no heartbeat — to a ``--no-replay`` twin with calibration enabled, through the
real broker. Every window closes and is predicted; with no power there is no MAPE (null, never 0 or NaN) and
no calibration (every round skipped with ``calibration_skipped``, no topology applied); with no carbon the
emissions are unknown everywhere they are served (null in the results and ``sim.results``, no point in the
series, no gauge in ``/metrics``, "unknown" in ``opendt report``), and ``/health`` stays 200."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from opendt.calibration.settings import CalibrationAxis, CalibrationSettings
from opendt.commands.runs import summarize_run, summary_lines
from opendt.daemon import run_daemon
from opendt.kafka.client import make_consumer
from opendt.models.messages import iso_ms
from opendt.settings import REPO_ROOT, Settings
from opendt.stream.replay import event_order, streams_of
from opendt.twin.status import TwinState
from opendt.workload import load_workload

from .. import chromium
from .conftest import foreign_producer, read_results, run_dir, write_small_workload

WINDOW_S = 30


def no_nan(token: str) -> Any:
    raise AssertionError(f"non-JSON number {token} in an answer")


def _settings(base: Settings) -> Settings:
    windowing = base.windowing.model_copy(
        update={"window_s": WINDOW_S, "idle_after_s": 2.0, "allowed_lateness_s": 1.0}
    )
    calibration = CalibrationSettings(
        enabled=True,
        every_s=300,
        lookback_s=300,
        apply_delay_s=60,
        grid=[CalibrationAxis(parameter="cpuPowerModel.calibrationFactor", values=[2.0, 6.0])],
        refine_steps=0,
    )
    return base.model_copy(
        update={
            "windowing": windowing,
            "checkpoint": base.checkpoint.model_copy(update={"every_s": 300}),
            "simulation": base.simulation.model_copy(
                update={"export_interval_s": WINDOW_S}
            ),  # rows every window
            "replay": base.replay.model_copy(update={"enabled": False}),
            "calibration": calibration,
        }
    )


async def _get(s: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with s.get(url) as r:
        return r.status, json.loads(await r.read(), parse_constant=no_nan)


async def _sim_results(settings: Settings) -> list[dict[str, Any]]:
    consumer = make_consumer(
        settings.kafka.bootstrap_servers or "", [settings.kafka.topics.sim_results], None, settings.kafka
    )
    await consumer.start()
    try:
        await consumer.seek_to_beginning()
        batches = await consumer.getmany(timeout_ms=5000, max_records=100_000)
    finally:
        await consumer.stop()
    return [json.loads(r.value, parse_constant=no_nan) for recs in batches.values() for r in recs]


CARBON_PANEL = """JSON.stringify({
  emitted: document.querySelector('#carbon-metrics [data-key=emitted] b')?.textContent ?? null,
  intensity: document.querySelector('#carbon-metrics [data-key=mean_intensity] b')?.textContent ?? null,
  power: Number(document.getElementById('chart-power').dataset.points),
  carbon: Number(document.getElementById('chart-carbon').dataset.points),
  carbonEmpty: document.getElementById('chart-carbon').dataset.empty,
})"""


async def _dashboard(url: str, tmp: Path) -> dict[str, Any] | None:
    """The dashboard's carbon panel in headless Chromium once the power chart has data (None: no Chromium)."""
    exe = chromium.binary()
    if exe is None:
        return None
    async with chromium.page(exe, tmp) as cdp:
        await cdp.call("Page.enable")
        await cdp.call("Page.navigate", url=url + "/")
        await cdp.wait_for(
            "Number(document.getElementById('chart-power').dataset.points) > 0"
            " && document.querySelector('#carbon-metrics [data-key=emitted]') !== null",
            "the dashboard's power chart and carbon panel",
        )
        shown: dict[str, Any] = json.loads(await cdp.js(CARBON_PANEL))
        assert cdp.page_errors() == []
        return shown


async def test_topology_tasks_and_fragments_alone(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    workload = write_small_workload(tmp_path / "wl", tasks=8, hours=0.1)
    settings = _settings(daemon_settings(workload))
    wl = load_workload(workload)
    streams = [s for s in streams_of(wl, "x") if s.kind in ("tasks", "fragments")]
    newest = int(event_order(streams)["t"].max())  # type: ignore[arg-type]
    last_end = (newest // (WINDOW_S * 1000) + 1) * WINDOW_S * 1000  # the window of the last record

    state = TwinState()
    stop = asyncio.Event()
    answers: dict[str, Any] = {}
    with capture_logs() as logs:
        async with asyncio.timeout(150), asyncio.TaskGroup() as tg:
            daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
            while not state.ready.is_set():
                assert not daemon.done(), "the daemon stopped"
                await asyncio.sleep(0.05)
            await foreign_producer(settings, workload, kinds=("tasks", "fragments"))
            while True:  # every window of the feed closes and is simulated
                assert not daemon.done(), "the daemon stopped"
                end = state.snapshot()["simulation"]["last_window_end_ms"]
                if end is not None and end >= last_end:
                    break
                await asyncio.sleep(0.05)
            async with aiohttp.ClientSession() as s:
                url = state.api_url
                for path in ("/health", "/api/status", "/api/power", "/api/carbon", "/api/calibration"):
                    answers[path] = await _get(s, url + path)
                async with s.get(url + "/metrics") as r:
                    answers["/metrics"] = (r.status, await r.text())
                body = {
                    "range": {"from": iso_ms(wl.origin_ms - 3_600_000), "to": iso_ms(last_end + 3_600_000)},
                    "intervalMs": WINDOW_S * 1000,
                    "maxDataPoints": 1000,
                    "targets": [
                        {"refId": "A", "target": "carbon_emission"},
                        {"refId": "B", "target": "power_simulated"},
                    ],
                }
                async with s.post(url + "/grafana/query", json=body) as r:
                    answers["/grafana/query"] = (r.status, json.loads(await r.read(), parse_constant=no_nan))
                lo = wl.origin_ms // (WINDOW_S * 1000) * WINDOW_S * 1000  # the first window
                whatif = {"start": iso_ms(lo), "end": iso_ms(lo + 600_000), "patch": {"cpu.coreSpeed": 2800}}
                async with s.post(url + "/api/whatif", json=whatif) as r:
                    answers["/api/whatif"] = (r.status, json.loads(await r.read(), parse_constant=no_nan))
            answers["dashboard"] = await _dashboard(url, tmp_path)
            stop.set()
    assert daemon.result() == 0

    agg, windows = read_results(settings.data_dir)
    assert windows["status"].unique().to_list() == ["ok"]
    assert int(windows["window_end"].dt.epoch("ms").max()) >= last_end  # type: ignore[arg-type]
    assert agg.height > 0
    assert (agg["power_draw"] > 0).all()
    assert (agg["tasks_completed"].sum() or 0) > 0
    for c in ("carbon_intensity", "carbon_emission"):  # no carbon feed: unknown, never 0
        assert agg[c].null_count() == agg.height, c

    status, health = answers["/health"]
    assert status == 200, health
    assert health["status"] == "ok"
    status, doc = answers["/api/status"]
    assert status == 200
    cal = doc["calibration"]
    assert cal["rounds"] >= 2, cal
    assert cal["skipped"] == cal["rounds"], cal
    assert cal["applied"] == 0
    assert cal["failed"] == 0
    assert cal["mape"]["calibrated"] is None
    assert cal["mape"]["uncalibrated"] is None
    assert doc["topology"]["version"] == 0  # no calibrated topology applied
    assert not list((run_dir(settings.data_dir) / "topologies").glob("v1*.json"))
    skipped = [e for e in logs if e["event"] == "calibration_skipped"]
    assert len(skipped) == cal["rounds"], skipped
    assert all(e["reason"] == "no measured power in the lookback" for e in skipped), skipped

    status, power = answers["/api/power"]
    assert status == 200
    assert power["measured"] == []
    assert len(power["simulated"]) > 0
    assert power["metrics"]["mape_pct"] is None
    assert power["metrics"]["points"] == 0
    status, carbon = answers["/api/carbon"]
    assert status == 200
    assert carbon["carbon_intensity"] == []
    assert carbon["carbon_emission"] == []
    status, grafana = answers["/grafana/query"]
    assert status == 200
    points = {el["target"]: el["datapoints"] for el in grafana}
    assert not [p for name, p in points.items() if "arbon" in name and p], points  # no point, never 0
    assert len(points["Simulated power"]) > 0, points
    status, metrics = answers["/metrics"]
    assert status == 200
    samples = {line.split(" ")[0].split("{")[0] for line in metrics.splitlines() if not line.startswith("#")}
    assert "opendt_predicted_power_watts" in samples
    assert "opendt_predicted_carbon_grams" not in samples  # absent, never 0
    assert "opendt_carbon_intensity_grams_per_kilowatt_hour" not in samples

    published = await _sim_results(settings)
    pts = [p for m in published for p in m["points"]]
    assert len(pts) == agg.height
    assert all(p["carbon_emission"] is None and p["carbon_intensity"] is None for p in pts)
    assert all(p["power_draw"] > 0 for p in pts)

    shown = answers["dashboard"]
    if shown is not None:  # the dashboard says unknown, never 0 kg
        assert shown["emitted"] == "unknown", shown
        assert shown["intensity"] == "unknown", shown
        assert shown["carbon"] == 0, shown
        assert "emissions unknown" in shown["carbonEmpty"], shown

    status, whatif = answers["/api/whatif"]
    assert status == 200, whatif
    for side in ("baseline", "whatif"):  # energy known, carbon unknown (never 0)
        assert whatif["totals"][side]["energy_kwh"] > 0, whatif["totals"]
        assert whatif["totals"][side]["carbon_kg"] is None, whatif["totals"]
    assert whatif["delta"]["carbon_pct"] is None
    assert whatif["delta"]["energy_pct"] is not None

    summary = summary_lines(summarize_run(run_dir(settings.data_dir)))  # what `opendt run` ends with
    assert "MAPE      no measured power" in summary, summary
    assert "carbon    unknown (no carbon intensity received)" in summary, summary

    out = tmp_path / "report"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opendt", "report", str(run_dir(settings.data_dir)), "--out", str(out),
        "--format", "png,html", cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert "MAPE n/a (no measured power)" in stdout.decode(), stdout
    assert "carbon unknown (no carbon intensity received)" in stdout.decode(), stdout
    manifest = json.loads((out / "report.json").read_text(), parse_constant=no_nan)
    assert [r["carbon_kg"] for r in manifest["runs"]] == [None]
    carbon = next(f for f in manifest["figures"] if f["name"] == "carbon")
    assert carbon["files"]
    assert all((out / f).stat().st_size > 0 for f in carbon["files"])
    assert [r["mape_pct"] for r in manifest["runs"]] == [None]
