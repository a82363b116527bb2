"""Dotted topology patches: targeting, value kinds, validation of the result, and diffs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from opendt.models.patch import PATCH_LEAVES, Change, PatchError, apply_patch, topology_diff
from opendt.models.topology import load_topology, parse_topology

from .conftest import host, topology, two_clusters

DEMO_TOPOLOGY = Path(__file__).resolve().parents[2] / "data" / "demo" / "topology.json"


def _speeds(t: object) -> list[float]:
    return [h.cpu.coreSpeed for c in t.clusters for h in c.hosts]  # type: ignore[attr-defined]


def test_unprefixed_path_sets_every_host_spec_of_every_cluster() -> None:
    """The what-if example {"cpu.coreSpeed": 2800} reaches all host specs (demo topology and a two-cluster one)."""
    demo = load_topology(DEMO_TOPOLOGY)
    assert _speeds(apply_patch(demo, {"cpu.coreSpeed": 2800})) == [2800.0, 2800.0]
    assert _speeds(apply_patch(two_clusters(), {"cpu.coreSpeed": 2800})) == [2800.0] * 3


def test_cluster_prefix_restricts_to_that_cluster() -> None:
    """clusters[west]. changes only west's host specs."""
    t = apply_patch(two_clusters(), {"clusters[west].cpu.coreSpeed": 2500})
    assert _speeds(t) == [2400.0, 2000.0, 2500.0]


def test_cluster_and_host_prefix_restricts_to_one_host_spec() -> None:
    """clusters[east].hosts[B]. changes B only; the other leaves of B stay."""
    t = apply_patch(two_clusters(), {"clusters[east].hosts[B].count": 5})
    assert [h.count for c in t.clusters for h in c.hosts] == [4, 5, 3]
    assert t.clusters[0].hosts[1].cpu.coreCount == 32


def test_host_prefix_without_cluster_matches_that_name_in_every_cluster() -> None:
    """hosts[X]. changes every host spec named X, whichever cluster holds it."""
    t0 = topology(("a", [host("X", 1, 8, 2000), host("Y", 1, 8, 2000)]), ("b", [host("X", 1, 8, 2000)]))
    t = apply_patch(t0, {"hosts[X].cpu.coreCount": 12})
    assert [h.cpu.coreCount for c in t.clusters for h in c.hosts] == [12, 8, 12]


def test_structural_and_calibration_leaves_are_all_patchable() -> None:
    """count, cpu.coreCount, cpu.count, memory.memorySize and the power-model leaves take the given values."""
    t = apply_patch(
        two_clusters(),
        {
            "clusters[west].hosts[C].count": 7,
            "clusters[west].hosts[C].cpu.coreCount": 24,
            "clusters[west].hosts[C].cpu.count": 2,
            "clusters[west].hosts[C].memory.memorySize": 1024,
            "clusters[west].hosts[C].cpuPowerModel.calibrationFactor": 6.5,
            "clusters[west].hosts[C].cpuPowerModel.idlePower": 40,
            "clusters[west].hosts[C].cpuPowerModel.maxPower": 300,
            "clusters[west].hosts[C].cpuPowerModel.modelType": "linear",
        },
    )
    c = t.clusters[1].hosts[0]
    assert (c.count, c.cpu.coreCount, c.cpu.count, c.memory.memorySize) == (7, 24, 2, 1024.0)
    pm = c.cpuPowerModel
    assert (pm.calibrationFactor, pm.idlePower, pm.maxPower, pm.modelType) == (6.5, 40.0, 300.0, "linear")
    assert isinstance(c.count, int)
    assert {"count", "cpu.coreCount", "cpu.coreSpeed", "cpuPowerModel.modelType"} <= set(PATCH_LEAVES)


def test_later_paths_override_earlier_ones() -> None:
    """A narrower path after a wider one wins for its host spec; the others keep the wider value."""
    t = apply_patch(two_clusters(), {"cpu.coreSpeed": 2200, "clusters[east].hosts[A].cpu.coreSpeed": 2600})
    assert _speeds(t) == [2600.0, 2200.0, 2200.0]


def test_input_topology_is_not_modified_and_empty_patch_is_identity() -> None:
    """apply_patch returns a new topology; an empty patch gives an equal one."""
    t0 = two_clusters()
    before = t0.to_json_dict()
    apply_patch(t0, {"count": 1, "cpu.coreSpeed": 1000})
    assert t0.to_json_dict() == before
    assert apply_patch(t0, {}).to_json_dict() == before


