"""``opendt simulate --workload DIR --topology FILE --out DIR``: one simulation, with a progress line."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TextIO

from opendt.models.topology import TopologyError
from opendt.opendc.backends import BackendConfigError, backend_from_settings, run_simulation
from opendt.opendc.experiment import ExperimentError
from opendt.opendc.pool import SimulationError, SimulationPool
from opendt.opendc.results import SimulationOutput, SimulationOutputError
from opendt.settings import SimulationSettings
from opendt.workload import WorkloadError, load_workload, resolve_carbon_path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


async def _progress(stream: TextIO, started: float, every_s: float) -> None:
    """Rewrite one status line (a terminal) or print a line every 10 periods (a log) until cancelled."""
    tty = stream.isatty()
    while True:
        await asyncio.sleep(every_s if tty else 10 * every_s)
        line = f"simulating… {time.monotonic() - started:.0f} s"
        stream.write(f"\r{line}" if tty else f"{line}\n")
        stream.flush()


def summary_line(out: SimulationOutput, wall_s: float) -> str:
    energy = out.total_energy_j
    return (
        f"simulated {out.power.height} rows ({out.backend or '?'} engine), "
        f"total energy {energy:.6e} J ({energy / 3.6e6:,.1f} kWh), wall {wall_s:.1f} s, "
        f"output {out.directory}"
    )


async def simulate_cli(
    workload_dir: Path,
    topology_path: Path | None,
    out_dir: Path,
    settings: SimulationSettings,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    progress_every_s: float = 1.0,
) -> int:
    """Simulate ``workload_dir`` (topology: ``topology_path`` or the workload's own) into ``out_dir``.

    Returns 0 on success, 1 when the engine fails, 2 for unusable inputs or configuration.
    """
    out_s = stdout if stdout is not None else sys.stdout
    err_s = stderr if stderr is not None else sys.stderr
    started = time.monotonic()
    try:
        backend = backend_from_settings(settings)
        workload = await asyncio.to_thread(load_workload, workload_dir, topology_path=topology_path)
        topology = workload.topology  # topology_path when given, else the workload's topology.json
        base = topology_path.parent if topology_path is not None else workload_dir
        carbon = resolve_carbon_path(topology, base)
    except (WorkloadError, TopologyError, BackendConfigError) as e:
        err_s.write(f"error: {e}\n")
        return EXIT_BAD_INPUT
    ticker = asyncio.create_task(_progress(err_s, started, progress_every_s))
    try:
        async with SimulationPool.from_settings(settings) as pool:
            out = await run_simulation(
                pool,
                backend,
                topology,
                workload.tasks,
                workload.fragments,
                out_dir,
                settings.export_interval_s,
                carbon,
                name="simulate",
            )
    except ExperimentError as e:
        err_s.write(f"\nerror: {e}\n")
        return EXIT_BAD_INPUT
    except (SimulationError, SimulationOutputError) as e:
        err_s.write(f"\nsimulation failed: {e}\n")
        return EXIT_FAILED
    finally:
        ticker.cancel()
        await asyncio.wait([ticker])  # re-raises only our own cancellation, never the ticker's
    if err_s.isatty():
        err_s.write("\n")
    out_s.write(summary_line(out, time.monotonic() - started) + "\n")
    out_s.flush()
    return EXIT_OK
