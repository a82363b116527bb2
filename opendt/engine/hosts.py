"""The host table: one row per simulated host, built from a ``Topology`` as OpenDC provisions it.

Host, cluster and power-source names are made unique the way OpenDC's ``createUniqueName`` does: the
first occurrence keeps its name, later ones become ``name-0``, ``name-1``, … (hosts globally).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .power import F64, I64, PowerModelLike, PowerParams
from .topology import TopologyLike, spec_of


def unique_name(name: str, taken: set[str]) -> str:
    """OpenDC ``createUniqueName``: keep ``name`` if free, else the first free ``name-<i>``."""
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
    """Expand every host spec ``count`` times and unique-ify names as OpenDC does."""
    names: list[str] = []
    cluster: list[int] = []
    cores: list[int] = []
    capacity: list[float] = []
    mem: list[float] = []
    models: list[PowerModelLike] = []
    host_taken: set[str] = set()
    cluster_taken: set[str] = set()
    source_taken: set[str] = set()
    cluster_names: list[str] = []
    source_names: list[str] = []
    for ci, c in enumerate(spec_of(topology).clusters):
        cluster_names.append(unique_name(c.name, cluster_taken))
        source_names.append(unique_name(c.source_name, source_taken))
        for h in c.hosts:
            for _ in range(h.count):
                names.append(unique_name(h.name, host_taken))
                cluster.append(ci)
                cores.append(h.cores)
                capacity.append(h.capacity_mhz)
                mem.append(h.memory_size)
                models.append(h.power)
    return HostTable(
        names=names,
        cluster=np.array(cluster, dtype=np.int64),
        cores=np.array(cores, dtype=np.int64),
        capacity=np.array(capacity, dtype=np.float64),
        mem=np.array(mem, dtype=np.float64),
        power=PowerParams.from_models(models),
        cluster_names=cluster_names,
        source_names=source_names,
    )


def utilization(demand: F64, capacity: F64) -> F64:
    """The power-model input ``min(demand / capacity, 1)`` (OPENDC_SEMANTICS §5.6)."""
    out: npt.NDArray[np.float64] = np.minimum(demand / capacity, 1.0)
    return out
