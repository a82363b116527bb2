"""Domain types: the OpenDC topology, workload records and the Kafka messages of DESIGN §4."""

from opendt.models.messages import (
    FragmentMessage,
    Heartbeat,
    MessageError,
    PowerMessage,
    SimResultsMessage,
    SimTopologyMessage,
    TaskMessage,
    TopologyMessage,
)
from opendt.models.records import CarbonSample, Fragment, PowerSample, Task
from opendt.models.topology import Cluster, Cpu, Host, Memory, PowerModel, PowerSourceSpec, Topology

__all__ = [
    "CarbonSample",
    "Cluster",
    "Cpu",
    "Fragment",
    "FragmentMessage",
    "Heartbeat",
    "Host",
    "Memory",
    "MessageError",
    "PowerMessage",
    "PowerModel",
    "PowerSample",
    "PowerSourceSpec",
    "SimResultsMessage",
    "SimTopologyMessage",
    "Task",
    "TaskMessage",
    "Topology",
    "TopologyMessage",
]
