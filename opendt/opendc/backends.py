"""The two interchangeable engines (DESIGN §7) and the one call that runs a simulation end to end.

Both are subprocesses with OpenDC's CLI, ``<engine> --experiment-path experiment.json``:

* :class:`BuiltinBackend`: our engine, ``python -m opendt.engine``;
* :class:`OpenDCBackend`: a real ``OpenDCExperimentRunner`` start script (``simulation.opendc_bin``), run
  with ``JAVA_HOME`` from ``simulation.java_home`` or the environment and the experiment dir as cwd.
  How to assemble a runnable one (Java 21, two substitute jars): the shared OpenDC reference README,
  section "How it was produced" → "Runtime". Nothing of it lives in this repository.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import polars as pl

from opendt.models.topology import Topology
from opendt.opendc.experiment import DEFAULT_FILES, ExperimentFiles, ScalingPolicy, write_experiment
from opendt.opendc.pool import Priority, SimulationPool
from opendt.opendc.results import SimulationOutput, read_output
from opendt.settings import SimulationSettings

_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


SECRET_ENV = frozenset({"OPENDT_API__TOKEN", "OPENAI_API_KEY"})
"""Environment variables that hold the daemon's secrets (the API token, the LLM key): a simulator never
needs them, and one that printed its environment would carry them into a log or a window's error."""


def simulator_env() -> dict[str, str]:
    """The daemon's environment for a simulator process, without :data:`SECRET_ENV`."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_ENV}


class BackendConfigError(ValueError):
    """The configured engine cannot be used (missing binary, bad JAVA_HOME)."""


class Backend(Protocol):
    @property
    def name(self) -> str: ...

    def command(self, experiment_path: Path) -> list[str]: ...

    def env(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class BuiltinBackend:
    """Our engine in a fresh interpreter (the same one that runs the daemon)."""

    python: str = sys.executable
    name: str = "builtin"
    float64: bool = False
    """Write powerSource values unrounded (``--float64``) instead of OpenDC's float32."""

    def command(self, experiment_path: Path) -> list[str]:
        exact = ["--float64"] if self.float64 else []
        return [self.python, "-m", "opendt.engine", "--experiment-path", str(experiment_path), *exact]

    def env(self) -> dict[str, str]:
        env = simulator_env()
        # The run's cwd is the experiment dir: make sure ``opendt`` imports even when not installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_PARENT), env.get("PYTHONPATH")) if p)
        return env


@dataclass(frozen=True)
class OpenDCBackend:
    """A real OpenDC ``OpenDCExperimentRunner`` start script (needs Java 21)."""

    bin: Path
    java_home: Path | None = None
    name: str = "opendc"
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bin.is_file():
            raise BackendConfigError(f"simulation.opendc_bin: {self.bin} is not a file")
        if not os.access(self.bin, os.X_OK):
            raise BackendConfigError(f"simulation.opendc_bin: {self.bin} is not executable")
        if self.java_home is not None and not (self.java_home / "bin" / "java").is_file():
            raise BackendConfigError(f"simulation.java_home: {self.java_home}/bin/java not found")

    def command(self, experiment_path: Path) -> list[str]:
        return [str(self.bin), "--experiment-path", str(experiment_path)]

    def env(self) -> dict[str, str]:
        env = simulator_env()
        if self.java_home is not None:
            env["JAVA_HOME"] = str(self.java_home)
        env.update(self.extra_env)
        return env


def backend_from_settings(settings: SimulationSettings) -> BuiltinBackend | OpenDCBackend:
    """The engine ``settings.engine`` names; ``opendc`` needs ``opendc_bin`` (JAVA_HOME may come from env)."""
    if settings.engine == "builtin":
        return BuiltinBackend()
    return opendc_backend(settings)


def opendc_backend(settings: SimulationSettings) -> OpenDCBackend:
    """The OpenDC binary of ``settings`` (``opendc_bin``, ``java_home`` or the environment's JAVA_HOME)."""
    if settings.opendc_bin is None:
        raise BackendConfigError("simulation.engine is 'opendc' but simulation.opendc_bin is not set")
    java_home = settings.java_home
    if java_home is None and os.environ.get("JAVA_HOME"):
        java_home = Path(os.environ["JAVA_HOME"])
    return OpenDCBackend(bin=settings.opendc_bin, java_home=java_home)


def _attach_task_ids(out: SimulationOutput, exp: ExperimentFiles) -> SimulationOutput:
    """Give task rows back our string ids (column ``id``) next to the simulator's INT32 ``task_id``."""
    if out.task is None or "task_id" not in out.task.columns:
        return out
    ids = exp.id_map.rename({"sim_id": "task_id"})
    task = out.task.with_columns(pl.col("task_id").cast(pl.Int32)).join(
        ids, on="task_id", how="left", maintain_order="left"
    )
    return replace(out, task=task)


async def run_simulation(
    pool: SimulationPool,
    backend: Backend,
    topology: Topology,
    tasks: pl.DataFrame,
    fragments: pl.DataFrame,
    workdir: Path,
    export_interval_s: int,
    carbon_path: Path | None = None,
    *,
    name: str = "opendt",
    priority: Priority = Priority.HIGH,
    timeout_s: float | None = None,
    label: str | None = None,
    topology_base_dir: Path | None = None,
    scaling_policy: ScalingPolicy = "NoDelay",
    files_to_export: Sequence[str] = DEFAULT_FILES,
) -> SimulationOutput:
    """Write the experiment into ``workdir``, run ``backend`` on it through ``pool``, read the output.

    Raises :class:`~opendt.opendc.experiment.ExperimentError` for unusable inputs,
    :class:`~opendt.opendc.pool.SimulationError` when the engine fails and
    :class:`~opendt.opendc.results.SimulationOutputError` when it exits 0 without usable output.
    """
    t0 = time.monotonic()
    exp = await asyncio.to_thread(
        write_experiment,
        workdir,
        topology,
        tasks,
        fragments,
        name=name,
        export_interval_s=export_interval_s,
        carbon_path=carbon_path,
        topology_base_dir=topology_base_dir,
        scaling_policy=scaling_policy,
        files_to_export=files_to_export,
    )
    result = await pool.run(
        backend.command(exp.experiment_path),
        cwd=exp.directory,
        env=backend.env(),
        priority=priority,
        timeout_s=timeout_s,
        label=label or f"{backend.name}:{name}",
    )
    out = await asyncio.to_thread(read_output, exp.run_dir)
    out = _attach_task_ids(out, exp)
    return replace(out, wall_s=time.monotonic() - t0, engine_s=result.record.run_s, backend=backend.name)
