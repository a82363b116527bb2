"""``opendt serve [--run ID]``: the API, the Grafana datasource and the dashboard over a finished run,
read-only (no Kafka, no twin: topology writes answer 404 saying so).

``POST /api/whatif`` is answered from the run's stored window inputs and checkpoints, by the same
:class:`~opendt.twin.scenarios.ScenarioRunner` a live twin uses (its engine worker pool, ``api.whatif_*``
limits and queue), so it equals the same what-if asked of the live twin. Nothing is written into the run
(its inputs and checkpoints are listed read-only; results are only answered).

The run is ``--run ID`` (a unique prefix is enough) or the most recently updated one under
``<data_dir>/runs/``. What it serves comes from the run directory alone: ``agg_results.arrowlog`` and
``windows.arrowlog``, the measured power (``measured.arrowlog``, or the replayed workload's for older runs),
the saved topologies (``topologies/v<N>.json``), ``calibration.parquet`` and ``optimizer.jsonl``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog
from pydantic import ValidationError

from opendt.api.app import serve_api
from opendt.api.readmodel import TwinView
from opendt.calibration.settings import CalibrationSettings
from opendt.commands.errors import UsageError
from opendt.commands.run import check_port
from opendt.commands.runs import fallback_workload, find_run, measured_power, read_run_json
from opendt.models.topology import Topology, TopologyError, parse_topology
from opendt.settings import OptimizerSettings, Settings
from opendt.twin.loopstats import LoopStats
from opendt.twin.results import ResultStore
from opendt.twin.scenarios import ScenarioRunner
from opendt.twin.status import LatencyHistogram, SimulationStatus, TwinState, WorkloadInfo
from opendt.twin.topology import TopologyBox

log = structlog.get_logger(component="serve")


def _physical(run_dir: Path, meta: dict[str, Any] | None, workload: Path | None) -> Topology:
    """The run's physical topology: its saved version 0, else the replayed workload's topology.json, else
    the lowest saved version."""
    topo_dir = run_dir / "topologies"
    docs = sorted(
        topo_dir.glob("v*.json"), key=lambda p: int(p.stem[1:]) if p.stem[1:].isdigit() else 1 << 60
    )
    source = (meta or {}).get("source") or {}
    if isinstance(source, dict) and source.get("workload"):
        workload = Path(source["workload"])
    candidates: list[tuple[Path, bool]] = [(topo_dir / "v0.json", True)]
    if workload:
        candidates.append((Path(workload) / "topology.json", False))
    candidates += [(p, True) for p in docs]
    for path, wrapped in candidates:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return parse_topology(doc["topology"] if wrapped else doc, source=str(path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise UsageError(f"run {run_dir.name} has no readable topology (topologies/v<N>.json): nothing to serve")


def _section(meta: dict[str, Any] | None, name: str, default: Any) -> Any:
    """A settings section as the run recorded it in run.json (its own results), else ``default``."""
    doc = ((meta or {}).get("settings") or {}).get(name)
    if not isinstance(doc, dict):
        return default
    try:
        return type(default).model_validate(doc)
    except ValidationError:
        return default


def _calibration(view: TwinView, run_dir: Path, settings: CalibrationSettings, box: TopologyBox) -> None:
    path = run_dir / "calibration.parquet"
    if not path.exists():
        return
    import polars as pl

    from opendt.calibration.journal import from_frame
    from opendt.calibration.space import parse_space
    from opendt.calibration.trust import parse_region
    from opendt.calibration.view import calibration_view

    records = from_frame(pl.read_parquet(path.read_bytes()))
    try:
        axes = (
            list(parse_region(settings.trust_region, box.physical).axes)
            if settings.search == "trust_region"
            else parse_space(settings.grid, box.physical)
        )
    except ValueError:
        axes = []
    view.calibration_view = lambda: calibration_view(
        settings, records, axes, pending=0, gate_wait_s=0.0, initial=box.physical
    )
    view.calibration_series = lambda: [r.series_point() for r in records]
    view.calibration_rounds = lambda: [r.summary() for r in records]


def scenarios_of_run(
    run_dir: Path, settings: Settings, store: ResultStore, box: TopologyBox, meta: dict[str, Any] | None
) -> ScenarioRunner:
    """What-ifs over a finished run: its stored inputs and checkpoints (listed read-only), its export grid
    (``simulation.export_interval_s`` as the run recorded it), a pool of ``api.whatif_workers`` engine
    workers (started on the first run) with ``api.whatif_timeout_s`` and ``api.whatif_queue``."""
    from opendt.settings import SimulationSettings
    from opendt.twin.checkpoint import Checkpoints
    from opendt.twin.history import TwinHistory
    from opendt.twin.inputs import InputStore
    from opendt.worker.pool import CandidatePool

    inputs, checkpoints = InputStore(run_dir), Checkpoints(run_dir)
    inputs.load(readonly=True)
    checkpoints.load(readonly=True)
    history = TwinHistory(inputs, checkpoints)
    if store.windows.height:
        starts, ends = (
            store.windows["window_start"].dt.epoch("ms"),
            store.windows["window_end"].dt.epoch("ms"),
        )
        history.resume(int(starts.min()), int(ends.max()))  # type: ignore[arg-type]
    sim = _section(meta, "simulation", settings.simulation)
    assert isinstance(sim, SimulationSettings)
    api = settings.api
    return ScenarioRunner(
        history,
        CandidatePool(api.whatif_workers, timeout_s=api.whatif_timeout_s),
        export_interval_ms=sim.export_interval_s * 1000,
        box=box,
        max_queue=api.whatif_queue,
    )


def _optimizer(view: TwinView, run_dir: Path, settings: Settings, box: TopologyBox, window_s: int) -> None:
    from opendt.optimizer.component import Optimizer
    from opendt.optimizer.journal import OptimizerJournal
    from opendt.optimizer.rules import RulesStrategy
    from opendt.optimizer.slo import SloError, SloWatcher

    live = run_dir / "slo.json"
    try:
        view.slo = SloWatcher(live if live.exists() else settings.optimizer.slo_path)
    except SloError as e:
        log.warning("slo_unavailable", error=str(e))
    path = run_dir / "optimizer.jsonl"
    if not path.exists() or view.slo is None:
        return

    opt_settings = _section(read_run_json(run_dir), "optimizer", settings.optimizer)
    assert isinstance(opt_settings, OptimizerSettings)
    assert view.scenarios is not None
    opt = Optimizer(
        opt_settings,
        box,
        view.scenarios,
        view.slo,
        RulesStrategy(opt_settings),
        window_ms=window_s * 1000,
        journal=OptimizerJournal(path),
    )
    opt.resume()
    view.optimizer = opt


class StoredLoop:
    """The window loop of a finished run as its journal tells it: the counts, latencies and engine that
    ``/api/status``, the dashboard and ``/metrics`` show (read once: the run does not change)."""

    def __init__(self, store: ResultStore) -> None:
        w = store.windows
        self.done = asyncio.Event()
        self.done.set()
        self.latency = LatencyHistogram()
        self.stats = LoopStats()  # no per-cluster figures: /metrics serves the journal's sums
        lat = [float(x) for x in w["latency_s"].drop_nulls().sort().to_list()] if w.height else []
        for x in lat:
            self.latency.observe(x)
        ok = int((w["status"] == "ok").sum()) if w.height else 0
        end = w["window_end"].dt.epoch("ms").max() if w.height else None
        engines = w["engine"].drop_nulls() if w.height and "engine" in w.columns else None
        self._status = SimulationStatus(
            windows_simulated=ok,
            windows_failed=w.height - ok,
            windows_replayed=0,
            windows_durable=store.durable_count,
            last_window_end_ms=None if end is None else int(end),  # type: ignore[arg-type]
            latency_p50_s=round(lat[(len(lat) - 1) // 2], 4) if lat else None,
            latency_p95_s=round(lat[int(0.95 * (len(lat) - 1))], 4) if lat else None,
            worker_restarts=0,
            topologies_refused=0,
            done=True,
            engine="builtin" if engines is None or not len(engines) else str(engines[-1]),
        )

    def status(self) -> SimulationStatus:
        return self._status


def build_view(run_dir: Path, settings: Settings) -> tuple[TwinView, TwinState]:
    """The read model and status of a finished run, from its directory alone."""
    meta = read_run_json(run_dir)
    workload = fallback_workload(run_dir, meta, Path(settings.replay.workload))
    store = ResultStore(run_dir)
    try:
        store.load(writable=False)  # each file checked against the journal before its rows are decoded
    except (ValueError, OSError) as e:  # a damaged file names itself (opendt.twin.tables)
        raise UsageError(f"run {run_dir.name}: cannot read its results: {e}") from None
    except Exception as e:  # noqa: BLE001 - serve reports it in one line
        raise UsageError(f"run {run_dir.name}: cannot read its results: {type(e).__name__}: {e}") from None
    try:
        box = TopologyBox(_physical(run_dir, meta, workload))
        box.resume(store)
    except TopologyError as e:
        raise UsageError(f"run {run_dir.name}: {e}") from None
    view = TwinView(store=store, measured=measured_power(run_dir, meta, workload), box=box)
    cal = _section(meta, "calibration", settings.calibration)
    assert isinstance(cal, CalibrationSettings)
    _calibration(view, run_dir, cal, box)
    view.scenarios = scenarios_of_run(run_dir, settings, store, box, meta)
    window_s = int(((meta or {}).get("settings") or {}).get("windowing", {}).get("window_s", 300))
    _optimizer(view, run_dir, settings, box, window_s)
    state = TwinState(status="finished", run_id=run_dir.name, run_dir=str(run_dir))
    state.box = box
    state.loop = StoredLoop(store)
    source = (meta or {}).get("source") or {}
    if store.windows.height:
        ws = store.windows["window_start"].dt.epoch("ms")
        we = store.windows["window_end"].dt.epoch("ms")
        state.workload = WorkloadInfo(
            path=str(source.get("workload", workload or "")),
            name=str(source.get("workload_name", source.get("kind", workload.name if workload else ""))),
            tasks=int(store.windows["tasks"].sum()),
            fragments=int(store.windows["fragments"].sum()),
            hosts=box.physical.host_count,
            start_ms=int(ws.min()),  # type: ignore[arg-type]
            end_ms=int(we.max()),  # type: ignore[arg-type]
        )
    return view, state


async def serve_cli(
    settings: Settings, run: str | None, stop: asyncio.Event, out: TextIO | None = None
) -> int:
    out = out if out is not None else sys.stderr
    run_dir = find_run(Path(settings.data_dir), run)
    check_port(settings.api.host, settings.api.port)
    view, state = await asyncio.to_thread(build_view, run_dir, settings)
    try:
        async with serve_api(state, settings.api, view) as url:
            state.api_url = url
            state.ready.set()
            windows = 0 if view.store is None else view.store.windows.height
            out.write(
                f"opendt: serving run {run_dir.name} ({windows} windows) read-only: dashboard {url}/  "
                "(Ctrl-C stops it)\n"
            )
            out.flush()
            await stop.wait()
    finally:
        if view.scenarios is not None:
            await view.scenarios.close()
            await view.scenarios.pool.stop()
    return 0
