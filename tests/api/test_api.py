"""The JSON API over real loopback HTTP: series, metrics, windows, topology writes, bad input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import polars as pl
import pytest

from opendt.api.app import serve_api
from opendt.api.http import parse_time
from opendt.api.readmodel import TwinView
from opendt.models.topology import Topology, parse_topology
from opendt.settings import ApiSettings
from opendt.twin.results import ResultStore, WindowRecord
from opendt.twin.status import TwinState
from opendt.twin.topology import SimTopology, TopologyBox, TopologyWriter

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
TOPO = parse_topology(
    {
        "clusters": [
            {
                "hosts": [
                    {"count": 2, "cpu": {"coreCount": 8, "coreSpeed": 2000}, "memory": {"memorySize": 1000}}
                ]
            }
        ]
    }
)


async def _store(tmp: Path) -> ResultStore:
    store = ResultStore(tmp / "run")
    store.load()
    for w in range(4):  # 4 windows of 300 s, 2 export rows each (150 s)
        start = T0 + w * 300_000
        ts = [start + 150_000, start + 300_000]
        rows = pl.DataFrame(
            {
                "timestamp": pl.Series(ts).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
                "power_draw": [1000.0 + w, 1100.0 + w],
                "energy_usage": [150_000.0, 165_000.0],
                "carbon_intensity": [200.0, 210.0],
                "carbon_emission": [8.0, 9.0],
                "topology_version": [0, 0],
                "tasks_completed": [w, 2],
                "cpu_work": [3600.0 * (w + 1), 1800.0],
                "window_start": pl.Series([start, start]).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
            }
        )
        rec = WindowRecord(start, start + 300_000, "ok", 2, 1, 10, 10, 0, 0.01, 0.005, 1)
        await store.commit(rec, rows)
    return store


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, list[tuple[Topology, str, str]]]]:
    published: list[tuple[Topology, str, str]] = []
    box = TopologyBox(TOPO)

    async def publish(sim: SimTopology) -> None:
        published.append((sim.topology, sim.source, sim.reason))

    measured = pl.DataFrame(
        {"timestamp_ms": [T0 + k * 30_000 for k in range(1, 41)], "power_draw": [1000.0] * 40}
    )
    view = TwinView(
        store=await _store(tmp_path),
        measured=measured,
        box=box,
        writer=TopologyWriter(box, publish, lambda: T0),
    )
    settings = ApiSettings(port=0, token="s3cret", max_body_bytes=10_000)
    async with serve_api(TwinState(status="running"), settings, view) as url:
        yield url, published


async def _get(url: str, **params: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.get(url, params=params) as r:
        return r.status, await r.json()


async def test_power_series_downsampled_with_metrics(api: tuple[str, list[object]]) -> None:
    """/api/power returns measured and simulated series in step buckets and MAPE over common instants."""
    url, _ = api
    status, body = await _get(
        url + "/api/power", start="2024-01-01T00:00:00Z", end=str(T0 + 1_200_001), step_s="300"
    )
    assert status == 200
    sim = body["simulated"]
    assert isinstance(sim, list)
    assert [p[0] for p in sim] == [T0, T0 + 300_000, T0 + 600_000, T0 + 900_000, T0 + 1_200_000]
    assert sim[0][1] == 1000.0  # only the 150 s row falls in the first bucket
    assert sim[1][1] == pytest.approx((1100.0 + 1001.0) / 2)
    measured = body["measured"]
    assert isinstance(measured, list)
    assert measured[0] == [T0, 1000.0]
    metrics = body["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["points"] == 8
    assert metrics["mape_pct"] == pytest.approx(
        100 * sum(abs(v - 1000) / 1000 for v in [1000, 1100, 1001, 1101, 1002, 1102, 1003, 1103]) / 8
    )
    assert "NaN" not in json.dumps(body)


async def test_activity_series(api: tuple[str, list[object]]) -> None:
    """/api/activity (issue 19): tasks completed and CPU work summed per step, and both per kWh of the step's
    simulated energy; the default step is an hour (one bucket here)."""
    url, _ = api
    status, body = await _get(url + "/api/activity", step_s="600")
    assert status == 200, body
    # rows at each window's middle (tasks w, work 3600·(w+1) GHz·s, 150 kJ) and end (2, 1800, 165 kJ)
    b = [T0, T0 + 600_000, T0 + 1_200_000]
    assert body["tasks_completed"] == [[b[0], 0 + 2 + 1], [b[1], 2 + 2 + 2 + 3], [b[2], 2]]
    work = [3600.0 + 1800.0 + 7200.0, 1800.0 + 10800.0 + 1800.0 + 14400.0, 1800.0]
    assert body["cpu_work"] == [[t, w] for t, w in zip(b, work, strict=True)]
    kwh = [465_000 / 3.6e6, 630_000 / 3.6e6, 165_000 / 3.6e6]
    assert body["efficiency"] == [[t, pytest.approx(w / e)] for t, w, e in zip(b, work, kwh, strict=True)]
    tasks = [3, 9, 2]
    assert body["tasks_per_kwh"] == [[t, pytest.approx(n / e)] for t, n, e in zip(b, tasks, kwh, strict=True)]
    status, body = await _get(url + "/api/activity")
    assert status == 200
    step, tasks_series = body["step_s"], body["tasks_completed"]
    assert isinstance(step, int)
    assert step < 3600  # an hour by default, clamped to the 20 minutes of data
    assert isinstance(tasks_series, list)
    assert sum(v for _, v in tasks_series) == 14


async def test_carbon_series(api: tuple[str, list[object]]) -> None:
    """/api/carbon returns intensity (mean) and emission (sum) per step."""
    url, _ = api
    status, body = await _get(url + "/api/carbon", step_s="600")
    assert status == 200
    # rows: 8 g at +150 s, +450 s, …; 9 g at +300 s, +600 s, …
    assert body["carbon_emission"] == [[T0, 25.0], [T0 + 600_000, 34.0], [T0 + 1_200_000, 9.0]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "yesterday"}, "start"),
        ({"start": "2024-01-02T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, "end"),
        ({"step_s": "0"}, "step_s"),
        ({"step_s": "ten"}, "step_s"),
        ({"metric": "x"}, "metric"),
    ],
)
async def test_bad_ranges_are_400_naming_the_field(
    api: tuple[str, list[object]], params: dict[str, str], field: str
) -> None:
    """Bad time formats, reversed ranges, bad steps and unknown parameters are 400 naming the field."""
    url, _ = api
    status, body = await _get(url + "/api/power", **params)
    assert status == 400
    assert body["field"] == field


async def test_windows_journal(api: tuple[str, list[object]]) -> None:
    """/api/windows lists the durable windows with their timings."""
    url, _ = api
    status, body = await _get(url + "/api/windows", limit="2")
    assert status == 200
    assert body["total"] == 4
    windows = body["windows"]
    assert isinstance(windows, list)
    assert [w["window_start"] for w in windows] == ["2024-01-01T00:10:00.000Z", "2024-01-01T00:15:00.000Z"]


async def test_topology_put_needs_token_validates_and_publishes(
    api: tuple[str, list[tuple[Topology, str, str]]],
) -> None:
    """1. PUT without the token is 401; 2. an invalid topology is 422 naming the field; 3. a valid one is
    published (source api) and GET shows it; 4. reset publishes the physical topology."""
    url, published = api
    doc = TOPO.to_json_dict()
    doc["clusters"][0]["hosts"][0]["cpu"]["coreSpeed"] = 2800
    async with aiohttp.ClientSession() as s:
        async with s.put(url + "/api/topology", json={"topology": doc}) as r:
            assert r.status == 401
        auth = {"Authorization": "Bearer s3cret"}
        bad = {
            "clusters": [{"hosts": [{"cpu": {"coreCount": 0, "coreSpeed": 1}, "memory": {"memorySize": 1}}]}]
        }
        async with s.put(url + "/api/topology", json=bad, headers=auth) as r:
            assert r.status == 422
            assert "coreCount" in (await r.json())["error"]
        async with s.put(
            url + "/api/topology", json={"topology": doc, "reason": "faster CPUs"}, headers=auth
        ) as r:
            assert r.status == 202
            assert (await r.json())["version"] == 1
        async with s.get(url + "/api/topology") as r:
            got = await r.json()
        assert got["simulated"]["version"] == 1
        assert got["simulated"]["topology"]["clusters"][0]["hosts"][0]["cpu"]["coreSpeed"] == 2800
        assert got["physical"]["clusters"][0]["hosts"][0]["cpu"]["coreSpeed"] == 2000
        async with s.post(url + "/api/topology/reset", headers=auth) as r:
            assert r.status == 202
    assert [(p[1], p[2]) for p in published] == [
        ("api", "faster CPUs"),
        ("api", "reset to the physical topology"),
    ]
    assert published[1][0] == TOPO


async def test_body_limits_and_bad_json(api: tuple[str, list[object]]) -> None:
    """Oversized bodies are 413 and non-JSON bodies 400; the server keeps answering."""
    url, _ = api
    auth = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        async with s.put(url + "/api/topology", data=b"{" + b" " * 20_000 + b"}", headers=auth) as r:
            assert r.status == 413
        async with s.put(url + "/api/topology", data=b"{nope", headers=auth) as r:
            assert r.status == 400
        async with s.get(url + "/health") as r:
            assert r.status == 200


def test_parse_time_accepts_iso_and_epoch() -> None:
    """Times are ISO-8601 (zone or naive UTC) or epoch ms."""
    assert parse_time("2024-01-01T00:00:00Z", "start") == T0
    assert parse_time("2024-01-01T01:00:00+01:00", "start") == T0
    assert parse_time("2024-01-01T00:00:00", "start") == T0
    assert parse_time(str(T0), "start") == T0


async def test_unknown_query_parameters_are_400_everywhere(api: tuple[str, list[object]]) -> None:
    """Issue 18 item 8: every /api route and /health answers 400 naming an unknown query parameter (and what
    the route takes), before anything else; known parameters still work."""
    url, _ = api
    for path in (
        "/health",
        "/api/status",
        "/api/windows",
        "/api/topology",
        "/api/calibration",
        "/api/slo",
        "/api/optimizer",
        "/api/power",
        "/api/carbon",
    ):
        status, body = await _get(url + path, colour="red")
        assert status == 400, path
        assert body["field"] == "colour", path
        assert "colour" in str(body["error"]), path
    status, body = await _get(url + "/api/windows", limit="2")
    assert status == 200
    status, body = await _get(url + "/api/windows", limit="2", start="0")
    assert (status, body["field"]) == (400, "start")
    assert "limit" in str(body["error"])
    async with aiohttp.ClientSession() as s, s.post(url + "/api/topology/reset?force=1") as r:
        assert r.status == 400
