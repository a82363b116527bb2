"""The API's typed contract: pydantic request/response models and the OpenAPI 3.1 document built from them.

Handlers build plain dicts (fast: no model instances on the hot path); the models are the contract those dicts
follow, checked by the tests (every response of the running daemon validates against ``/openapi.json``, and a
schemathesis run against that document finds no 5xx). :data:`OPERATIONS` lists every operation once;
:func:`openapi_document` renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.json_schema import models_json_schema

Point = Annotated[list[float], Field(min_length=2, max_length=2, description="[epoch_ms, value]")]
"""``[epoch_ms, value]``: a 2-array of numbers (a tuple schema is mistranslated by some OpenAPI tools)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(Strict):
    error: str = Field(description="What is wrong, naming the field")
    field: str | None = Field(description="The offending field or parameter, when there is one")


class Health(Strict):
    status: Literal["ok", "failing"]
    twin: str = Field(description="The twin's state: starting, running, stopping, stopped, failed")
    problems: list[str] | None = Field(
        default=None,
        description="Why it is failing (503): the daemon failed, the broker has not answered a metadata "
        "probe for api.health_broker_s, or one window has kept the loop busy for api.health_loop_s",
    )


class Status(BaseModel):
    """The orchestrator's state; components add their own views (simulation, windows, topology, replay,
    calibration, scenarios, optimizer), so more keys than these may appear."""

    model_config = ConfigDict(extra="allow")
    status: str
    run_id: str
    uptime_s: float
    watermark_ms: int | None
    counters: dict[str, int]


class PowerMetrics(Strict):
    mape_pct: float | None = Field(description="Mean absolute percentage error of simulated vs measured")
    energy_error_pct: float | None = Field(description="(simulated / measured energy − 1) × 100")
    points: int = Field(description="Instants with both a simulated and a measured value")


class PowerSeries(Strict):
    start: str
    end: str
    step_s: int
    unit: Literal["W"]
    measured: list[Point]
    simulated: list[Point]
    metrics: PowerMetrics


class CarbonSeries(Strict):
    start: str
    end: str
    step_s: int
    carbon_intensity: list[Point] = Field(description="gCO2/kWh, mean per step")
    carbon_emission: list[Point] = Field(description="gCO2, summed per step")
    units: dict[str, str]


class ActivitySeries(Strict):
    start: str
    end: str
    step_s: int = Field(description="Default 3600")
    tasks_completed: list[Point] = Field(description="Tasks the simulation completed, summed per step")
    cpu_work: list[Point] = Field(description="CPU work the simulated hosts delivered, GHz·s summed per step")
    efficiency: list[Point] = Field(
        description="CPU work per kWh of simulated energy in the step (GHz·s/kWh)"
    )
    tasks_per_kwh: list[Point] = Field(description="Tasks completed per kWh of simulated energy in the step")
    units: dict[str, str]


class WindowRow(Strict):
    window_start: str
    window_end: str
    status: str
    rows: int
    tasks: int
    fragments: int
    power_samples: int
    topology_version: int
    latency_s: float
    compute_s: float
    attempts: int
    error: str


class Windows(Strict):
    windows: list[WindowRow]
    total: int


class SimulatedTopology(Strict):
    version: int
    source: str
    reason: str
    topology: dict[str, Any]


class Topologies(Strict):
    physical: dict[str, Any] = Field(description="The datacenter's topology (OpenDC topology JSON)")
    simulated: SimulatedTopology


class TopologyPut(BaseModel):
    """Either an OpenDC topology document, or ``{"topology": <document>, "reason": "…"}``."""

    model_config = ConfigDict(extra="allow")


class Accepted(Strict):
    version: int
    source: str
    applies: str


