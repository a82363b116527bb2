"""One-shot runs under the OpenDC contract (DESIGN §7): the subprocess pool, the builtin and OpenDC backends,
the experiment writer and the output reader."""

from opendt.opendc.backends import (
    Backend,
    BackendConfigError,
    BuiltinBackend,
    OpenDCBackend,
    backend_from_settings,
    opendc_backend,
    run_simulation,
)
from opendt.opendc.experiment import ExperimentError, ExperimentFiles, write_experiment
from opendt.opendc.pool import (
    PoolClosedError,
    PoolLoad,
    Priority,
    ProcessResult,
    RunRecord,
    SimulationError,
    SimulationPool,
)
from opendt.opendc.results import SimulationOutput, SimulationOutputError, read_output, read_output_async

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
    "opendc_backend",
    "read_output",
    "read_output_async",
    "run_simulation",
    "write_experiment",
]
