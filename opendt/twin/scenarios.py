"""Warm-started scenario runs over a past range: what-ifs (API) and optimizer proposals share this runner.

A run simulates ``[start, end)`` of the twin's past with other topologies: it starts from the twin's state
kept by :class:`~opendt.twin.history.TwinHistory` (the newest checkpoint at or before ``start``), pre-rolls to
``start`` with the twin's own topology, switches to each candidate topology there and advances to ``end`` on
the twin's export grid, so its rows line up with the twin's stored results instant by instant. Runs go
through a :class:`~opendt.worker.pool.CandidatePool` of low-priority engine workers (never the
twin's own worker): one run at a time, the others wait in a bounded queue; a full queue is
:class:`ScenarioBusy` (the API answers 429).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import structlog

from opendt.models.topology import Topology
from opendt.twin.history import HistoryGap, TwinHistory
from opendt.twin.topology import TopologyBox
from opendt.worker.pool import CandidatePool, RoundInput

log = structlog.get_logger(component="scenarios")

ROW_SCHEMA = pl.Schema(
    {
        "timestamp_ms": pl.Int64(),
        "power_draw": pl.Float64(),
        "energy_usage": pl.Float64(),
        "carbon_intensity": pl.Float64(),
        "carbon_emission": pl.Float64(),
    }
)


class ScenarioBusy(RuntimeError):
    """The scenario queue is full; try again later."""


class ScenarioStopped(ScenarioBusy):
    """The twin is shutting down: the run was cancelled (or never started)."""


@dataclass
class ScenarioResult:
    rows: pl.DataFrame | None
    """One row per export instant in (start, end]: ``ROW_SCHEMA``; None when the run failed."""
    error: str = ""
    compute_s: float = 0.0
    tasks: dict[str, Any] | None = None
    """Task statistics of the range (:func:`~opendt.worker.warm.task_stats`)."""


def scenario_header(
    start_ms: int, end_ms: int, export_interval_ms: int, initial: dict[str, Any]
) -> dict[str, Any]:
    """The ``cal.prepare`` header of a scenario run over ``[start_ms, end_ms)``: the twin's export grid kept,
    the candidate topology applied at ``start_ms`` (after a pre-roll from the snapshot with its own), whole
    rows with task statistics; ``initial`` (the physical topology) starts a run with no snapshot before it."""
    return {
        "until_ms": end_ms,
        "export_interval_ms": export_interval_ms,
        "regrid": False,
        "full": True,
        "apply_at_ms": start_ms,
        "init_topology": initial,
    }


def replicate_load(
    tasks: pl.DataFrame, fragments: pl.DataFrame, from_ms: int, copies: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``copies`` times the load from ``from_ms`` on: every task submitted at or after ``from_ms`` (and its
    fragments) gets ``copies − 1`` replicas (ids ``<id>#r<k>``), submitted with it; earlier tasks are kept
    once (what runs at ``from_ms`` is the twin's state)."""
    if copies == 1:
        return tasks, fragments
    if not 1 <= copies <= 16:
        raise ValueError(f"copies: must be 1..16, not {copies}")
    late = tasks.filter(pl.col("submission_ms") >= from_ms)
    late_f = fragments.join(late.select("id"), on="id", how="semi", maintain_order="left")

    def renamed(df: pl.DataFrame, k: int) -> pl.DataFrame:
        return df.with_columns(pl.col("id") + f"#r{k}")

    return (
        pl.concat([tasks, *(renamed(late, k) for k in range(1, copies))]),
        pl.concat([fragments, *(renamed(late_f, k) for k in range(1, copies))]),
    )


class ScenarioRunner:
    def __init__(
        self,
        history: TwinHistory,
        pool: CandidatePool,
        *,
        export_interval_ms: int,
        box: TopologyBox,
        max_queue: int,
    ) -> None:
        self.history = history
        self.pool = pool
        self.export_interval_ms = export_interval_ms
        self.box = box
        """Its ``initial`` topology starts a run with no snapshot before it."""
        self.max_queue = max_queue
        self._waiting = 0
        self._ids = 0
        self.runs = 0
        self.rejected_busy = 0
        self.cancelled = 0
        self._inflight: set[asyncio.Future[Any]] = set()
        self._closed = False

    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Cancel every queued or running scenario (shutdown must not wait for them in turn); new ones are
        refused with :class:`ScenarioStopped`."""
        self._closed = True
        pending = list(self._inflight)
        for f in pending:
            f.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.info("scenarios_cancelled", runs=len(pending))

    @property
    def queued(self) -> int:
        return self._waiting

    def view(self) -> dict[str, object]:
        return {
            "queued": self._waiting,
            "running": len(self._inflight),
            "max_queue": self.max_queue,
            "runs": self.runs,
            "rejected_busy": self.rejected_busy,
            "cancelled": self.cancelled,
            "workers": self.pool.size,
            "history": self.history.view(),
        }

    async def run(
        self, start_ms: int, end_ms: int, topologies: Sequence[Topology], *, what: str, load: int = 1
    ) -> list[ScenarioResult]:
        """Each topology over ``[start_ms, end_ms)`` from the twin's state at ``start_ms``; ``load`` > 1
        replicates the tasks submitted in the range that many times (:func:`replicate_load`).

        Raises :class:`~opendt.twin.history.HistoryGap` when the range is not covered and
        :class:`ScenarioBusy` when ``max_queue`` runs are already waiting or running.
        """
        if self.closed():
            raise ScenarioStopped("the twin is shutting down")
        if self._waiting >= self.max_queue:
            self.rejected_busy += 1
            raise ScenarioBusy(f"{self._waiting} scenario runs already queued (api.whatif_queue)")
        self._waiting += 1  # taken before anything is awaited: concurrent callers see it
        t0 = time.perf_counter()
        try:
            initial = self.box.initial
            if initial is None:
                raise HistoryGap("the twin has no physical topology yet")
            base = await asyncio.to_thread(self.history.base, start_ms, end_ms)
            header = scenario_header(start_ms, end_ms, self.export_interval_ms, initial.to_json_dict())
            tasks, fragments = replicate_load(base.tasks, base.fragments, start_ms, load)
            tables = {"tasks": tasks, "fragments": fragments}
            if base.blob is not None:
                tables["snapshot"] = pl.DataFrame({"blob": [base.blob]}, schema={"blob": pl.Binary})
            if base.carbon.height:
                tables["carbon"] = base.carbon
            self._ids += 1
            rin = RoundInput(-self._ids, header, tables)  # negative: never a calibration round id
            inner = asyncio.ensure_future(self.pool.run(rin, [t.to_json_dict() for t in topologies]))
            self._inflight.add(inner)
            try:
                outs = await inner
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self.closed() and inner.cancelled() and not (task is not None and task.cancelling()):
                    self.cancelled += 1
                    raise ScenarioStopped("the twin is shutting down: the run was cancelled") from None
                inner.cancel()
                raise
            finally:
                self._inflight.discard(inner)
        finally:
            self._waiting -= 1
        self.runs += 1
        log.info(
            "scenario_run",
            what=what,
            start_ms=start_ms,
            end_ms=end_ms,
            base_ms=base.at_ms,
            candidates=len(topologies),
            failed=sum(o.rows is None for o in outs),
            wall_s=round(time.perf_counter() - t0, 4),
        )
        return [
            ScenarioResult(
                None
                if o.rows is None
                else o.rows.rename({"timestamp_absolute": "timestamp_ms"}).cast(ROW_SCHEMA),
                o.error,
                o.worker_s,
                None if o.stats is None or o.stats.is_empty() else o.stats.row(0, named=True),
            )
            for o in outs
        ]