class WhatIfRequest(Strict):
    start: str | int = Field(description="ISO-8601 (zone or UTC) or epoch ms")
    end: str | int = Field(
        description="ISO-8601 (zone or UTC) or epoch ms; at most api.whatif_max_range_s after start"
    )
    patch: dict[str, float | int | str] | None = Field(
        default=None,
        description="Dotted parameters, e.g. {'cpu.coreSpeed': 2800, 'clusters[C01].hosts[H01].count': 10}",
    )
    topology: dict[str, Any] | None = Field(default=None, description="A whole OpenDC topology instead")
    step_s: int | None = Field(default=None, ge=0, description="Series step (default: about 500 points)")
    reason: str | None = None


class Change(Strict):
    path: str
    leaf: str
    before: float | int | str
    after: float | int | str


class Totals(Strict):
    energy_kwh: float | None
    carbon_kg: float | None
    peak_w: float | None
    mean_w: float | None


class WhatIfSeries(Strict):
    measured: list[Point]
    baseline: list[Point]
    whatif: list[Point]


class TaskStats(Strict):
    """The tasks of a scenario run's range (``opendt/worker/warm.py`` ``task_stats``)."""

    tasks_submitted: int
    tasks_started: int
    tasks_finished: int
    tasks_waiting: int = Field(description="Still queued at end (unfinished waits)")
    tasks_requeued: int = Field(description="Sent back to the queue by the topology change")
    wait_drained: bool = Field(description="Waits of tasks queued at end are exact (the queue drained)")
    wait_p95_s: float | None
    wait_mean_s: float | None
    runtime_mean_s: float | None


class WhatIfResponse(Strict):
    start: str
    end: str
    step_s: int
    base_topology_version: int
    changes: list[Change]
    topology: dict[str, Any]
    series: WhatIfSeries
    totals: dict[Literal["measured", "baseline", "whatif"], Totals] = Field(
        description="Energy and carbon: exact integrals over [start, end); mean power = energy / duration"
    )
    tasks: dict[Literal["baseline", "whatif"], TaskStats | None]
    delta: dict[str, float | None] = Field(
        description="energy_pct, carbon_pct, peak_pct: what-if vs baseline"
    )
    elapsed_s: float


class Calibration(BaseModel):
    """The calibrator's summary plus ``series`` (parameters after each round) and ``rounds_detail``."""

    model_config = ConfigDict(extra="allow")
    enabled: bool
    series: list[dict[str, Any]]
    rounds_detail: list[dict[str, Any]]
    axis_units: dict[str, str] = Field(description="Per axis: W, MHz, '× physical' (a scale axis) or ''")


class SloTargets(Strict):
    energy_kwh_per_window: float | None = Field(default=None, gt=0)
    peak_power_w: float | None = Field(default=None, gt=0)
    carbon_g_per_window: float | None = Field(default=None, gt=0)
    task_wait_p95_s: float | None = Field(default=None, gt=0)
    task_runtime_mean_s: float | None = Field(default=None, gt=0)


class SloState(Strict):
    slo: dict[str, float]
    path: str = Field(description="The file watched: optimizer.slo_path, or the run's live copy once PUT")
    changes: int
    rejections: int


class SloEcho(Strict):
    """What GET /api/slo answers, sent back (edited): only ``slo`` is read."""

    slo: SloTargets
    path: str | None = None
    changes: int | None = None
    rejections: int | None = None


class SloPut(RootModel[SloTargets | SloEcho]):
    """The SLO targets, or what GET /api/slo answers."""


class OptimizerState(BaseModel):
    """Rounds (baseline vs proposal, score breakdown, verdict), the current best and its diff vs the twin."""

    model_config = ConfigDict(extra="allow")
    enabled: bool
    status: str
    cycle_count: int
    slo_targets: dict[str, float]
    best: dict[str, Any] | None
    history: list[dict[str, Any]]


class AcceptRequest(Strict):
    round: int | None = Field(default=None, description="A kept round (default: the current best)")


class AcceptedProposal(Strict):
    version: int
    source: Literal["optimizer"]
    round: int
    applies: str


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
                    "content": {"application/json": {"schema": _ref(op.response)}} if op.response else {},
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
