"""The stream contract: the AsyncAPI 3.0 document of every Kafka topic the twin reads and writes.

Generated from the message models of :mod:`opendt.models.messages` (their JSON Schemas, with units and
bounds), as :mod:`opendt.api.openapi` renders the HTTP API from its models. :data:`opendt.api.streams.STREAMS`
lists every topic once; :func:`asyncapi_document` renders it (served at ``GET /asyncapi.json``) and
:mod:`opendt.api.streams_doc` renders that into ``docs/streams.md``. The tests check that every message the
replay producer sends validates against the document, that messages generated from its schemas are accepted
by the decoder (and broken ones rejected with the field named), and that an AsyncAPI parser accepts it.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from pydantic.json_schema import models_json_schema

from opendt.api.streams import CONTRACT, STREAMS
from opendt.models.datacenter import ID_PATTERN
from opendt.models.messages import Heartbeat
from opendt.settings import TopicNames

NDJSON = "application/x-ndjson"
KAFKA_BINDING = "0.5.0"
_REF = "#/components/schemas/{model}"


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


DATACENTER_HEADER = {
    "type": "string",
    "pattern": ID_PATTERN,
    "description": "Optional: the datacenter (absent = default); a named datacenter's messages go to "
    "partition (murmur2(utf8(id)) & 0x7fffffff) % partitions of each topic (Kafka's default partitioner)",
}


def _record_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "content-type": {
                "type": "string",
                "enum": ["application/json"],
                "description": "Optional: a per-record message",
            },
            "datacenter": DATACENTER_HEADER,
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
        "headers": {"type": "object", "properties": {"datacenter": DATACENTER_HEADER}},
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
                    "properties": {
                        "content-type": {"type": "string", "const": NDJSON},
                        "datacenter": DATACENTER_HEADER,
                    },
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
