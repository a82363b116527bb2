"""The bounds of every value that enters the twin, from physics and from the types of the engine and files.

One table, used wherever a value enters: the topology model (API bodies, ``dc.topology``/``sim.topology``
messages, topology files, patches, what-if, optimizer and calibration candidates), the Kafka message models
and their fast decoder, the engine's fast topology parse, and the API's parsing of times. A value outside is
rejected where it enters, with a message naming the field. No pydantic here: the engine's CLI imports it.

* **Times** (epoch ms): ``[1970-01-01, 2200-01-01)``. Durations at most 10 years, so every end time stays
  before 2210, inside what int64 nanoseconds hold (to 2262-04-11: polars/numpy/arrow ``ns`` timestamps), and
  every time and duration inside int64 milliseconds (OpenDC's ``Long``) with room to add them.
* **Cores**: at most 65,536 per host (``coreCount × count``), and so per task. The largest single-image
  machines have 896 (HPE Superdome Flex) to 4,096 cores (SGI UV); 2¹⁶ is 16× that, and every core count
  (tasks' ``cpu_count`` is an Int32 column) stays far below 2³¹.
* **Core speed**: 1 MHz to 100 GHz (production CPUs run at 0.8–6 GHz, overclocking records at 9 GHz).
* **Hosts**: at most 2²⁴ (16.7 M) per topology (every host group's ``count`` and their sum), at most 2¹⁶
  clusters: 40× the largest datacenters (hundreds of thousands of servers). What really bounds them is
  memory: an engine holds about ``HOST_BYTES`` per host and ``CLUSTER_BYTES`` per cluster, and the engine
  refuses, in one line, a topology whose host table would not fit in the memory available
  (``opendt.engine.hosts.check_fits``). Every step is linear in hosts and clusters: OpenDC's unique names
  (``name``, ``name-0``, … each the first free one from 0) are made by resuming each name's scan where it
  stopped (``UniqueNames``, the same names), placement looks hosts up in an index by shape and free cores
  instead of scanning them all for every task (``opendt.engine.hostindex``). Measured on this 2-core
  machine under a load of 12–15 (``bench/topology_size.py``, one group of 16-core hosts): the host table
  of 100,000 hosts in 0.2 s and an engine in 0.4 s (1,000,000 hosts: 3 s); growth exponents from 10,000 to
  100,000 hosts between 0.6 and 1.34 for the table, a new engine, two hours of placement and export
  (1.16), an apply of the power model or of 10 % fewer hosts, a checkpoint (0.96; 1.4 MB at 100,000 hosts)
  and its load, and a what-if's copy of the engine; before the index, placement grew with exponent 1.43.
* **Memory**: at most 2⁴⁰ MiB (1 EiB) per host or task (the largest single-image machines have 48 TiB).
* **Power**: at most 1 MW per host (the largest servers draw 10–15 kW), so at most ``MAX_HOSTS`` MW
  measured; a sample's energy at most that for a day.
* **Power models**: ``calibrationFactor`` (the mse exponent r) in [1, 1000]: below 1 the model draws less
  than idle power at low load, below 0 it is infinite at zero load. ``asymUtil`` in [0, 1] (a utilization).
* **Counts and indices**: a fragment's ``index`` and a topology version fit an Int32 column; OpenDC's
  ``Int``/``Long`` fields fit theirs.
* **Text**: ids and names at most 256 characters, paths 4,096 (PATH_MAX), reasons 1,000.
"""

from __future__ import annotations

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

MIN_TIME_MS = 0
"""1970-01-01T00:00:00Z, inclusive."""
MAX_TIME_MS = 7_258_118_400_000
"""2200-01-01T00:00:00Z, exclusive."""
TIME_SCHEMA = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^(19[7-9][0-9]|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$",
    "description": "ISO-8601 time with a zone (Z or an offset), in [1970-01-01, 2200-01-01) UTC",
}
"""A time in a message as JSON Schema (the AsyncAPI document): what every producer can send; the decoder also
takes other ISO-8601 spellings with a zone."""
MAX_DURATION_MS = 3653 * 86_400_000
"""Ten years (of 365.25 days, rounded up to a whole day)."""

