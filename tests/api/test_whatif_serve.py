"""What-ifs on a finished run (issue 26 item 3): ``opendt serve`` answers ``POST /api/whatif`` from the run's
stored inputs and checkpoints, equal to the same what-if asked of the live twin, without writing into the run."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from opendt.api.app import serve_api
from opendt.calibration.settings import CalibrationAxis, CalibrationSettings
from opendt.commands.serve import build_view
from opendt.settings import ApiSettings, Settings

from .conftest import DEMO, running_twin
from .test_openapi import _validator

BODIES: list[dict[str, Any]] = [
    # from a checkpoint start, over a calibrated version change (the demo's first rounds)
    {"start": "2024-03-04T00:00:00Z", "end": "2024-03-04T06:00:00Z", "patch": {"cpu.coreSpeed": 1800}},
    # after a pre-roll, structural (fewer hosts: running tasks migrate or are re-queued)
    {"start": "2024-03-04T09:17:30Z", "end": "2024-03-04T15:00:00Z", "patch": {"hosts[A].count": 8}},
    # more hosts than the physical datacenter has
    {"start": "2024-03-04T12:00:00Z", "end": "2024-03-04T20:00:00Z", "patch": {"hosts[B].count": 20}},
]


async def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(f"{url}/api/whatif", json=body) as r:
        return r.status, await r.json()


def _digest(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def _same(live: Any, served: Any, path: str = "") -> None:
    """Equal documents, numbers to 1e-9 (relative)."""
    if isinstance(live, dict):
        assert set(live) == set(served), path
        for k in live:
            if k != "elapsed_s":
                _same(live[k], served[k], f"{path}.{k}")
    elif isinstance(live, list):
        assert len(live) == len(served), path
        for i, (a, b) in enumerate(zip(live, served, strict=True)):
            _same(a, b, f"{path}[{i}]")
    elif isinstance(live, float) and not isinstance(live, bool):
        assert served == pytest.approx(live, rel=1e-9, abs=1e-12), path
    else:
        assert live == served, path


async def test_serve_answers_whatifs_like_the_live_twin(daemon_settings: Callable[..., Settings]) -> None:
    """1. The demo day with calibration on (two calibrationFactor values, so the simulated topology changes
    version during the day); the live twin answers three what-ifs (snapshot start over a version change,
    pre-rolled structural patch, more hosts); 2. after the daemon exits, ``opendt serve``'s view of the run
    answers the same bodies with the same document (every number within 1e-9, ``elapsed_s`` aside);
    3. serving and answering wrote nothing into the run directory (same files, same bytes); 4. its
    ``/api/calibration`` reports each scored round's identifiable interval per axis, valid against the
    OpenAPI document."""
    base = daemon_settings(DEMO)
    cal = CalibrationSettings(
        enabled=True,
        grid=[CalibrationAxis(parameter="cpuPowerModel.calibrationFactor", values=[4.0, 6.5])],
        refine_steps=0,
        max_parallel=1,
    )
    settings = base.model_copy(update={"api": ApiSettings(port=0, whatif_queue=2), "calibration": cal})
    live: list[dict[str, Any]] = []
    async with running_twin(settings) as (url, _):
        for body in BODIES:
            status, doc = await _post(url, body)
            assert status == 200, doc
            live.append(doc)
    [run_dir] = list((settings.data_dir / "runs").iterdir())
    before = _digest(run_dir)
    assert any(name.startswith("topologies/v1") for name in before)  # calibration changed the topology

    view, state = build_view(run_dir, settings)
    assert view.scenarios is not None
    try:
        async with serve_api(state, settings.api, view) as url:
            for body, want in zip(BODIES, live, strict=True):
                status, doc = await _post(url, body)
                assert status == 200, doc
                _same(want, doc)
            status, doc = await _post(url, {**BODIES[0], "start": "2024-03-01T00:00:00Z"})
            assert status == 422, doc
            assert "start" in doc["error"]
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{url}/openapi.json") as r:
                    spec = await r.json()
                async with s.get(f"{url}/api/calibration") as r:
                    assert r.status == 200
                    cal = await r.json()
    finally:
        await view.scenarios.close()
        await view.scenarios.pool.stop()
    assert _digest(run_dir) == before
    # issue 26 item 2: every scored round reports what the data cannot tell apart, in the documented shape
    assert not list(_validator(spec, "get", "/api/calibration", 200).iter_errors(cal))
    axis = "cpuPowerModel.calibrationFactor"
    assert cal["prior_weight"] == CalibrationSettings().prior_weight
    assert cal["intervals"][axis]["lo"] <= cal["intervals"][axis]["hi"]
    scored = [r for r in cal["rounds_detail"] if r["status"] != "skipped"]
    assert scored
    assert all(axis in r["intervals"] for r in scored)
    assert [p["intervals"] for p in cal["series"]] == [r["intervals"] for r in cal["rounds_detail"]]
    assert any(r["intervals"][axis]["physical"] == 4.0 for r in scored)
