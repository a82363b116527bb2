"""POST /api/whatif against a running daemon (real broker, real engine workers, real HTTP) on the demo day."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from opendt.settings import ApiSettings, Settings

from .. import runfiles
from .conftest import DEMO, running_twin

TOKEN = "whatif-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def twin(daemon_settings: Callable[..., Settings]) -> AsyncIterator[tuple[str, Settings]]:
    """The demo day replayed at max speed, fully simulated; yields the API URL and the settings."""
    base = daemon_settings(DEMO)
    settings = base.model_copy(
        update={"api": ApiSettings(port=0, token=TOKEN, whatif_queue=1, whatif_max_range_s=30 * 3600)}
    )
    async with running_twin(settings) as (url, _):
        yield url, settings


async def _whatif(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/api/whatif", json=body, headers=AUTH if headers is None else headers) as r,
    ):
        return r.status, await r.json()


def _values(series: list[list[float]]) -> list[float]:
    return [v for _, v in series]


async def test_identity_whatif_reproduces_the_twin_and_changes_move_it(twin: tuple[str, Settings]) -> None:
    """1. Setting a parameter to the value it has (no change) reproduces the twin's own stored series exactly,
    from a snapshot start (06:00) and after a pre-roll (06:17:30); 2. slower CPUs (coreSpeed 1200 instead of
    2400/2200) change the prediction and report the change and the deltas; 3. a structural patch (fewer hosts)
    runs too (the snapshot carries the running tasks' fragments)."""
    url, _ = twin
    for start in ("2024-03-04T06:00:00Z", "2024-03-04T06:17:30Z"):
        status, doc = await _whatif(
            url,
            {
                "start": start,
                "end": "2024-03-04T12:00:00Z",
                "patch": {"hosts[A].cpu.coreSpeed": 2400},
                "step_s": 150,
            },
        )
        assert status == 200, doc
        assert doc["changes"] == []
        base, new = doc["series"]["baseline"], doc["series"]["whatif"]
        assert len(base) > 100
        assert [t for t, _ in base] == [t for t, _ in new]
        for b, w in zip(_values(base), _values(new), strict=True):
            assert w == pytest.approx(b, rel=1e-9)
        assert doc["totals"]["whatif"]["energy_kwh"] == pytest.approx(
            doc["totals"]["baseline"]["energy_kwh"], rel=1e-6
        )
        assert doc["delta"]["energy_pct"] == pytest.approx(0, abs=1e-4)
        assert doc["totals"]["measured"]["mean_w"] > 0

    status, doc = await _whatif(
        url, {"start": 1709532000000, "end": 1709553600000, "patch": {"cpu.coreSpeed": 1200}}
    )
    assert status == 200, doc
    assert {c["path"] for c in doc["changes"]} == {
        "clusters[demo].hosts[A].cpu.coreSpeed",
        "clusters[demo].hosts[B].cpu.coreSpeed",
    }
    assert doc["start"] == "2024-03-04T06:00:00.000Z"
    assert doc["delta"]["energy_pct"] != pytest.approx(0, abs=0.1)
    assert _values(doc["series"]["whatif"]) != _values(doc["series"]["baseline"])

    status, doc = await _whatif(
        url, {"start": "2024-03-04T06:00:00Z", "end": "2024-03-04T09:00:00Z", "patch": {"hosts[A].count": 4}}
    )
    assert status == 200, doc
    assert doc["totals"]["whatif"]["energy_kwh"] < doc["totals"]["baseline"]["energy_kwh"]
    assert doc["topology"]["clusters"][0]["hosts"][0]["count"] == 4


async def test_whole_topology_and_bad_requests(twin: tuple[str, Settings]) -> None:
    """A whole topology is accepted; every bad request is a 4xx naming the problem, and the twin keeps
    answering afterwards."""
    url, _ = twin
    async with aiohttp.ClientSession() as s, s.get(f"{url}/api/topology") as r:
        physical = (await r.json())["physical"]
    ok = {"start": "2024-03-04T05:00:00Z", "end": "2024-03-04T06:00:00Z"}
    status, doc = await _whatif(url, {**ok, "topology": physical})
    assert status == 200, doc
    assert doc["changes"] == []

    bad: list[tuple[dict[str, Any], dict[str, str] | None, int, str]] = [
        ({**ok, "patch": {"cpu.coreSpeed": 1}}, {}, 401, "token"),
        ({**ok, "patch": {"cpu.coreSpeed": 1}}, {"Authorization": "Bearer nope"}, 401, "token"),
        ({**ok, "patch": {"cpu.warpDrive": 9}}, None, 422, "warpDrive"),
        ({**ok, "patch": {"cpu.coreSpeed": -5}}, None, 422, "coreSpeed"),
        ({**ok, "patch": {"clusters[nope].cpu.coreSpeed": 2000}}, None, 422, "nope"),
        ({**ok, "patch": {}}, None, 422, "patch"),
        ({**ok, "topology": {"clusters": []}}, None, 422, "cluster"),
        ({**ok, "topology": physical, "patch": {"cpu.coreSpeed": 2000}}, None, 422, "exactly one"),
        (
            {"start": ok["end"], "end": ok["start"], "patch": {"cpu.coreSpeed": 2000}},
            None,
            422,
            "after start",
        ),
        ({"start": "yesterday", "end": ok["end"], "patch": {"cpu.coreSpeed": 2000}}, None, 400, "ISO-8601"),
        ({"end": ok["end"], "patch": {"cpu.coreSpeed": 2000}}, None, 422, "start"),
        (
            {
                "start": "2024-03-04T00:00:00Z",
                "end": "2024-03-05T07:00:00Z",
                "patch": {"cpu.coreSpeed": 2000},
            },
            None,
            422,
            "whatif_max_range_s",
        ),
        (
            {
                "start": "2024-03-06T00:00:00Z",
                "end": "2024-03-06T01:00:00Z",
                "patch": {"cpu.coreSpeed": 2000},
            },
            None,
            422,
            "last simulated window",
        ),
        ({**ok, "patch": {"cpu.coreSpeed": 2000}, "colour": "red"}, None, 422, "colour"),
        ({**ok, "patch": {"cpu.coreSpeed": 2000}, "step_s": "often"}, None, 422, "step_s"),
    ]
    for body, headers, want, needle in bad:
        status, doc = await _whatif(url, body, headers)
        assert status == want, (body, doc)
        assert needle in doc["error"], (needle, doc)
    async with aiohttp.ClientSession() as s, s.post(f"{url}/api/whatif", data=b"{nope", headers=AUTH) as r:
        assert r.status == 400
        assert (await r.json())["field"] == "body"
    async with aiohttp.ClientSession() as s, s.get(f"{url}/health") as r:
        assert r.status == 200


async def test_a_full_queue_answers_429(twin: tuple[str, Settings]) -> None:
    """With api.whatif_queue = 1, concurrent what-ifs beyond the one running get 429 with a message; the
    running one completes."""
    url, _ = twin
    body = {"start": "2024-03-04T05:00:00Z", "end": "2024-03-04T16:00:00Z", "patch": {"cpu.coreSpeed": 2000}}
    results = await asyncio.gather(*(_whatif(url, body) for _ in range(4)))
    statuses = sorted(s for s, _ in results)
    assert statuses[0] == 200
    assert 429 in statuses
    busy = next(doc for s, doc in results if s == 429)
    assert "queued" in busy["error"]


async def test_calibration_endpoint_without_calibrator(twin: tuple[str, Settings]) -> None:
    """Calibration is off in the defaults: GET /api/calibration is a 404 saying so."""
    url, _ = twin
    async with aiohttp.ClientSession() as s, s.get(f"{url}/api/calibration") as r:
        assert r.status == 404
        assert "disabled" in (await r.json())["error"]


def test_checkpoints_must_fall_on_window_ends() -> None:
    """A checkpoint period that is not a multiple of the window size is refused when the settings load (what-ifs
    and resumes start from checkpoints, which are taken at window ends)."""
    from opendt.settings import CheckpointSettings, Settings, WindowingSettings

    with pytest.raises(ValueError, match=r"checkpoint.every_s must be a multiple of windowing.window_s"):
        Settings(windowing=WindowingSettings(window_s=300), checkpoint=CheckpointSettings(every_s=1000))


async def test_totals_are_the_integral_over_exactly_the_range(twin: tuple[str, Settings]) -> None:
    """Issue 18 item 3: totals are the integral over exactly [start, end), not the export rows touching it:
    1. a 5-minute what-if off the export grid (12:00-12:05, 3 hosts a group) has energy = mean power x 5 min
    and the baseline's energy adds up over adjacent ranges; 2. on the grid it equals the stored twin rows of
    the range; 3. task statistics (waits, re-queued, unfinished) come for both sides; 4. a whole topology
    posted fills `changes`."""
    url, settings = twin
    short = {"start": "2024-03-04T12:00:00Z", "end": "2024-03-04T12:05:00Z", "patch": {"count": 3}}
    status, doc = await _whatif(url, short)
    assert status == 200, doc
    for side in ("baseline", "whatif"):
        t = doc["totals"][side]
        assert t["energy_kwh"] == pytest.approx(t["mean_w"] * 300 / 3.6e6, rel=1e-5), side
    assert doc["totals"]["whatif"]["mean_w"] < doc["totals"]["baseline"]["mean_w"] / 3
    for side in ("baseline", "whatif"):
        stats = doc["tasks"][side]
        for key in ("tasks_submitted", "tasks_requeued", "tasks_waiting", "wait_p95_s", "wait_drained"):
            assert key in stats, (side, key)
        assert "range_energy_j" not in stats
    assert doc["tasks"]["baseline"]["tasks_requeued"] == 0
    assert doc["tasks"]["whatif"]["tasks_requeued"] + doc["tasks"]["whatif"]["tasks_waiting"] >= 0

    energy = {}
    for a, b in (("12:00:00", "12:05:00"), ("12:05:00", "12:10:00"), ("12:00:00", "12:10:00")):
        body = {"start": f"2024-03-04T{a}Z", "end": f"2024-03-04T{b}Z", "patch": {"count": 3}}
        status, doc = await _whatif(url, body)
        assert status == 200, doc
        energy[(a, b)] = doc["totals"]["baseline"]["energy_kwh"]
    assert energy[("12:00:00", "12:05:00")] + energy[("12:05:00", "12:10:00")] == pytest.approx(
        energy[("12:00:00", "12:10:00")], rel=1e-5
    )

    # on the export grid (the demo's rows fall at hh:mm:38 and hh:mm:08): the stored rows of the range

    runs = list((settings.data_dir / "runs").iterdir())
    agg = runfiles.agg(runs[0])
    lo, hi = 1709553638000, 1709553938000  # 12:00:38 .. 12:05:38
    ts = agg["timestamp"].dt.epoch("ms")
    stored = float(agg.filter((ts > lo) & (ts <= hi))["energy_usage"].sum()) / 3.6e6
    status, doc = await _whatif(url, {"start": lo, "end": hi, "patch": {"hosts[A].cpu.coreSpeed": 2400}})
    assert status == 200, doc
    assert doc["totals"]["baseline"]["energy_kwh"] == pytest.approx(stored, rel=1e-5)
    assert doc["totals"]["whatif"]["energy_kwh"] == pytest.approx(stored, rel=1e-5)

    async with aiohttp.ClientSession() as s, s.get(f"{url}/api/topology") as r:
        physical = (await r.json())["physical"]
    physical["clusters"][0]["hosts"][0]["count"] = 10
    status, doc = await _whatif(url, {**short, "patch": None, "topology": physical} | {"patch": None})
    assert status == 422  # patch and topology both given (a null patch is still a patch)
    body = {k: v for k, v in short.items() if k != "patch"}
    status, doc = await _whatif(url, {**body, "topology": physical})
    assert status == 200, doc
    assert [(c["path"], c["before"], c["after"]) for c in doc["changes"]] == [
        ("clusters[demo].hosts[A].count", 24, 10)
    ]
    physical["clusters"][0]["hosts"] = physical["clusters"][0]["hosts"][:1]
    status, doc = await _whatif(url, {**body, "topology": physical})
    assert status == 200, doc
    assert doc["changes"][0]["path"] == "clusters"
    assert "B" in doc["changes"][0]["before"]
    assert "B" not in doc["changes"][0]["after"]
