"""OpenDC's experiment JSON (OPENDC_SEMANTICS §1): strict parsing, the scenario product and outputs.

Paths are relative to the current directory, as in OpenDC. A topology's ``carbonTracePath`` is
resolved against the current directory first (what OpenDC does) and then against the topology file's
folder (the SURF workload-directory convention).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .carbon import CarbonTrace
from .topology import TopoSpec, load_spec

if TYPE_CHECKING:
    from opendt.models.topology import Topology

TOP_KEYS = {
    "name",
    "outputFolder",
    "initialSeed",
    "runs",
    "topologies",
    "workloads",
    "allocationPolicies",
    "failureModels",
    "maxNumFailures",
    "checkpointModels",
    "exportModels",
}
WORKLOAD_KEYS = {"pathToFile", "type", "sampleFraction", "submissionTime", "deferAll", "scalingPolicy"}
EXPORT_KEYS = {"exportInterval", "printFrequency", "filesToExport", "computeExportConfig"}
FILES = ("host", "task", "powerSource", "battery", "service")


class ExperimentError(ValueError):
    """An invalid or unsupported experiment file."""


@dataclass(frozen=True)
class Scenario:
    """One element of the experiment's cartesian product."""

    index: int
    topology_path: str
    topology_doc: Any
    spec: TopoSpec
    carbon: list[CarbonTrace | None]
    workload: dict[str, Any]
    export: dict[str, Any]
    interval_ms: int
    files: tuple[str, ...]

    @cached_property
    def topology(self) -> Topology:
        """The pydantic model of the topology (built on first use: the engine itself needs only ``spec``)."""
        from opendt.models.topology import parse_topology

        return parse_topology(self.topology_doc, source=self.topology_path)


@dataclass(frozen=True)
class Experiment:
    name: str
    output_folder: Path
    runs: int
    scenarios: list[Scenario]
    raw: dict[str, Any]


def _keys(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ExperimentError(f"{where} must be a JSON object")
    for k in obj:
        if k not in allowed:
            raise ExperimentError(f"Encountered an unknown key '{k}' in {where}")
    return obj


def _list(obj: dict[str, Any], key: str, default: list[Any] | None) -> list[Any]:
    v = obj.get(key, default)
    if v is None or not isinstance(v, list) or not v:
        raise ExperimentError(f"'{key}' must be a non-empty list")
    return v


def _check_policy(p: Any) -> None:
    if not isinstance(p, dict) or p.get("type") != "prefab" or p.get("policyName") != "Mem":
        raise ExperimentError(f"unsupported allocation policy {json.dumps(p)} (only prefab 'Mem')")
    _keys(p, {"type", "policyName"}, "allocationPolicies")


def _check_failure(f: Any) -> None:
    if f is not None and not (isinstance(f, dict) and f.get("type") == "no"):
        raise ExperimentError("failure models are not supported")


def _carbon_for(topology: TopoSpec, topo_path: Path) -> list[CarbonTrace | None]:
    out: list[CarbonTrace | None] = []
    for c in topology.clusters:
        if c.has_battery:
            raise ExperimentError(f"cluster {c.name!r}: batteries are not supported")
        for h in c.hosts:
            if h.distribution != "MAX_MIN_FAIRNESS":
                raise ExperimentError(f"host {h.name!r}: only the MAX_MIN_FAIRNESS distribution is supported")
        p = c.carbon_trace_path
        if p is None:
            out.append(None)
            continue
        path = Path(p)
        if not path.exists() and (topo_path.parent / p).exists():
            path = topo_path.parent / p
        out.append(CarbonTrace.load(path))
    return out


def read_experiment(path: Path) -> Experiment:
    """Parse and validate ``path``; topologies and carbon traces are loaded, workloads are not."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"experiment file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ExperimentError(
            f"experiment file {path} is not valid JSON: {e.msg} (line {e.lineno})"
        ) from None
    spec = _keys(raw, TOP_KEYS, "experiment")
    runs = spec.get("runs", 1)
    if not isinstance(runs, int) or runs <= 0:
        raise ExperimentError("'runs' must be a positive integer")
    for p in _list(spec, "allocationPolicies", [{"type": "prefab", "policyName": "Mem"}]):
        _check_policy(p)
    for f in spec.get("failureModels", [None]) or [None]:
        _check_failure(f)
    for c in spec.get("checkpointModels", [None]) or [None]:
        if c is not None:
            raise ExperimentError("checkpoint models are not supported")
    topologies = []
    for t in _list(spec, "topologies", None):
        tp = _keys(t, {"pathToFile"}, "topologies").get("pathToFile")
        if not isinstance(tp, str):
            raise ExperimentError("topologies[].pathToFile is required")
        doc, topo = load_spec(Path(tp))
        topologies.append((tp, doc, topo, _carbon_for(topo, Path(tp))))
    workloads = [_workload(w) for w in _list(spec, "workloads", None)]
    exports = [_export(e) for e in _list(spec, "exportModels", [{}])]
    n_policies = len(spec.get("allocationPolicies", [1]))
    scenarios = []
    combos = itertools.product(topologies, workloads, range(n_policies), exports)
    for i, ((tp, doc, topo, carbon), w, _, ex) in enumerate(combos):
        files = tuple(f for f in FILES if f in ex.get("filesToExport", FILES))
        interval = round(float(ex.get("exportInterval", 300)) * 1000)
        scenarios.append(Scenario(i, tp, doc, topo, carbon, w, ex, interval, files))
    name = spec.get("name") or "unnamed-simulation"
    return Experiment(str(name), Path(spec.get("outputFolder", "output")), runs, scenarios, spec)


def _workload(w: Any) -> dict[str, Any]:
    w = _keys(w, WORKLOAD_KEYS, "workloads")
    if not isinstance(w.get("pathToFile"), str):
        raise ExperimentError("workloads[].pathToFile is required")
    if w.get("type") != "ComputeWorkload":
        raise ExperimentError(f"unsupported workload type {w.get('type')!r} (only ComputeWorkload)")
    if float(w.get("sampleFraction", 1.0)) < 1.0:
        raise ExperimentError("sampleFraction < 1 is not supported (OpenDC samples with an unseeded RNG)")
    if w.get("scalingPolicy", "NoDelay") not in ("NoDelay", "Perfect"):
        raise ExperimentError(f"unknown scalingPolicy {w.get('scalingPolicy')!r}")
    if not Path(w["pathToFile"]).is_dir():
        raise ExperimentError(f"workload directory not found: {w['pathToFile']}")
    return cast(dict[str, Any], w)


def _export(e: Any) -> dict[str, Any]:
    e = _keys(e, EXPORT_KEYS, "exportModels")
    interval = e.get("exportInterval", 300)
    if not isinstance(interval, int | float) or interval <= 0:
        raise ExperimentError("exportInterval must be > 0 (seconds)")
    files = e.get("filesToExport", list(FILES))
    bad = [f for f in files if f not in FILES]
    if bad:
        raise ExperimentError(f"unknown filesToExport entries {bad}")
    return cast(dict[str, Any], e)


def trackr_entry(exp: Experiment, sc: Scenario) -> dict[str, Any]:
    """The scenario's entry in ``trackr.json`` (non-default fields plus the resolved file switches)."""
    export = dict(sc.export)
    export["filesToExportDict"] = {
        f: f in sc.files for f in ("host", "task", "powerSource", "battery", "service")
    }
    return {
        "name": exp.name,
        "outputFolder": str(exp.raw.get("outputFolder", "output")),
        "topology": {"pathToFile": sc.topology_path},
        "workload": sc.workload,
        "exportModel": export,
    }
