"""The topics of the stream contract as data: what each carries, its key, an example; the contract's prose.

:mod:`opendt.api.asyncapi` renders :data:`STREAMS` and :data:`CONTRACT` with the message models' JSON Schemas
into the AsyncAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from opendt.models.bounds import MAX_ID_LEN
from opendt.models.messages import (
    CarbonMessage,
    FragmentMessage,
    PowerMessage,
    SimResultsMessage,
    SimTopologyMessage,
    TaskMessage,
    TopologyMessage,
)

_TOPOLOGY_EXAMPLE: dict[str, Any] = {
    "clusters": [
        {
            "name": "C01",
            "hosts": [
                {
                    "name": "H01",
                    "count": 4,
                    "cpu": {"coreCount": 32, "coreSpeed": 2100},
                    "memory": {"memorySize": 256000},
                    "cpuPowerModel": {
                        "modelType": "mse",
                        "idlePower": 32,
                        "maxPower": 180,
                        "calibrationFactor": 4,
                    },
                }
            ],
        }
    ]
}


@dataclass(frozen=True)
class Stream:
    """One topic: what its records are, how they are keyed, what else may travel on it."""

    kind: Literal["tasks", "fragments", "power", "carbon", "topology", "sim_topology", "sim_results"]
    action: Literal["receive", "send"]
    """From the twin's side: it receives the datacenter's streams and sends its own."""
    model: type[BaseModel]
    summary: str
    description: str
    key: dict[str, Any]
    """The JSON Schema of the record key."""
    example_key: Any
    example: dict[str, Any]
    key_field: str | None = None
    """The model field that comes from the key (inline in a batch line)."""
    heartbeats: bool = False
    batch: bool = False


def _id_key(field: str, what: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            field: {
                "type": ["string", "integer"],
                "maxLength": MAX_ID_LEN,
                "minimum": -(2**63),
                "maximum": 2**63 - 1,
                "description": what,
            }
        },
        "required": [field],
        "description": f'JSON object {{"{field}": ...}}: {what} (an integer is taken as its decimal string); '
        "records of one key stay in order on one partition",
    }


_DATACENTER_KEY = {
    "type": ["string", "null"],
    "description": 'Not read; send the JSON string "datacenter" so that the stream stays on one partition, '
    "in order",
}
_TWIN_KEY = {"type": "string", "const": "datacenter", "description": 'The JSON string "datacenter"'}
_RESULTS_KEY = {
    "type": "string",
    "format": "date-time",
    "description": "The window's start, ISO-8601 UTC (plain text, not JSON-quoted)",
}

STREAMS: list[Stream] = [
    Stream(
        "tasks",
        "receive",
        TaskMessage,
        "A task arrived at the datacenter",
        "Sent at the task's submission time. The id must be unique: the same id again with the same "
        "content is a duplicate (dropped), with different content a conflict (dead-lettered).",
        _id_key("id", "the task's id"),
        {"id": "t-1001"},
        {
            "submission_time": "2024-01-01T10:00:00.000Z",
            "duration": 1_800_000,
            "cpu_count": 8,
            "cpu_capacity": 16_800.0,
            "mem_capacity": 32_768,
        },
        key_field="id",
        heartbeats=True,
        batch=True,
    ),
    Stream(
        "fragments",
        "receive",
        FragmentMessage,
        "A task's CPU usage over a stretch of its run",
        "Fragment k of a task is sent at its start: the task's submission plus the durations of fragments "
        "0..k-1 (the twin learns usage as it happens, never in advance). Keyed by the task's id, so a task's "
        "fragments stay in order; a fragment index received again is a duplicate (dropped).",
        _id_key("id", "the id of the fragment's task"),
        {"id": "t-1001"},
        {
            "submission_time": "2024-01-01T10:05:00.000Z",
            "duration": 300_000,
            "cpu_count": 8,
            "cpu_usage": 12_400.5,
            "index": 1,
        },
        key_field="id",
        heartbeats=True,
        batch=True,
    ),
    Stream(
        "power",
        "receive",
        PowerMessage,
        "A measured power sample of a meter",
        "Optional. The datacenter's measured power, compared with the simulation (MAPE) and used by "
        "calibration; without it the twin still predicts, with no MAPE (null) and no calibration (its "
        "rounds are skipped). Samples of one meter stay in order (keyed by it); a sample at an instant of "
        "its meter received before is a duplicate (dropped).",
        _id_key("source", "the meter"),
        {"source": "datacenter"},
        {"timestamp": "2024-01-01T10:00:30.000Z", "power_draw": 5230.5, "energy_usage": 156_915.0},
        key_field="source",
        heartbeats=True,
        batch=True,
    ),
    Stream(
        "carbon",
        "receive",
        CarbonMessage,
        "The grid's carbon intensity from a time on",
        "Optional. A step series: each intensity is in force from its timestamp until the next message "
        "(the last received holds until the next step). Without it, and before its first step (never "
        "extended backwards), emissions are unknown: null in sim.results and the API, never 0; time "
        "simulated before a step arrived stays unknown. Send a step at or before the first task, and steps "
        "in time order (a step not after the last one is a duplicate). While it is sent, a window closes "
        "only once this stream has passed its end (a step at exactly the end is known); a carbon partition "
        "never heard from goes idle after windowing.idle_after_s and windows close without it.",
        _DATACENTER_KEY,
        "datacenter",
        {"timestamp": "2024-01-01T10:00:00.000Z", "carbon_intensity": 212.4},
        heartbeats=True,
    ),
    Stream(
        "topology",
        "receive",
        TopologyMessage,
        "The datacenter's physical topology (OpenDC topology JSON)",
        "Required: no window closes before the first one. The latest message whose timestamp is at or before "
        "a window's start applies from that window; a new one becomes the twin's base (the calibrated values "
        "re-applied, API and optimizer changes for the old hardware dropped). No heartbeats needed: it is "
        "not a watermark source. Make the topic compacted to keep only the latest.",
        _DATACENTER_KEY,
        "datacenter",
        {"timestamp": "2024-01-01T00:00:00.000Z", "topology": _TOPOLOGY_EXAMPLE},
    ),
    Stream(
        "sim_topology",
        "send",
        SimTopologyMessage,
        "The topology the twin simulates, each new version",
        "Written by the twin: version 0 is the physical topology (source initial), later versions come from "
        "a new physical topology, the calibrator, PUT /api/topology or an accepted optimizer proposal. The "
        "twin reads it back (its listener) to follow changes.",
        _TWIN_KEY,
        "datacenter",
        {
            "version": 1,
            "source": "calibrator",
            "timestamp": "2024-01-01T01:00:00.000Z",
            "reason": "calibration round 1",
            "topology": _TOPOLOGY_EXAMPLE,
        },
    ),
    Stream(
        "sim_results",
        "send",
        SimResultsMessage,
        "The simulated power and carbon of one closed window",
        "Written by the twin after a window's results are durable, one message per window with one point per "
        "export interval (simulation.export_interval_s). carbon_intensity is null at an instant no carbon "
        "step was in force for (none received yet, or before the first), carbon_emission for an interval "
        "that holds such time: unknown, never 0.",
        _RESULTS_KEY,
        "2024-01-01T10:00:00.000Z",
        {
            "window_start": "2024-01-01T10:00:00.000Z",
            "window_end": "2024-01-01T10:05:00.000Z",
            "topology_version": 1,
            "engine": "builtin",
            "points": [
                {
                    "timestamp": "2024-01-01T10:02:30.000Z",
                    "power_draw": 5120.2,
                    "energy_usage": 768_030.0,
                    "carbon_intensity": 212.4,
                    "carbon_emission": 45.3,
                }
            ],
        },
    ),
]

CONTRACT = """\
What a datacenter sends to attach to the twin, and what the twin writes. Kafka, JSON in UTF-8.

