"""Issue 26 item 2: parameters the data can tell apart. Each round reports per axis the interval of values
within the noise threshold of the best; inside it the calibrator prefers the physical topology's values
(``calibration.prior_weight``), and where the believed model type cannot follow the meter it changes the type
(``calibration.model_types``) instead of pushing its parameters outside physics. Offline (``opendt
calibrate``'s path: real twin and candidate worker processes)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from opendt.calibration.settings import CalibrationSettings
from opendt.commands.calibrate import calibrate_offline
from opendt.commands.demo import demo_topology
from opendt.models.topology import parse_topology
from opendt.settings import Settings

from .conftest import write_synthetic

PHYSICAL = {
    "cpuPowerModel.idlePower": 30.0,
    "cpuPowerModel.maxPower": 190.0,
    "cpuPowerModel.calibrationFactor": 4.0,
}


def _settings(tmp: Path, **cal: Any) -> Settings:
    return Settings(calibration=CalibrationSettings(enabled=True, **cal), data_dir=tmp / "data")


def _spread(values: list[dict[str, Any]]) -> float:
    """The largest |ln(value / physical)| any axis reached."""
    return max((abs(math.log(float(v[k]) / p)) for v in values for k, p in PHYSICAL.items()), default=0.0)


async def test_a_datacenter_as_believed_keeps_its_physical_values(tmp_path: Path) -> None:
    """1. A day whose meter is the published topology itself (1 % noise): with the prior, the values in
    effect stay closer to the physical ones than without it (prior_weight 0, the behaviour before), and within
    5 %; 2. every scored round reports, per axis, an interval lo ≤ best, chosen ≤ hi with the physical value."""
    wl = write_synthetic(tmp_path / "wl", seed=41, days=1, truth=[(0, demo_topology())])
    runs = {}
    for w in (0.0, 0.25):
        result = await calibrate_offline(
            wl, _settings(tmp_path / str(w), prior_weight=w), out=tmp_path / f"r{w}"
        )
        runs[w] = result.rounds
    spread = {w: _spread([r.in_effect for r in recs if r.in_effect]) for w, recs in runs.items()}
    assert spread[0.25] <= spread[0.0], spread
    assert spread[0.25] <= math.log(1.05), spread
    scored = [r for r in runs[0.25] if r.status not in ("skipped", "failed")]
    assert len(scored) >= 20
    for r in scored:
        assert set(r.intervals) == set(PHYSICAL), r.intervals
        for path, iv in r.intervals.items():
            assert iv["lo"] <= iv["best"] <= iv["hi"], (r.round, path, iv)
            assert iv["lo"] <= iv["chosen"] <= iv["hi"], (r.round, path, iv)
            assert iv["physical"] == PHYSICAL[path]


async def test_a_convex_truth_changes_the_model_type_not_physics(tmp_path: Path) -> None:
    """A day whose meter follows a square power model (convex; the twin believes mse, concave for
    calibrationFactor ≥ 1), idle × 1.2 and max × 1.1: the calibrator ends on the square type with idle and
    max power within 10 % of the truth (A: 36 / 209 W), and its twin beats the uncalibrated one, with model
    choice on (``calibration.model_types``; the issue's run without it ended at calibrationFactor 990 and
    maxPower 72 W)."""
    truth = demo_topology()
    for h in truth["clusters"][0]["hosts"]:
        pm = h["cpuPowerModel"]
        pm["modelType"], pm["idlePower"], pm["maxPower"] = (
            "square",
            pm["idlePower"] * 1.2,
            pm["maxPower"] * 1.1,
        )
        del pm["calibrationFactor"]
    wl = write_synthetic(tmp_path / "wl", seed=13, days=1, truth=[(0, truth)])
    types = ["mse", "linear", "square", "cubic", "sqrt"]
    result = await calibrate_offline(wl, _settings(tmp_path / "a", model_types=types), out=tmp_path / "with")
    assert result.mape_pct < result.mape_uncalibrated_pct
    versions = sorted((result.run_dir / "topologies").glob("v*.json"), key=lambda p: int(p.stem[1:]))
    final = parse_topology(json.loads(versions[-1].read_text())["topology"], source="final")
    a = final.clusters[0].hosts[0].cpuPowerModel
    assert a.modelType == "square", a
    assert abs(a.idlePower - 36.0) <= 3.6, a
    assert abs(a.maxPower - 209.0) <= 20.9, a