def test_integral_float_is_accepted_for_integer_leaves() -> None:
    """12.0 is the integer 12 (JSON numbers from an LLM or an API body)."""
    t = apply_patch(two_clusters(), {"cpu.coreCount": 12.0})
    assert all(type(h.cpu.coreCount) is int and h.cpu.coreCount == 12 for c in t.clusters for h in c.hosts)


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"cpu.coreCount": 12.5}, "'cpu.coreCount': 12.5 is not an integer"),
        ({"count": True}, "'count': True is not a number"),
        ({"cpu.coreSpeed": "fast"}, "'cpu.coreSpeed': 'fast' is not a number"),
        ({"cpu.coreSpeed": math.nan}, "'cpu.coreSpeed': nan is not finite"),
        ({"cpuPowerModel.modelType": 3}, "'cpuPowerModel.modelType': 3 is not a string"),
        ({"cpu.turbo": 1}, "'cpu.turbo': unknown parameter 'cpu.turbo'"),
        ({"clusters[east]": 1}, "not a path of the form"),
        ({"clusters[north].count": 1}, "no cluster named 'north' (clusters: east, west)"),
        ({"clusters[west].hosts[A].count": 1}, "no host spec named 'A' in cluster 'west' (hosts: C)"),
        ({"hosts[Z].count": 1}, "no host spec named 'Z' in any cluster (hosts: A, B, C)"),
    ],
)
def test_bad_paths_and_values_name_the_path(patch: dict[str, object], fragment: str) -> None:
    """Malformed paths, unknown leaves/clusters/hosts and values of the wrong kind raise PatchError."""
    with pytest.raises(PatchError) as e:
        apply_patch(two_clusters(), patch)  # type: ignore[arg-type]
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"count": 0}, "count: Input should be greater than or equal to 1"),
        ({"cpu.coreCount": -2}, "coreCount: Input should be greater than or equal to 1"),
        ({"cpuPowerModel.idlePower": 500}, "maxPower (190.0) must be >= idlePower (500.0)"),
        ({"cpuPowerModel.modelType": "asymptotic"}, "asymptotic power model needs asymUtil > 0"),
        ({"cpuPowerModel.modelType": "constant"}, "modelType constant needs power, which is not set"),
    ],
)
def test_invalid_result_raises_naming_the_patch(patch: dict[str, object], fragment: str) -> None:
    """A result the topology model (or OpenDC) refuses is a PatchError quoting the patch and the problem."""
    with pytest.raises(PatchError) as e:
        apply_patch(two_clusters(), patch)  # type: ignore[arg-type]
    msg = str(e.value)
    assert fragment in msg
    assert next(iter(patch)) in msg


def test_defaulted_section_is_seeded_with_its_default_values() -> None:
    """A host without cpuPowerModel (OpenDC's default linear 200–400 W) keeps the default's other values."""
    doc = {
        "clusters": [
            {
                "name": "c",
                "hosts": [
                    {"name": "h", "cpu": {"coreCount": 8, "coreSpeed": 2000}, "memory": {"memorySize": 1}}
                ],
            }
        ]
    }
    t = apply_patch(parse_topology(doc), {"cpuPowerModel.idlePower": 150})
    pm = t.clusters[0].hosts[0].cpuPowerModel
    assert (pm.modelType, pm.idlePower, pm.maxPower, pm.power) == ("linear", 150.0, 400.0, 350.0)


def test_topology_diff_lists_changed_leaves_with_full_paths() -> None:
    """The diff names each changed leaf per host spec, in cluster/host order; identical topologies give []."""
    t0 = two_clusters()
    t1 = apply_patch(t0, {"clusters[west].count": 2, "clusters[east].hosts[A].cpu.coreSpeed": 2160})
    assert topology_diff(t0, t1) == [
        Change("clusters[east].hosts[A].cpu.coreSpeed", "cpu.coreSpeed", 2400.0, 2160.0),
        Change("clusters[west].hosts[C].count", "count", 3, 2),
    ]
    assert topology_diff(t0, two_clusters()) == []


def test_topology_diff_round_trips_through_apply_patch() -> None:
    """Applying the diff's paths to the old topology gives the new one."""
    t0 = two_clusters()
    t1 = apply_patch(t0, {"count": 1, "cpu.coreCount": 20, "cpuPowerModel.calibrationFactor": 5.0})
    patch = {c.path: c.after for c in topology_diff(t0, t1)}
    assert apply_patch(t0, patch) == t1


def test_topology_diff_refuses_different_shapes() -> None:
    """Topologies with other clusters or host specs cannot be diffed (a patch never changes the shape)."""
    other = topology(("east", [host("A", 4, 16, 2400)]))
    with pytest.raises(PatchError, match="different shapes"):
        topology_diff(two_clusters(), other)
