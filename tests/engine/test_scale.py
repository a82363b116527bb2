"""Topologies beyond the old 4,096-host cap: OpenDC's names in linear time, placement without a host scan,
and the memory bound of the host table."""

from __future__ import annotations

import random

import numpy as np
import pytest

from opendt.engine.hostindex import HostIndex, scan
from opendt.engine.hosts import TopologyTooLarge, UniqueNames, build_hosts, check_fits
from opendt.engine.topology import DEFAULT_POWER_MODEL, ClusterSpec, HostSpec, TopoSpec
from opendt.models import bounds
from opendt.models.topology import parse_topology


def opendc_scan(names: list[str]) -> list[str]:
    """OpenDC's ``createUniqueName`` as written (an ArrayList, a scan from ``name-0`` for every name)."""
    taken: list[str] = []
    out = []
    for name in names:
        if name not in taken:
            taken.append(name)
            out.append(name)
            continue
        i = 0
        new = f"{name}-{i}"
        while new in taken:
            i += 1
            new = f"{name}-{i}"
        taken.append(new)
        out.append(new)
    return out


def _host(name: str, count: int, cores: int = 16, mem: float = 1e3) -> HostSpec:
    return HostSpec(name, count, cores, 2100.0, mem, DEFAULT_POWER_MODEL, "MAX_MIN_FAIRNESS")


def test_host_and_cluster_names_are_opendcs_on_colliding_names() -> None:
    """Host groups and clusters whose names collide with the names OpenDC makes (``H-0`` given explicitly,
    ``H`` again after it, nested ``H-0-0``) get exactly the names of OpenDC's quadratic scan."""
    groups = [("H", 4), ("H-1", 2), ("H", 3), ("H-0", 2), ("H-0-0", 1), ("G", 1), ("H", 2), ("H-10", 1)]
    clusters = ["C", "C-0", "C", "C", "D"]
    spec = TopoSpec(
        tuple(
            ClusterSpec(c, "PowerSource", None, False, tuple(_host(n, k) for n, k in groups))
            for c in clusters
        )
    )
    table = build_hosts(spec)
    expected = opendc_scan([n for _ in clusters for n, k in groups for _ in range(k)])
    assert table.names == expected
    assert len(set(table.names)) == len(table.names)
    assert table.cluster_names == opendc_scan(clusters)
    assert table.source_names == opendc_scan(["PowerSource"] * len(clusters))


def test_linear_names_equal_the_scan_on_random_inputs() -> None:
    """Random sequences over a small alphabet of colliding names: the same names as the scan."""
    rng = random.Random(7)
    alphabet = ["a", "a-0", "a-1", "a-0-0", "a-2", "b", "b-0", "a-01"]
    for _ in range(200):
        names = [rng.choice(alphabet) for _ in range(rng.randrange(1, 60))]
        u = UniqueNames()
        assert [u.make(n) for n in names] == opendc_scan(names)


def test_a_large_host_group_is_named_in_linear_time() -> None:
    """200,000 hosts of one name are named as OpenDC names them (``H``, ``H-0`` … ``H-199998``)."""
    table = build_hosts(TopoSpec((ClusterSpec("C", "P", None, False, (_host("H", 200_000),)),)))
    assert table.n == 200_000
    assert table.names[:3] == ["H", "H-0", "H-1"]
    assert table.names[-1] == "H-199998"


def test_the_models_accept_a_million_hosts_and_ten_thousand_clusters() -> None:
    """The topology model's bounds leave room for real datacenters (issue 25)."""
    host = {
        "name": "H",
        "count": 100,
        "cpu": {"coreCount": 16, "coreSpeed": 2100},
        "memory": {"memorySize": 1},
    }
    doc = {"clusters": [{"name": f"c{i}", "hosts": [host]} for i in range(10_000)]}
    topo = parse_topology(doc)
    assert topo.host_count == 1_000_000
    assert bounds.MAX_HOSTS >= 1_000_000
    assert bounds.MAX_CLUSTERS >= 10_000


def test_a_host_table_beyond_memory_is_refused_in_one_line() -> None:
    """The engine refuses a topology whose host table would not fit in the memory available."""
    spec = TopoSpec((ClusterSpec("C", "P", None, False, (_host("H", 1_000_000),)),))
    with pytest.raises(TopologyTooLarge) as e:
        check_fits(spec, available=100 * 2**20)
    message = str(e.value)
    assert "\n" not in message
    assert "1,000,000 hosts" in message
    assert "0.1 GiB available" in message
    check_fits(spec, available=bounds.host_table_bytes(1_000_000, 1))


def test_the_index_picks_the_hosts_a_scan_picks() -> None:
    """Random placements and completions on hosts of a few shapes (cores, memory): the index's choice is the
    scan's every time, ties (lowest index) and memory-bound hosts included."""
    rng = np.random.default_rng(3)
    n = 300
    cores = rng.choice([4, 8, 16], n).astype(np.int64)
    mem = rng.choice([100.0, 150.0, 400.0], n)
    slack = mem * 0.5
    free = cores.copy()
    avail = mem.copy()
    index = HostIndex(cores, mem, slack, free, avail)
    placed: list[tuple[int, int, float]] = []
    for step in range(5000):
        if placed and rng.random() < 0.45:
            h, c, m = placed.pop(int(rng.integers(len(placed))))
            free[h] += c
            avail[h] += m
            index.update(h)
            continue
        c = int(rng.choice([1, 2, 4, 8, 16]))
        m = float(rng.choice([0.0, 10.0, 25.0, 60.0, 200.0, 500.0]))
        want = scan(c, m, free, avail, mem >= m, slack)
        got = index.pick(c, m)
        assert got == want, step
        if want >= 0:
            free[want] -= c
            avail[want] -= m
            index.update(want)
            placed.append((want, c, m))
    assert index.entries <= 2 * n + 4096


def test_many_host_shapes_fall_back_to_the_scan() -> None:
    """Past MAX_BUCKETS (here 300 hosts of distinct memory) the index declines and the scheduler scans: the
    choice is the scan's either way."""
    n = 300
    cores = np.full(n, 16, dtype=np.int64)
    mem = np.arange(1.0, n + 1.0)
    free, avail = cores.copy(), mem.copy()
    index = HostIndex(cores, mem, mem * 0.5, free, avail)
    assert len(index.classes) == n
    assert not index.usable
    assert index.pick(4, 10.0) is None
    few = HostIndex(cores[:10], mem[:10], mem[:10] * 0.5, free[:10], avail[:10])
    assert few.usable
    assert few.pick(4, 1.0) == scan(4, 1.0, free[:10], avail[:10], mem[:10] >= 1.0, mem[:10] * 0.5) == 9
