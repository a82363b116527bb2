"""The host table: one row per simulated host, built from a ``Topology`` as OpenDC provisions it.

Host, cluster and power-source names are made unique the way OpenDC's ``createUniqueName`` does: the
first occurrence keeps its name, later ones become ``name-0``, ``name-1``, … (hosts globally).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from opendt.models import bounds

from .power import F64, I64, PowerModelLike, PowerParams
from .topology import TopologyLike, TopoSpec, spec_of


class TopologyTooLarge(ValueError):
    """A topology whose host table would not fit in the memory this machine has available."""


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``; the physical memory elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def check_fits(spec: TopoSpec, available: int | None = None) -> None:
    """Refuse, with one line, a topology whose host table would not fit in the available memory."""
    hosts = sum(h.count for c in spec.clusters for h in c.hosts)
    need = bounds.host_table_bytes(hosts, len(spec.clusters))
    have = available_memory() if available is None else available
    if need > have:
        raise TopologyTooLarge(
            f"topology of {hosts:,} hosts in {len(spec.clusters):,} clusters needs about "
            f"{need / 2**30:.1f} GiB for its host table ({bounds.HOST_BYTES} bytes per host); "
            f"this machine has {have / 2**30:.1f} GiB available"
        )


class UniqueNames:
    """OpenDC's ``createUniqueName`` over one list of names, in time linear in the names made.

    OpenDC keeps ``name`` if it is free and otherwise scans ``name-0``, ``name-1``, … from 0 for the first
    free one: quadratic in the hosts of one name. The names taken only grow, so the first free index of a
    name never decreases: the scan resumes where the last one for that name stopped. Every string
    ``name-<i>`` is skipped at most once (only ``name`` and ``i`` form it), so the work is linear in the
    names made, and the names are OpenDC's (tests/engine/test_topology.py compares them with the scan).
    """

    def __init__(self) -> None:
        self.taken: set[str] = set()
        self._next: dict[str, int] = {}

    def make(self, name: str) -> str:
        """The unique name of the next ``name``."""
        taken = self.taken
        if name not in taken:
            taken.add(name)
            return name
        i = self._next.get(name, 0)
        out = f"{name}-{i}"
        while out in taken:
            i += 1
            out = f"{name}-{i}"
        self._next[name] = i + 1
        taken.add(out)
        return out

    def many(self, name: str, count: int) -> list[str]:
        """The unique names of ``count`` hosts named ``name`` (one host group)."""
        return [self.make(name) for _ in range(count)]


def unique_name(name: str, taken: set[str]) -> str:
    """OpenDC ``createUniqueName`` itself: keep ``name`` if free, else the first free ``name-<i>`` scanning
    from 0 (quadratic over many equal names: :class:`UniqueNames` makes the same names in linear time)."""
    if name not in taken:
        taken.add(name)
        return name
    i = 0
    while f"{name}-{i}" in taken:
        i += 1
    out = f"{name}-{i}"
    taken.add(out)
    return out


@dataclass(frozen=True)
class HostTable:
    """Parallel per-host arrays in topology order (the scheduler's tie-break order)."""

    names: list[str]
    cluster: I64
    cores: I64
    capacity: F64
    mem: F64
    power: PowerParams
    cluster_names: list[str]
    source_names: list[str]

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def n_clusters(self) -> int:
        return len(self.cluster_names)

    def idle_by_cluster(self) -> F64:
        """Σ P(0) over the hosts of each cluster (the floor every export instant includes)."""
        out: F64 = np.bincount(
            self.cluster, weights=self.power.idle_power(), minlength=self.n_clusters
        ).astype(np.float64)
        return out

    def same_structure(self, other: HostTable) -> bool:
        """True when hosts, cores and memory are the same (only power or speed differ)."""
        return (
            self.names == other.names
            and np.array_equal(self.cores, other.cores)
            and np.array_equal(self.mem, other.mem)
            and np.array_equal(self.cluster, other.cluster)
        )


def build_hosts(topology: TopologyLike) -> HostTable:
    """Expand every host spec ``count`` times and unique-ify names as OpenDC does (linear in the hosts)."""
    spec = spec_of(topology)
    check_fits(spec)
    host_names, cluster_names, source_names = UniqueNames(), UniqueNames(), UniqueNames()
    names: list[str] = []
    groups = [h for c in spec.clusters for h in c.hosts]
    counts = np.array([h.count for h in groups], dtype=np.int64)
    group_cluster = np.array([ci for ci, c in enumerate(spec.clusters) for _ in c.hosts], dtype=np.int64)
    cluster_list: list[str] = []
    source_list: list[str] = []
    for c in spec.clusters:
        cluster_list.append(cluster_names.make(c.name))
        source_list.append(source_names.make(c.source_name))
        for h in c.hosts:
            names.extend(host_names.many(h.name, h.count))

    def per_host(values: list[float] | list[int], dtype: type) -> npt.NDArray[Any]:
        return np.repeat(np.array(values, dtype=dtype), counts)

    models: list[PowerModelLike] = [h.power for h in groups]
    power = PowerParams.from_models(models)
    return HostTable(
        names=names,
        cluster=np.repeat(group_cluster, counts),
        cores=per_host([h.cores for h in groups], np.int64),
        capacity=per_host([h.capacity_mhz for h in groups], np.float64),
        mem=per_host([h.memory_size for h in groups], np.float64),
        power=PowerParams(group=np.repeat(power.group, counts), models=power.models),
        cluster_names=cluster_list,
        source_names=source_list,
    )


def utilization(demand: F64, capacity: F64) -> F64:
    """The power-model input ``min(demand / capacity, 1)`` (OPENDC_SEMANTICS §5.6)."""
    out: npt.NDArray[np.float64] = np.minimum(demand / capacity, 1.0)
    return out