**Times** are ISO-8601 strings with a zone (`2024-01-01T10:00:00.000Z`, or an offset), in
[1970-01-01, 2200-01-01) UTC; never numbers. **Units**: durations in ms, CPU in MHz, memory in MiB, power in
W, energy in J, carbon intensity in gCO2/kWh, emission in gCO2.

**Keys**: tasks and fragments are keyed `{"id": "<task id>"}`, power `{"source": "<meter>"}`, carbon and
topology `"datacenter"` (all JSON). Kafka's default partitioner (murmur2 of the key) keeps each key's records
in order on one partition.

**Event time and the watermark**: the twin cuts the streams into windows of `windowing.window_s` (default
300 s) of event time, aligned to the epoch. Its watermark is the minimum, over every partition of the
watermark topics (`windowing.watermark_topics`: tasks, fragments, power, carbon by default), of the latest
time seen there (a record's time, or a heartbeat's). A window closes when the watermark reaches its end.
Within a partition, send in time order. **Idle partitions**: a partition silent for `windowing.idle_after_s`
(120 s) of wall time, with nothing left to read, stops holding the watermark, so heartbeats are optional and
so are the carbon and power feeds; when every partition is idle, event time goes on with the wall clock from
the newest record, less `windowing.allowed_lateness_s` (60 s): the last windows close at most `window_s +
idle_after_s + allowed_lateness_s` after the feed goes quiet.

