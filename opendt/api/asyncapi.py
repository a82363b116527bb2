"""The stream contract: the AsyncAPI 3.0 document of every Kafka topic the twin reads and writes.

Generated from the message models of :mod:`opendt.models.messages` (their JSON Schemas, with units and
bounds), as :mod:`opendt.api.openapi` renders the HTTP API from its models. :data:`STREAMS` lists every
topic once; :func:`asyncapi_document` renders it (served at ``GET /asyncapi.json``),
:mod:`opendt.api.streams_doc` renders that into ``docs/streams.md``. The tests check that every message the
replay producer sends validates against the document, that messages generated from its schemas are accepted
by the decoder (and broken ones rejected with the field named), and that an AsyncAPI parser accepts it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from opendt.models.bounds import MAX_ID_LEN
from opendt.models.messages import (
    CarbonMessage,
    FragmentMessage,
    Heartbeat,
    PowerMessage,
    SimResultsMessage,
    SimTopologyMessage,
    TaskMessage,
    TopologyMessage,
)
from opendt.settings import TopicNames

NDJSON = "application/x-ndjson"
KAFKA_BINDING = "0.5.0"
_REF = "#/components/schemas/{model}"

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
        "The datacenter's measured power, compared with the simulation (MAPE) and used by calibration. "
        "Samples of one meter stay in order (keyed by it); a sample at an instant of its meter received "
        "before is a duplicate (dropped).",
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
        "A step series: each intensity is in force from its timestamp until the next message. Send a step at "
        "or before the first task, and steps in time order (a step not after the last one is a duplicate). "
        "A window closes only once this stream has passed its end (a step at exactly the end is known).",
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
        "export interval (simulation.export_interval_s). carbon_* are null while no intensity is known.",
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
time seen there (a record's time, or a heartbeat's). A window closes when the watermark reaches its end. So
every partition of those topics must move forward: within a partition, send in time order, and keep
partitions that have no records moving with heartbeats.

**Heartbeats**: `{"heartbeat": "<time>"}` with a null key, on any partition of tasks, fragments, power or
carbon (send one to every partition: a heartbeat at t promises that no later message of that partition has a
time before t). The replay producer sends them every `replay.heartbeat_s` of trace time. **Final**:
`{"heartbeat": "<time>", "final": true}` on every partition ends the stream: the twin closes the last windows
and, with `--exit-when-done`, exits. A record after a final takes it back.

**Batches**: a message with header `content-type: application/x-ndjson` carries many records of its topic,
one JSON object per line, each with its key's fields inline (`id` for tasks and fragments, `source` for
power); its key is not used. Per-record messages (no header, or `content-type: application/json`) stay valid
and a topic may mix both. A bad line fails that record only.

**Bad records**: a record that does not decode (wrong key, unknown field, wrong type, value out of bounds,
time without a zone) or whose time is far off its partition (`windowing.max_skew_s`) is counted, logged with
topic/partition/offset and forwarded as it was to the dead-letter topic with headers naming why; it never
stops the twin. Records of an already closed window join the next window to close, counted as late.

Topic names are the defaults; `kafka.topics.*` renames them. The twin creates missing topics
(`kafka.partitions` each) unless `kafka.create_topics` is false.
"""


def _value_schema(schema: dict[str, Any], key_field: str | None) -> dict[str, Any]:
    """A model's schema as the record value: without the field that travels in the key."""
    out = copy.deepcopy(schema)
    if key_field is not None:
        out["properties"].pop(key_field)
        out["required"] = [r for r in out.get("required", []) if r != key_field]
    return out


def _line_schema(schema: dict[str, Any], key_field: str, name: str) -> dict[str, Any]:
    """A batch line: the record with its key's field inline (required)."""
    out = copy.deepcopy(schema)
    out["title"] = name
    prop = out["properties"][key_field]
    prop.pop("default", None)
    prop["type"] = ["string", "integer"]
    out["required"] = [key_field, *[r for r in out.get("required", []) if r != key_field]]
    return out


def _name(kind: str) -> str:
    return "".join(p.capitalize() for p in kind.split("_"))


def _record_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "content-type": {
                "type": "string",
                "enum": ["application/json"],
                "description": "Optional: a per-record message",
            }
        },
    }


