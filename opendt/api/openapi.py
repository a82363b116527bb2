"""The API's typed contract: pydantic request/response models and the OpenAPI 3.1 document built from them.

Handlers build plain dicts (fast: no model instances on the hot path); the models are the contract those dicts
follow, checked by the tests (every response of the running daemon validates against ``/openapi.json``, and a
schemathesis run against that document finds no 5xx). :data:`OPERATIONS` lists every operation once;
:func:`openapi_document` renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from opendt.api.schemas import (
    Accepted,
    AcceptedProposal,
    AcceptRequest,
    ActivitySeries,
    Calibration,
    CarbonSeries,
    Error,
    Health,
    OptimizerState,
    PowerSeries,
    SloPut,
    SloState,
    Status,
    Topologies,
    TopologyPut,
    WhatIfRequest,
    WhatIfResponse,
    Windows,
)


@dataclass
class Param:
    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


TIME = {"type": "string", "description": "ISO-8601 (with zone, or naive = UTC) or epoch milliseconds"}
RANGE_PARAMS = [
    Param("start", TIME, "Range start (default: the first data)"),
    Param("end", TIME, "Range end, exclusive (default: after the last data)"),
    Param(
        "step_s",
        {"type": "integer", "minimum": 1, "maximum": 31_622_400, "default": 60},
        "Downsampling step in seconds: at most end - start when both are given; "
        "otherwise at most a year, clamped to the data so far",
    ),
]


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    response: type[BaseModel] | None
    status: int = 200
    params: list[Param] = field(default_factory=list)
    body: type[BaseModel] | None = None
    writes: bool = False
    body_required: bool = True
    errors: tuple[int, ...] = (400,)
    tag: str = "twin"
    text: str | None = None
    """A non-JSON answer: its media type (the body is a string)."""


OPERATIONS: list[Operation] = [
    Operation(
        "get", "/health", "Liveness: 200 while the twin twins; 503 failed or stalled", Health, errors=(503,)
    ),
    Operation("get", "/api/status", "Orchestrator state: windows, watermark, replay, topology, pool", Status),
    Operation(
        "get",
        "/api/power",
        "Measured vs simulated power with MAPE and energy error",
        PowerSeries,
        params=RANGE_PARAMS,
    ),
    Operation(
        "get",
        "/api/carbon",
        "Carbon intensity and emission of the simulation",
        CarbonSeries,
        params=RANGE_PARAMS,
    ),
    Operation(
        "get",
        "/api/activity",
        "Work of the simulation: tasks completed, CPU work, and both per kWh",
        ActivitySeries,
        params=RANGE_PARAMS,
    ),
    Operation(
        "get",
        "/api/windows",
        "The window journal (newest last)",
        Windows,
        params=[
            Param(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
                "How many of the newest windows",
            )
        ],
    ),
    Operation("get", "/api/topology", "Physical and simulated topology", Topologies, errors=(404,)),
    Operation(
        "put",
        "/api/topology",
        "Simulate with this topology from the next window (publishes on sim.topology, source api)",
        Accepted,
        status=202,
        body=TopologyPut,
        writes=True,
        errors=(400, 404, 413, 422),
    ),
    Operation(
        "post",
        "/api/topology/reset",
        "Back to the physical topology from the next window",
        Accepted,
        status=202,
        writes=True,
        errors=(404,),
    ),
    Operation(
        "post",
        "/api/whatif",
        "Re-simulate a past range with another topology, from the twin's state at its start",
        WhatIfResponse,
        body=WhatIfRequest,
        writes=True,
        errors=(400, 404, 413, 422, 429, 500),
    ),
    Operation("get", "/api/slo", "The SLOs in force (file, watched)", SloState, errors=(404,)),
    Operation(
        "put",
        "/api/slo",
        "Replace the SLOs (validated; written atomically to the run's live copy <run_dir>/slo.json)",
        SloState,
        body=SloPut,
        writes=True,
        errors=(400, 404, 409, 413, 422),
    ),
    Operation(
        "get",
        "/api/optimizer",
        "Optimizer rounds, current best proposal and its diff vs the twin",
        OptimizerState,
        params=[
            Param(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                "Rounds of history",
            )
        ],
        errors=(400, 404),
    ),
    Operation(
        "post",
        "/api/optimizer/accept",
        "Apply the kept proposal as a change of the topology in effect (publishes on sim.topology, source "
        "optimizer); 409 when nothing is kept, it was accepted, or a value it changes changed since",
        AcceptedProposal,
        status=202,
        body=AcceptRequest,
        body_required=False,
        writes=True,
        errors=(400, 404, 409, 413, 422),
    ),
    Operation(
        "get",
        "/api/calibration",
        "Calibration rounds and the parameters in effect",
        Calibration,
        errors=(404,),
    ),
    Operation(
        "get",
        "/metrics",
        "The twin's metrics in the Prometheus text exposition format (README § Prometheus)",
        None,
        text="text/plain",
        tag="monitoring",
    ),
]


def _guard_errors(op: Operation, token: bool) -> tuple[int, ...]:
    """What the guard of writes answers (:func:`opendt.api.http.require_token`), and 408 for a body that
    does not arrive in time."""
    late = (408,) if op.body is not None else ()
    if not op.writes:
        return late
    return (401, *late) if token else (400, 403, 415, *late)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def openapi_document(operations: list[Operation] | None = None, *, token: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations`` (default :data:`OPERATIONS`)."""
    ops = OPERATIONS if operations is None else operations
    models: set[type[BaseModel]] = {Error}
    for op in ops:
        models.update(m for m in (op.response, op.body) if m is not None)
    _, defs = models_json_schema(
        [(m, "serialization") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        doc: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_').replace('-', '_') or 'root'}",
            "tags": [op.tag],
            "responses": {
                str(op.status): {
                    "description": "OK" if op.status == 200 else "Accepted",
                    "content": {"application/json": {"schema": _ref(op.response)}}
                    if op.response
                    else {op.text: {"schema": {"type": "string"}}}
                    if op.text
                    else {},
                },
                **{
                    str(code): {
                        "description": "Not live (problems)" if live else "Error naming the field",
                        "content": {"application/json": {"schema": _ref(Health if live else Error)}},
                    }
                    # on every operation: 400 an unknown query parameter; 503 no physical topology received
                    # yet (a twin fed by Kafka alone, before dc.topology)
                    for code in sorted({400, 503, *op.errors, *_guard_errors(op, token)})
                    for live in [op.response is Health and code == 503]  # /health's 503: its own body
                },
            },
        }
        if op.params:
            doc["parameters"] = [
                {
                    "name": p.name,
                    "in": "query",
                    "required": p.required,
                    "description": p.description,
                    "schema": p.schema,
                }
                for p in op.params
            ]
        if op.body is not None:
            doc["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(op.body)}},
            }
        if op.writes and token:
            doc["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method] = doc
    out: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "OpenDT API",
            "version": "0.1.0",
            "description": "The datacenter twin's JSON API: power and carbon series, topology, what-if, "
            "calibration, optimizer; a Grafana JSON datasource under /grafana.",
        },
        "paths": paths,
        "components": {"schemas": defs["$defs"]},
    }
    if token:
        out["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return out
