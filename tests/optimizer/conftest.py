"""Shared inputs for the optimizer tests: small multi-cluster topologies, outcomes and strategy contexts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from opendt.models.topology import Topology, parse_topology
from opendt.optimizer.component import Optimizer
from opendt.optimizer.journal import OptimizerJournal
from opendt.optimizer.rules import OptimizerContext, RulesStrategy
from opendt.optimizer.scoring import WindowOutcome
from opendt.optimizer.slo import Slo, SloWatcher
from opendt.settings import OptimizerSettings
from opendt.twin.scenarios import ScenarioResult
from opendt.twin.topology import TopologyBox

WINDOW_START_MS = 1_709_510_400_000  # 2024-03-04T00:00:00Z
WINDOW_END_MS = WINDOW_START_MS + 300_000


def host(name: str, count: int, cores: int, speed: float, *, cpus: int = 1, **model: Any) -> dict[str, Any]:
    """A host spec with an mse power model (overridable by keyword)."""
    pm = {"modelType": "mse", "idlePower": 30.0, "maxPower": 190.0, "calibrationFactor": 4.0, **model}
    return {
        "name": name,
        "count": count,
        "cpu": {"coreCount": cores, "coreSpeed": speed, "count": cpus},
        "memory": {"memorySize": 256000},
        "cpuPowerModel": pm,
    }


def topology(*clusters: tuple[str, list[dict[str, Any]]]) -> Topology:
    """A topology of (cluster name, host specs) pairs."""
    return parse_topology({"clusters": [{"name": n, "hosts": hs} for n, hs in clusters]})


def two_clusters() -> Topology:
    """east: A (4 × 16 cores @ 2400) and B (2 × 32 @ 2000); west: C (3 × 8 @ 3000)."""
    return topology(
        ("east", [host("A", 4, 16, 2400), host("B", 2, 32, 2000)]),
        ("west", [host("C", 3, 8, 3000)]),
    )


SLO = Slo(energy_kwh_per_window=1.0, task_wait_p95_s=100.0)


def outcome(energy: float = 1.0, wait: float | None = 100.0, **kw: Any) -> WindowOutcome:
    """An outcome with ``energy`` kWh and a wait p95 of ``wait`` s (peak power 1 kW unless given)."""
    return WindowOutcome(energy_kwh=energy, peak_power_w=kw.pop("peak", 1000.0), task_wait_p95_s=wait, **kw)


def context(
    topo: Topology | None = None,
    out: WindowOutcome | None = None,
    slo: Slo = SLO,
    **kw: Any,
) -> OptimizerContext:
    """A context over one 5-minute window (default: :func:`two_clusters`, outcome on target)."""
    return OptimizerContext(
        topology=topo if topo is not None else two_clusters(),
        outcome=out if out is not None else outcome(),
        slo=slo,
        window_start_ms=WINDOW_START_MS,
        window_end_ms=WINDOW_END_MS,
        **kw,
    )


class FakeScenarios:
    """Energy = ``base`` + hosts × ``per_host`` kWh per hour; wait p95 = 0 s down to ``busy`` hosts, then
    3000 s."""

    def __init__(self, per_host: float = 0.01, busy: int = 60, base: float = 0.0) -> None:
        self.per_host, self.busy, self.base = per_host, busy, base
        self.calls: list[tuple[str, list[int]]] = []

    async def run(self, start_ms: int, end_ms: int, topologies: Sequence[Topology], *, what: str
                  ) -> list[ScenarioResult]:  # fmt: skip
        self.calls.append((what, [t.host_count for t in topologies]))
        out = []
        for t in topologies:
            n = t.host_count
            kwh = self.base + n * self.per_host
            rows = pl.DataFrame({"energy_usage": [kwh * 3.6e6], "power_draw": [n * 10.0],
                                 "carbon_emission": [None]}, schema_overrides={"carbon_emission": pl.Float64})  # fmt: skip
            tasks = {"wait_p95_s": 0.0 if n >= self.busy else 3000.0, "runtime_mean_s": 600.0}
            out.append(ScenarioResult(rows, "", 0.01, tasks))
        return out


def make_optimizer(
    tmp_path: Path,
    slo: dict[str, Any],
    scen: FakeScenarios,
    journal: OptimizerJournal | None = None,
    **kw: Any,
) -> Optimizer:
    """100 hosts of 16 cores, rules, every 12 windows of 5 min, the SLOs written to ``tmp_path/slo.json``."""
    (tmp_path / "slo.json").write_text(json.dumps(slo))
    settings = OptimizerSettings(
        **{"enabled": True, "every_windows": 12, "slo_path": tmp_path / "slo.json", **kw}
    )
    box = TopologyBox(topology(("c", [host("h", 100, 16, 2100)])))
    return Optimizer(settings, box, scen, SloWatcher(tmp_path / "slo.json"), RulesStrategy(settings),  # type: ignore[arg-type]
                     window_ms=300_000, journal=journal)  # fmt: skip