**Heartbeats** (optional; they make closing exact): `{"heartbeat": "<time>"}` with a null key, on any
partition of tasks, fragments, power or carbon (send one to every partition: a heartbeat at t promises that
no later message of that partition has a time before t). The replay producer sends them every
`replay.heartbeat_s` of trace time. **Final**:
`{"heartbeat": "<time>", "final": true}` on every partition ends the stream: the twin closes the last windows
and, with `--exit-when-done`, exits. A record after a final takes it back.

**Batches**: a message with header `content-type: application/x-ndjson` carries many records of its topic,
one JSON object per line, each with its key's fields inline (`id` for tasks and fragments, `source` for
power); its key is not used. Per-record messages (no header, or `content-type: application/json`) stay valid
and a topic may mix both. A bad line fails that record only.

**Datacenters**: several datacenters may share the topics. A message names its datacenter in header
`datacenter` (1-64 letters, digits, `.`, `_`, `-`; absent = `default`, a stream of one datacenter). Every
message of a named datacenter (heartbeats and finals included) goes to one partition of each topic: the
partition Kafka's default partitioner picks for the id as a key, `(murmur2(utf8(id)) & 0x7fffffff) %
partitions` (Java: `Utils.toPositive(Utils.murmur2(id.getBytes(UTF_8))) % numPartitions`; `opendt replay
--datacenter ID` does this). A twin of a named datacenter (`kafka.datacenter`, `opendt run --datacenter ID`)
reads only that partition and skips the records of other datacenters there (counted, `windows.
other_datacenters`); a twin of `default` reads every partition and skips named records. The twin's own
`sim.topology` and `sim.results` messages carry its header on its partition, and it ignores other
datacenters' `sim.topology`.

**Bad records**: a record that does not decode (wrong key, unknown field, wrong type, value out of bounds,
time without a zone) or whose time is far off its partition (`windowing.max_skew_s`) is counted, logged with
topic/partition/offset and forwarded as it was to the dead-letter topic with headers naming why; it never
stops the twin. A jump of a partition far ahead (more than `windowing.max_skew_s`) is believed once
`windowing.jump_confirm` (3) more of its messages in a row follow near it. A record of an already closed
window is late: counted, dead-lettered with the reason, reported in `/api/status` (`windows.last_late`).

Topic names are the defaults; `kafka.topics.*` renames them. The twin creates missing topics
(`kafka.partitions` each) unless `kafka.create_topics` is false.
"""
