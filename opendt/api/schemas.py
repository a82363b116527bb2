"""The API's request and response models: the contract the handlers' plain dicts follow
(:mod:`opendt.api.openapi` renders them into the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

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
    measured: list[Point] = Field(
        description="Measured power at its instants, mean per step (summed over meters)"
    )
    simulated: list[Point] = Field(description="The twin's power at its export instants, mean per step")
    simulated_mean: list[Point] = Field(
        description="The twin's mean power per step: the energy of its export intervals whose midpoint falls "
        "in the step over the time they cover (what the report plots; a short final interval weighs by its "
        "length)"
    )
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
    engine: str = Field(description="What simulated the window's rows: builtin or opendc")


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


class Interval(BaseModel):
    """One axis of a round: the values the data cannot tell apart (scores within the noise threshold of the
    best's, over the candidates the round evaluated), in the axis's unit."""

    model_config = ConfigDict(extra="forbid")
    lo: float
    hi: float
    best: float | None = Field(default=None, description="The best-scoring candidate's value")
    chosen: float | None = Field(
        default=None, description="The value preferred in the set: nearest the physical topology's"
    )
    physical: float | None = Field(default=None, description="The physical topology's value")


class Calibration(BaseModel):
    """The calibrator's summary plus ``series`` (parameters after each round) and ``rounds_detail``."""

    model_config = ConfigDict(extra="allow")
    enabled: bool
    series: list[dict[str, Any]]
    rounds_detail: list[dict[str, Any]]
    axis_units: dict[str, str] = Field(description="Per axis: W, MHz, '× physical' (a scale axis) or ''")
    prior_weight: float | None = Field(
        default=None, description="calibration.prior_weight: the pull toward the physical topology's values"
    )
    intervals: dict[str, Interval] = Field(
        default_factory=dict,
        description="The latest round's identifiable intervals per numeric axis (each round's in series and "
        "rounds_detail)",
    )


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
    diff_vs_current: list[dict[str, Any]] | None = Field(
        description="What accepting the best proposal would change in the topology in effect"
    )
    counts: dict[str, int] = Field(description="Rounds per outcome")
    history: list[dict[str, Any]] = Field(description="The newest `limit` rounds, oldest first")


class AcceptRequest(Strict):
    round: int | None = Field(default=None, description="A kept round (default: the current best)")


class AcceptedProposal(Strict):
    version: int
    source: Literal["optimizer"]
    round: int
    applies: str
