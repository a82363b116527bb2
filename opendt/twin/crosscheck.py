"""Cross-check of the two engines on the twin's own inputs (``simulation.verify_every_s``, issue 16).

Every ``verify_every_s`` trace seconds (when a window's end crosses a multiple), the last ``verify_range_s``
of received inputs (the stored windows: tasks submitted in the range with their fragments so far, the carbon
steps received with them) are simulated one-shot from an empty datacenter, under the current simulated
topology, by both the builtin engine (``python -m opendt.engine``) and the OpenDC binary, as two runs of
the subprocess pool at its lowest priority. The divergence is the largest relative difference of energy
over one export interval (per cluster), with the interval it occurred in, and the tasks each completed.
It is logged (a warning naming the interval above ``THRESHOLD``), kept for ``/api/status`` and served as
the Grafana metric ``engine_divergence``. One check runs at a time; one that falls due while another runs
is skipped (counted). Nothing here changes the twin's results.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
import structlog

from opendt.models.messages import iso_ms
from opendt.models.topology import Topology
from opendt.opendc.backends import Backend, BuiltinBackend, run_simulation
from opendt.opendc.pool import Priority, SimulationPool
from opendt.opendc.prefix import completed_by_instant, strip_carbon_paths, write_carbon_trace
from opendt.opendc.results import SimulationOutput
from opendt.twin.inputs import InputStore

log = structlog.get_logger(component="crosscheck")

THRESHOLD = 1e-5
"""Largest relative energy error per export interval that is not a warning."""
KEPT = 256
"""Checks kept for the status and the Grafana series (a check an hour: ten days)."""


@dataclass(frozen=True)
class Check:
    at_ms: int
    """The trace time the check was due (the end of its range)."""
    from_ms: int
    until_ms: int
    max_rel_error: float | None
    """None when there was nothing to compare (no task in the range) or a run failed."""
    interval_start: str | None
    interval_end: str | None
    instants: int
    tasks_builtin: int | None
    tasks_opendc: int | None
    builtin_s: float | None
    opendc_s: float | None
    ok: bool
    error: str = ""


def divergence(a: pl.DataFrame, b: pl.DataFrame) -> tuple[float, int | None, int]:
    """Max relative energy difference per export interval between two powerSource outputs (joined on
    instant and cluster; an instant only one has counts as 1.0), the instant it occurs at, the instants."""
    key = ["timestamp_absolute", "cluster_name"]
    j = a.select(*key, "energy_usage").join(
        b.select(*key, pl.col("energy_usage").alias("other")), on=key, how="full", coalesce=True
    )
    if j.is_empty():
        return 0.0, None, 0
    scale = pl.max_horizontal(pl.col("energy_usage").abs(), pl.col("other").abs())
    err = (
        pl.when(pl.col("energy_usage").is_null() | pl.col("other").is_null())
        .then(1.0)
        .when(scale == 0)
        .then(0.0)
        .otherwise((pl.col("energy_usage") - pl.col("other")).abs() / scale)
    )
    j = j.with_columns(err=err).sort("err", "timestamp_absolute", descending=[True, False])
    worst = j.row(0, named=True)
    return float(worst["err"]), int(worst["timestamp_absolute"]), j["timestamp_absolute"].n_unique()


def tasks_completed(out: SimulationOutput) -> int | None:
    """The tasks a run completed (its service table's last cumulative count); None without the table."""
    done = completed_by_instant(out)
    return None if done is None else int(done["tasks_completed"].max() or 0)  # type: ignore[arg-type]


class CrossCheck:
    def __init__(
        self,
        pool: SimulationPool,
        opendc: Backend,
        inputs: InputStore,
        topology: Any,
        run_dir: Path,
        *,
        every_s: int,
        range_s: int,
        export_interval_s: int,
        builtin: Backend | None = None,
    ) -> None:
        self.pool = pool
        self.opendc = opendc
        self.builtin = builtin or BuiltinBackend(float64=True)
        self.inputs = inputs
        self.topology = topology
        """Callable returning the current simulated topology."""
        self.dir = run_dir / "opendc" / "verify"
        self.every_ms = every_s * 1000
        self.range_ms = range_s * 1000
        self.interval_ms = export_interval_s * 1000
        self.checks: deque[Check] = deque(maxlen=KEPT)
        self.started = 0
        self.skipped = 0
        self.warnings = 0
        self._due: int | None = None
        self._task: asyncio.Task[None] | None = None

    def after_window(self, end_ms: int) -> None:
        """Called by the window loop once a window is durable: start a check when one falls due."""
        due = end_ms // self.every_ms
        if self._due is None:
            self._due = due
            if end_ms % self.every_ms:
                return
        elif due <= self._due:
            return
        self._due = due
        if self._task is not None and not self._task.done():
            self.skipped += 1
            log.info("crosscheck_skipped", at_ms=end_ms, why="the previous check still runs")
            return
        self.started += 1
        self._task = asyncio.create_task(self._run(end_ms, self.topology()), name="crosscheck")

    async def wait(self) -> None:
        """Wait for the check in flight (tests, and a run that ends)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        last = self.checks[-1] if self.checks else None
        worst = max((c for c in self.checks if c.max_rel_error is not None), key=_err, default=None)
        return {
            "every_s": self.every_ms // 1000,
            "range_s": self.range_ms // 1000,
            "threshold": THRESHOLD,
            "started": self.started,
            "done": len(self.checks),
            "skipped": self.skipped,
            "warnings": self.warnings,
            "running": self._task is not None and not self._task.done(),
            "last": None if last is None else asdict(last),
            "worst": None if worst is None else asdict(worst),
        }

    def series(self) -> list[tuple[int, float]]:
        """(trace ms, max relative energy error) of the kept checks that compared something."""
        return [(c.at_ms, c.max_rel_error) for c in self.checks if c.max_rel_error is not None]

    async def _run(self, at_ms: int, topology: Topology) -> None:
        lo = at_ms - self.range_ms
        try:
            check = await self._check(lo, at_ms, topology)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a failed check is reported, never the twin's failure
            check = Check(at_ms, lo, at_ms, None, None, None, 0, None, None, None, None, False, str(e)[:500])
            log.warning("crosscheck_failed", at_ms=at_ms, error=str(e)[:500])
        self.checks.append(check)

    async def _check(self, lo: int, at_ms: int, topology: Topology) -> Check:
        frames = await asyncio.to_thread(self.inputs.frames, lo, at_ms)
        tasks, fragments, carbon = frames["tasks"], frames["fragments"], frames["carbon"]
        known = fragments.join(tasks.select("id"), on="id", how="semi")
        if known.is_empty():
            log.info("crosscheck_empty", at_ms=at_ms, why="no task with fragments in the range")
            return Check(at_ms, lo, at_ms, None, None, None, 0, None, None, None, None, True, "no task")
        topo = strip_carbon_paths(topology)
        carbon_path = None
        if carbon.height:
            self.dir.mkdir(parents=True, exist_ok=True)
            carbon_path = self.dir / "carbon.parquet"
            await asyncio.to_thread(write_carbon_trace, carbon, carbon_path)

        async def one(backend: Backend, name: str) -> tuple[SimulationOutput, float]:
            t0 = time.perf_counter()
            out = await run_simulation(
                self.pool,
                backend,
                topo,
                tasks,
                known,
                self.dir / name,
                self.interval_ms // 1000,
                carbon_path,
                name="verify",
                priority=Priority.LOW,
                label=f"crosscheck:{name}:{at_ms}",
                files_to_export=("powerSource", "service"),
            )
            return out, time.perf_counter() - t0

        (b, b_s), (o, o_s) = await asyncio.gather(one(self.builtin, "builtin"), one(self.opendc, "opendc"))
        err, worst_ms, instants = divergence(b.power, o.power)
        tb, to = tasks_completed(b), tasks_completed(o)
        ok = err <= THRESHOLD and tb == to
        check = Check(
            at_ms,
            lo,
            at_ms,
            err,
            None if worst_ms is None else iso_ms(worst_ms - self.interval_ms),
            None if worst_ms is None else iso_ms(worst_ms),
            instants,
            tb,
            to,
            round(b_s, 3),
            round(o_s, 3),
            ok,
        )
        fields = {
            "at": iso_ms(at_ms),
            "max_rel_error": err,
            "interval": f"({check.interval_start}, {check.interval_end}]",
            "tasks_builtin": tb,
            "tasks_opendc": to,
        }
        if ok:
            log.info("engine_divergence", **fields)
        else:
            self.warnings += 1
            log.warning("engine_divergence", threshold=THRESHOLD, **fields)
        return check


def _err(c: Check) -> float:
    return c.max_rel_error or 0.0
