"""Shared inputs for the optimizer tests: small multi-cluster topologies, outcomes and strategy contexts."""

from __future__ import annotations

from typing import Any

from opendt.models.topology import Topology, parse_topology
from opendt.optimizer.rules import OptimizerContext
from opendt.optimizer.scoring import WindowOutcome
from opendt.optimizer.slo import Slo

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