HOST_BYTES = 1024
"""Memory of one host in an engine, rounded up from what ``bench/topology_size.py --memory`` measures:
385 B of RSS per host at 1,000,000 hosts (its name, the host table, the scheduler's per-host state and
the placement index, after a window), plus per-window temporaries over hosts (≤ 64 B), twice (a what-if or
calibration candidate copies the engine): 2 × (385 + 64) ≈ 900 B."""
CLUSTER_BYTES = 4_096
"""Memory of one cluster in an engine: its names, carbon slot, export state and rows per instant."""
MAX_HOSTS = 2**24
"""Hosts of one topology: each host group's ``count`` and their sum (the engine refuses fewer when its
host table would not fit in memory: :func:`host_table_bytes`)."""
MAX_CLUSTERS = 2**16


def host_table_bytes(hosts: int, clusters: int) -> int:
    """What an engine's host table of ``hosts`` hosts in ``clusters`` clusters takes in memory."""
    return hosts * HOST_BYTES + clusters * CLUSTER_BYTES


MAX_HOST_CORES = 65_536
"""Cores of one host (``coreCount × count``), and so of one task (``cpu_count``)."""
MIN_CORE_SPEED_MHZ = 1.0
MAX_CORE_SPEED_MHZ = 100_000.0
MAX_TASK_MHZ = MAX_HOST_CORES * MAX_CORE_SPEED_MHZ
"""A task's CPU demand or capacity (MHz): no host supplies more."""
MAX_MEMORY_MIB = float(2**40)
MAX_HOST_POWER_W = 1e6
MAX_SITE_POWER_W = MAX_HOSTS * MAX_HOST_POWER_W
"""A measured power sample (one source may meter the whole datacenter)."""
MAX_ENERGY_J = MAX_SITE_POWER_W * 86_400
MIN_CALIBRATION_FACTOR = 1.0
MAX_CALIBRATION_FACTOR = 1000.0
MAX_CARBON_INTENSITY = 10_000.0
"""gCO2/kWh: ten times the dirtiest grid (coal, about 1,000)."""
MAX_ASYM_UTIL = 1.0
MAX_FRAGMENT_INDEX = INT32_MAX
MAX_VERSION = INT32_MAX

MAX_ID_LEN = 256
MAX_NAME_LEN = 256
MAX_PATH_LEN = 4096
MAX_REASON_LEN = 1000

BOUNDS: dict[str, tuple[float, float]] = {
    "count": (1, MAX_HOSTS),
    "cpu.coreCount": (1, MAX_HOST_CORES),
    "cpu.count": (1, MAX_HOST_CORES),
    "cpu.coreSpeed": (MIN_CORE_SPEED_MHZ, MAX_CORE_SPEED_MHZ),
    "memory.memorySize": (0.0, MAX_MEMORY_MIB),
    "cpuPowerModel.idlePower": (0.0, MAX_HOST_POWER_W),
    "cpuPowerModel.maxPower": (0.0, MAX_HOST_POWER_W),
    "cpuPowerModel.power": (0.0, MAX_HOST_POWER_W),
    "cpuPowerModel.calibrationFactor": (MIN_CALIBRATION_FACTOR, MAX_CALIBRATION_FACTOR),
    "cpuPowerModel.asymUtil": (0.0, MAX_ASYM_UTIL),
}
"""Inclusive bounds of every numeric host leaf a patch, a what-if or a calibration candidate may set (the
dotted paths of :mod:`opendt.models.patch`); the topology model enforces the same ones."""


def shown(value: float) -> str:
    """A number for a message: short, whatever its size (a huge int is not converted to text)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if abs(value) < 10**30 else ("-" if value < 0 else "") + "1e30 or more"
    return f"{value:.6g}"


def out_of_bounds(leaf: str, value: float) -> str:
    """Why ``value`` is outside the bounds of the host leaf ``leaf`` ('' when it is inside or unbounded)."""
    lo, hi = BOUNDS.get(leaf, (float("-inf"), float("inf")))
    if not lo <= value <= hi:
        return f"{leaf} must be in [{lo:g}, {hi:g}], not {shown(value)}"
    return ""
