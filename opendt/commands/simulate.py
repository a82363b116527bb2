"""``opendt simulate --workload DIR --topology FILE --out DIR``: one simulation, with a progress line."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TextIO

import polars as pl

from opendt.metrics import mape
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


async def _progress(stream: TextIO, started: float, every_s: float, what: str) -> None:
    """Rewrite one status line (a terminal) or print a line every 10 periods (a log) until cancelled. The
    engine runs as one process that reports nothing until it is done: the line shows the stage and the time
    so far, not a share of the trace."""
    tty = stream.isatty()
    while True:
        await asyncio.sleep(every_s if tty else 10 * every_s)
        line = f"simulating {what}… {time.monotonic() - started:.0f} s"
        stream.write(f"\r{line}" if tty else f"{line}\n")
        stream.flush()


def summary_line(out: SimulationOutput, wall_s: float) -> str:
    energy = out.total_energy_j
    return (
        f"simulated {out.power.height} rows ({out.backend or '?'} engine), "
        f"total energy {energy:.6e} J ({energy / 3.6e6:,.1f} kWh), wall {wall_s:.1f} s, "
        f"output {out.directory}"
    )


def summary_lines(out: SimulationOutput, wall_s: float, measured: pl.DataFrame | None) -> list[str]:
    """The closing summary: rows, MAPE against the workload's measured power (at the instants both have),
    energy, carbon, where the output is."""
    total = out.power_total()
    mape_text = "no measured power in the workload"
    if measured is not None and total.height:
        both = (
            total.select(pl.col("timestamp_absolute").alias("timestamp_ms"), "power_draw")
            .join(measured.select("timestamp_ms", pl.col("power_draw").alias("measured")), on="timestamp_ms")
            .filter(pl.col("measured") > 0)
        )
        if both.height:
            value = mape(both["power_draw"].to_numpy(), both["measured"].to_numpy())
            mape_text = f"{value:.2f} % over {both.height} instants"
    carbon = "-"
    if "carbon_emission" in total.columns and total["carbon_emission"].is_not_null().any():
        carbon = f"{float(total['carbon_emission'].sum()) / 1000:,.3f} kg CO2"
    return [
        summary_line(out, wall_s),
        f"  MAPE      {mape_text}",
        f"  energy    {out.total_energy_j / 3.6e6:,.3f} kWh",
        f"  carbon    {carbon}",
        f"  results   {out.directory}",
    ]


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
        carbon = resolve_carbon_path(topology, workload_dir, topology_path or workload_dir / "topology.json")
    except (WorkloadError, TopologyError, BackendConfigError) as e:
        err_s.write(f"error: {e}\n")
        return EXIT_BAD_INPUT
    what = f"{workload.tasks.height:,} tasks on {topology.host_count} hosts ({settings.engine} engine)"
    ticker = asyncio.create_task(_progress(err_s, started, progress_every_s, what))
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
    out_s.write(
        "".join(f"{line}\n" for line in summary_lines(out, time.monotonic() - started, workload.consumption))
    )
    out_s.flush()
    return EXIT_OK