def asyncapi_document(topics: TopicNames | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of :data:`STREAMS` on ``topics`` (default: the default topic names)."""
    names = topics if topics is not None else TopicNames()
    models = [s.model for s in STREAMS] + [Heartbeat]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    schemas: dict[str, Any] = defs["$defs"]
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas["Heartbeat"]["description"] = (
        "A promise: no later message of this partition has a time before `heartbeat`; with final, the end of "
        "the partition's stream"
    )
    messages["heartbeat"] = {
        "name": "heartbeat",
        "title": "Heartbeat",
        "summary": "Moves this partition's event time on without a record (key null)",
        "contentType": "application/json",
        "payload": {"$ref": _REF.format(model="Heartbeat")},
        "bindings": {"kafka": {"key": {"type": "null"}, "bindingVersion": KAFKA_BINDING}},
        "examples": [
            {"name": "heartbeat", "payload": {"heartbeat": "2024-01-01T10:05:00.000Z"}},
            {"name": "final", "payload": {"heartbeat": "2024-01-01T11:00:00.000Z", "final": True}},
        ],
    }
    for s in STREAMS:
        name = _name(s.kind)
        model_name = s.model.__name__
        original = schemas[model_name]
        schemas[model_name] = _value_schema(schemas[model_name], s.key_field)
        schemas[model_name]["description"] = s.summary
        refs = [name]
        messages[name] = {
            "name": s.kind,
            "title": s.summary,
            "summary": s.summary,
            "description": s.description,
            "contentType": "application/json",
            "headers": _record_headers(),
            "payload": {"$ref": _REF.format(model=model_name)},
            "bindings": {"kafka": {"key": s.key, "bindingVersion": KAFKA_BINDING}},
            "examples": [
                {
                    "name": s.kind,
                    "summary": f"key {orjson.dumps(s.example_key).decode()}",
                    "payload": s.example,
                }
            ],
        }
        if s.batch:
            assert s.key_field is not None
            line = f"{model_name}Line"
            schemas[line] = _line_schema(original, s.key_field, line)
            schemas[line]["properties"][s.key_field] = s.key["properties"][s.key_field]
            schemas[line]["description"] = (
                f"One line of a {NDJSON} batch: a {s.kind} record with `{s.key_field}` inline"
            )
            refs.append(f"{name}Batch")
            messages[f"{name}Batch"] = {
                "name": f"{s.kind}_batch",
                "title": f"Many {s.kind} records in one message",
                "summary": f"NDJSON: one {s.kind} record per line, `{s.key_field}` inline (key not used)",
                "contentType": NDJSON,
                "headers": {
                    "type": "object",
                    "properties": {"content-type": {"type": "string", "const": NDJSON}},
                    "required": ["content-type"],
                },
                "payload": {"$ref": _REF.format(model=line)},
                "bindings": {"kafka": {"key": {"type": ["string", "null"]}, "bindingVersion": KAFKA_BINDING}},
                "examples": [
                    {
                        "name": f"{s.kind}_line",
                        "summary": "One line of the batch (the value is such lines, newline-separated)",
                        "headers": {"content-type": NDJSON},
                        "payload": {s.key_field: s.example_key[s.key_field], **s.example},
                    }
                ],
            }
        if s.heartbeats:
            refs.append("heartbeat")
        address = getattr(names, s.kind)
        channels[s.kind] = {
            "address": address,
            "title": address,
            "summary": s.summary,
            "description": s.description,
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in refs},
            "bindings": {"kafka": {"topic": address, "bindingVersion": KAFKA_BINDING}},
        }
        operations[f"{s.action}{name}"] = {
            "action": s.action,
            "channel": {"$ref": f"#/channels/{s.kind}"},
            "summary": ("The twin reads " if s.action == "receive" else "The twin writes ") + address,
            "messages": [{"$ref": f"#/channels/{s.kind}/messages/{m}"} for m in refs],
        }
    _dead_letter(names.dead_letter, channels, operations, messages)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "OpenDT streams",
            "version": "0.1.0",
            "description": CONTRACT,
        },
        "defaultContentType": "application/json",
        "servers": {
            "datacenter": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "kafka.bootstrap_servers; TLS and SASL per kafka.security_protocol and "
                "kafka.sasl_mechanism (see the README, Attach your datacenter)",
                "security": [
                    {"$ref": f"#/components/securitySchemes/{n}"}
                    for n in ("plain", "scramSha256", "scramSha512", "tls")
                ],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "plain": {"type": "plain", "description": "SASL PLAIN (kafka.sasl_mechanism: PLAIN)"},
                "scramSha256": {"type": "scramSha256", "description": "SASL SCRAM-SHA-256"},
                "scramSha512": {"type": "scramSha512", "description": "SASL SCRAM-SHA-512"},
                "tls": {"type": "X509", "description": "TLS client certificate (kafka.ssl_certfile/keyfile)"},
            },
        },
    }


def _dead_letter(
    address: str, channels: dict[str, Any], operations: dict[str, Any], messages: dict[str, Any]
) -> None:
    text = {"type": "string"}
    messages["deadLetter"] = {
        "name": "dead_letter",
        "title": "A record the twin could not use",
        "summary": "The original key and value, as they arrived; the headers say where from and why",
        "headers": {
            "type": "object",
            "properties": {
                "source_topic": text | {"description": "The topic it arrived on"},
                "source_partition": text | {"description": "Its partition (decimal)"},
                "source_offset": text | {"description": "Its offset (decimal)"},
                "reason": text | {"description": "Why, naming the field"},
            },
            "required": ["source_topic", "source_partition", "source_offset", "reason"],
        },
        "payload": {"description": "The original value, unchanged (any bytes)"},
        "examples": [
            {
                "name": "bad_task",
                "headers": {
                    "source_topic": "dc.tasks",
                    "source_partition": "0",
                    "source_offset": "42",
                    "reason": "invalid tasks message: cpu_count: Input should be greater than or equal to 1",
                },
                "payload": {"submission_time": "2024-01-01T10:00:00Z", "cpu_count": 0},
            }
        ],
    }
    channels["dead_letter"] = {
        "address": address,
        "title": address,
        "summary": "Records of the input topics the twin could not use",
        "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
        "bindings": {"kafka": {"topic": address, "bindingVersion": KAFKA_BINDING}},
    }
    operations["sendDeadLetter"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/dead_letter"},
        "summary": f"The twin writes {address}",
        "messages": [{"$ref": "#/channels/dead_letter/messages/deadLetter"}],
    }
