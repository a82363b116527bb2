"""Accepting a proposal (issue 18 item 2): a proposal is a change applied to the topology in effect when it is
accepted, so values a calibration changed since stay; a proposal whose own values changed since is refused
(409 through the API) saying why; journal rounds of earlier versions (whole topologies) still accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from opendt.models.patch import apply_patch
from opendt.optimizer.component import OptimizerError
from opendt.optimizer.journal import OptimizerJournal
from opendt.optimizer.round import Round
from opendt.twin.topology import SimTopology, TopologyWriter

from .conftest import FakeScenarios, make_optimizer

HOUR = 3_600_000
SLO = {"energy_kwh_per_window": 0.6 / 12, "task_wait_p95_s": 1800}


async def _kept(tmp_path: Path) -> tuple[Any, Round, list[SimTopology]]:
    """A 100-host optimizer with one kept round (made on version 0) and a writer recording what it writes."""
    journal = OptimizerJournal(tmp_path / "optimizer.jsonl")
    opt = make_optimizer(tmp_path, SLO, FakeScenarios(busy=60), journal, accept="apply")
    written: list[SimTopology] = []

    async def publish(sim: SimTopology) -> None:
        written.append(sim)

    opt.writer = TopologyWriter(opt.box, publish, lambda: 0)
    r = Round(1, 0, HOUR, 0)
    await opt.run_round(r)
    await journal.round(r.to_json_dict())
    assert r.status == "kept"
    assert r.proposal is not None
    assert [c.leaf for c in r.proposal.changes] == ["count"]
    return opt, r, written


async def test_accept_keeps_what_calibration_changed_since(tmp_path: Path) -> None:
    """The proposal (a host count made on version 0) accepted after a calibration changed idlePower and
    calibrationFactor (version 1) sets the host count alone: the calibrated values stay."""
    opt, r, written = await _kept(tmp_path)
    calibrated = apply_patch(
        opt.box.physical, {"cpuPowerModel.idlePower": 36.0, "cpuPowerModel.calibrationFactor": 4.5}
    )
    await opt.writer.write(calibrated, "calibrator", "calibration round 3")
    done = await opt.accept()
    assert done.accepted_version == 2
    new = written[-1].topology.clusters[0].hosts[0]
    assert new.cpuPowerModel.idlePower == 36.0
    assert new.cpuPowerModel.calibrationFactor == 4.5
    assert new.count == r.proposal.changes[0].after  # type: ignore[union-attr]
    assert written[-1].source == "optimizer"


async def test_accept_refuses_a_proposal_whose_values_changed(tmp_path: Path) -> None:
    """When the host count the proposal changes was changed since (another accept, the API), the accept is
    refused naming the path, the value it was made on and the value now (the API's 409 carries it); nothing
    is written; the optimizer's view marks the conflict."""
    opt, r, written = await _kept(tmp_path)
    await opt.writer.write(apply_patch(opt.box.physical, {"count": 90}), "api", "by hand")
    n = len(written)
    with pytest.raises(OptimizerError, match=r"made on topology version 0, where clusters\[c\]\.hosts\[h\]\.count "
                       r"was 100; it is 90 in version 1 \(source api\)"):  # fmt: skip
        await opt.accept()
    assert len(written) == n
    assert r.accepted_version is None
    view = opt.view()
    assert view["diff_vs_current"] == [
        {
            "path": "clusters[c].hosts[h].count",
            "before": 90,
            "after": r.proposal.changes[0].after,  # type: ignore[union-attr]
            "proposed_from": 100,
            "conflict": True,
        }
    ]


async def test_an_old_journal_round_accepts_as_a_patch(tmp_path: Path) -> None:
    """A round journaled by an earlier version (the whole topology, changes with before/after) read back after
    a restart is accepted as a change of the current, calibrated topology."""
    _, r, _ = await _kept(tmp_path)
    path = tmp_path / "optimizer.jsonl"
    doc = orjson.loads(path.read_bytes().splitlines()[-1])
    assert "topology" in doc["proposal"]
    again = make_optimizer(tmp_path, SLO, FakeScenarios(), OptimizerJournal(path), accept="apply")
    written: list[SimTopology] = []

    async def publish(sim: SimTopology) -> None:
        written.append(sim)

    again.writer = TopologyWriter(again.box, publish, lambda: 0)
    assert again.resume() == 1
    calibrated = apply_patch(again.box.physical, {"cpuPowerModel.maxPower": 200.0})
    await again.writer.write(calibrated, "calibrator", "calibration")
    await again.accept()
    host = written[-1].topology.clusters[0].hosts[0]
    assert host.cpuPowerModel.maxPower == 200.0
    assert host.count == r.proposal.changes[0].after  # type: ignore[union-attr]
