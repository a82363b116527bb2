"""Simulator subprocesses: the pool, the experiment writer, the result reader and the two engines."""

from opendt.simulation.backends import (
    Backend,
    BackendConfigError,
    BuiltinBackend,
    OpenDCBackend,
    backend_from_settings,
    run_simulation,
)
from opendt.simulation.experiment import ExperimentError, ExperimentFiles, write_experiment
from opendt.simulation.pool import (
    PoolClosedError,
    PoolLoad,
    Priority,
    ProcessResult,
    RunRecord,
    SimulationError,
    SimulationPool,
)
from opendt.simulation.results import SimulationOutput, SimulationOutputError, read_output, read_output_async

__all__ = [
    "Backend",
    "BackendConfigError",
    "BuiltinBackend",
    "ExperimentError",
    "ExperimentFiles",
    "OpenDCBackend",
    "PoolClosedError",
    "PoolLoad",
    "Priority",
    "ProcessResult",
    "RunRecord",
    "SimulationError",
    "SimulationOutput",
    "SimulationOutputError",
    "SimulationPool",
    "backend_from_settings",
    "read_output",
    "read_output_async",
    "run_simulation",
    "write_experiment",
]
