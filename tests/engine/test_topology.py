"""The engine's fast topology parse agrees with the pydantic model of opendt.models.topology."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from opendt.engine.topology import DEFAULT_POWER_MODEL, FIELDS, TopoSpec, load_spec, parse_fast
from opendt.models import topology as model
from opendt.models.topology import TopologyError, parse_topology

from .conftest import REFERENCE, SURF

FULL: dict[str, Any] = {
    "clusters": [
        {
            "name": "C01",
            "count": 2,
            "hosts": [
                {
                    "name": "H",
                    "count": 3,
                    "cpu": {
                        "coreCount": 16,
                        "coreSpeed": 2100,
                        "count": 2,
                        "modelName": "m",
                        "vendor": "v",
                        "arch": "a",
                    },
                    "memory": {"memorySize": 128000, "memorySpeed": 1.5, "modelName": "m"},
                    "cpuPowerModel": {
                        "modelType": "asymptotic",
                        "power": 300.0,
                        "idlePower": 25,
                        "maxPower": 174.0,
                        "calibrationFactor": 4,
                        "asymUtil": 0.3,
                        "dvfs": False,
                    },
                    "gpuPowerModel": {"modelType": "linear", "idlePower": 1, "maxPower": 2},
                    "cpuDistributionPolicy": {
                        "type": "MAX_MIN_FAIRNESS",
                        "shareRatio": 0.5,
                        "updateIntervalLength": 10,
                    },
                },
                {"cpu": {"coreCount": 8, "coreSpeed": 3000.5}, "memory": {"memorySize": 0}},
            ],
            "powerSource": {"name": "P", "maxPower": 1e9, "carbonTracePath": "c.parquet"},
        },
        {"hosts": [{"cpu": {"coreCount": 1, "coreSpeed": 1}, "memory": {"memorySize": 1}}]},
    ]
}
CANDIDATES: list[Any] = [0, -1, 1, 2.5, -0.5, 1e308, 10**400, "2 GHz", "x", "", True, False, None, [], {}]


def _pydantic(doc: Any) -> TopoSpec | None:
    try:
        return TopoSpec.from_model(parse_topology(doc))
    except TopologyError:
        return None


def _leaves(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(doc, dict):
        return [path] + [p for k, v in doc.items() for p in _leaves(v, (*path, k))]
    if isinstance(doc, list):
        return [path] + [p for i, v in enumerate(doc) for p in _leaves(v, (*path, i))]
    return [path]


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def _mutations(doc: Any) -> list[Any]:
    out = []
    for path in _leaves(doc)[1:]:
        out += [_set(doc, path, v) for v in CANDIDATES]
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict):
            d = copy.deepcopy(doc)
            node = d
            for k in path[:-1]:
                node = node[k]
            del node[path[-1]]
            out.append(d)
            out.append(_set(doc, (*path[:-1], "bogus"), 1))
    return out


def test_field_names_and_defaults_match_the_model() -> None:
    """Every model field is known to the fast parse, and the defaults it fills in are the model's."""
    for name, fields in FIELDS.items():
        assert set(getattr(model, name).model_fields) == fields, name
    host = model.Host.model_validate({"cpu": {"coreCount": 1, "coreSpeed": 1}, "memory": {"memorySize": 1}})
    spec = TopoSpec.from_model(model.Topology(clusters=[model.Cluster(hosts=[host])]))
    assert spec.clusters[0].hosts[0].power == DEFAULT_POWER_MODEL
    assert (spec.clusters[0].name, spec.clusters[0].source_name, spec.clusters[0].hosts[0].name) == (
        "Cluster",
        "PowerSource",
        "Host",
    )
    assert parse_fast({"clusters": [{"hosts": [host.model_dump(exclude_unset=True)]}]}) == spec


def test_fast_parse_agrees_with_the_model_on_mutated_documents() -> None:
    """Whatever the fast parse accepts, pydantic accepts with the same values (it may decline more)."""
    docs = [FULL, *_mutations(FULL)]
    accepted = 0
    for doc in docs:
        fast = parse_fast(doc)
        if fast is not None:
            accepted += 1
            assert fast == _pydantic(doc), json.dumps(doc)
    assert parse_fast(FULL) is not None
    assert accepted > 50


@pytest.mark.parametrize(
    "path",
    [SURF / "topology.json", *sorted(REFERENCE.glob("*/input/topology.json"))],
    ids=lambda p: p.parent.parent.name,
)
def test_real_topologies_take_the_fast_path(path: Path) -> None:
    """The SURF and reference topologies are parsed without pydantic, to the same spec."""
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    doc = json.loads(path.read_text())
    fast = parse_fast(doc)
    assert fast is not None
    assert fast == _pydantic(doc)
    assert load_spec(path) == (doc, fast)


def test_load_spec_errors_are_the_model_errors(tmp_path: Path) -> None:
    """Missing files, bad JSON and invalid fields raise the pydantic module's TopologyError."""
    with pytest.raises(TopologyError, match="topology file not found"):
        load_spec(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TopologyError, match="not valid JSON"):
        load_spec(tmp_path / "bad.json")
    (tmp_path / "t.json").write_text(
        json.dumps(_set(FULL, ("clusters", 0, "hosts", 0, "cpu", "coreCount"), 0))
    )
    with pytest.raises(TopologyError, match="coreCount"):
        load_spec(tmp_path / "t.json")
    units = _set(FULL, ("clusters", 0, "hosts", 0, "cpu", "coreSpeed"), "2.1 GHz")
    (tmp_path / "u.json").write_text(json.dumps(units))
    assert parse_fast(units) is None
    assert load_spec(tmp_path / "u.json")[1].clusters[0].hosts[0].core_speed == pytest.approx(2100.0)
