"""``opendt calibrate --workload DIR``: the online calibrator over a workload directory, without Kafka.

Windows are cut directly from the workload's frames (the same ``[start, end)`` windows the consumer would
close, every one from the first event to the last, the last one final) and go through the same
:class:`~opendt.twin.loop.WindowLoop` (twin worker, result store) with the same
:class:`~opendt.calibration.component.Calibrator` hooks as the daemon. The twin's prediction at ``t``
therefore only uses topologies chosen from data before ``t``. At the end: the whole-trace MAPE of the twin's
prediction (its ``power_draw`` at the export instants) against the measured power at the same instants, side
by side with the uncalibrated twin's (the physical topology throughout, simulated by the same causal engine at
the same instants), overall and per UTC day, with the parameter changes per day and each parameter's path.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import starmap
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from opendt.calibration.component import calibrator_for
from opendt.calibration.journal import RoundRecord
from opendt.calibration.view import by_day, parameter_paths
from opendt.metrics import mape
from opendt.models.messages import CarbonRow, FragmentRow, PowerRow, TaskRow, iso_ms
from opendt.settings import Settings
from opendt.stream.resume import ClosedWindow
from opendt.stream.windowing import Window, carry_carbon
from opendt.twin.loop import WindowLoop
from opendt.twin.recovery import Recovery, durability_of
from opendt.twin.results import ResultStore
from opendt.twin.topology import TopologyBox
from opendt.worker.client import TwinEngine
from opendt.workload import CARBON_SCHEMA, FRAGMENT_SCHEMA, TASK_SCHEMA, Workload, load_workload


@dataclass
class OfflineResult:
    run_dir: Path
    rounds: list[RoundRecord]
    windows: int
    mape_pct: float
    """Whole-trace MAPE of the twin's power_draw vs measured, at the matched export instants."""
    matched: int
    mape_uncalibrated_pct: float
    """The same for the physical topology throughout (the twin without calibration)."""
    days: list[dict[str, Any]]
    """Per UTC day: calibrated vs uncalibrated MAPE, instants, rounds and parameter changes."""
    paths: dict[str, list[dict[str, Any]]]
    wall_s: float
    latencies_s: list[float]
    latencies_during_rounds_s: list[float]
    gate_wait_s: float

    def as_dict(self) -> dict[str, Any]:
        cands = [r.candidates for r in self.rounds if r.status != "skipped"]
        return {
            "run_dir": str(self.run_dir),
            "windows": self.windows,
            "rounds": len(self.rounds),
            "applied": sum(r.status == "applied" for r in self.rounds),
            "candidates_per_round": round(statistics.mean(cands), 1) if cands else 0,
            "mape_pct": round(self.mape_pct, 4),
            "mape_uncalibrated_pct": round(self.mape_uncalibrated_pct, 4),
            "matched_instants": self.matched,
            "days": self.days,
            "changes_per_day": [d["changes"] for d in self.days],
            "worse_days": [d["day"] for d in self.days if d["calibrated"] > d["uncalibrated"]],
            "wall_s": round(self.wall_s, 2),
            "window_latency_p95_s": _p95(self.latencies_s),
            "window_latency_p95_during_rounds_s": _p95(self.latencies_during_rounds_s),
            "gate_wait_s": round(self.gate_wait_s, 3),
        }


def _p95(xs: list[float]) -> float | None:
    return round(float(np.percentile(xs, 95)), 4) if xs else None


def cut_windows(workload: Workload, window_ms: int) -> list[Window]:
    """The windows the streaming consumer would close for this workload (DESIGN §5), all at once."""
    w = pl.col("_w")
    tasks = workload.tasks.with_columns((pl.col("submission_ms") // window_ms * window_ms).alias("_w"))
    frags = workload.fragments.with_columns((pl.col("submission_ms") // window_ms * window_ms).alias("_w"))
    cons = workload.consumption
    power = (
        cons.with_columns((pl.col("timestamp_ms") // window_ms * window_ms).alias("_w"))
        if cons is not None
        else pl.DataFrame(schema={"timestamp_ms": pl.Int64, "power_draw": pl.Float64, "_w": pl.Int64})
    )
    starts = [df["_w"] for df in (tasks, frags, power) if df.height]
    first = min(int(s.min()) for s in starts)  # type: ignore[arg-type]
    last = max(int(s.max()) for s in starts)  # type: ignore[arg-type]
    by_t = {k[0]: v for k, v in tasks.sort(w, maintain_order=True).partition_by("_w", as_dict=True).items()}
    by_f = {k[0]: v for k, v in frags.sort(w, maintain_order=True).partition_by("_w", as_dict=True).items()}
    by_p = {k[0]: v for k, v in power.partition_by("_w", as_dict=True).items()} if power.height else {}
    out = []
    for start in range(first, last + window_ms, window_ms):
        t, f, p = by_t.get(start), by_f.get(start), by_p.get(start)
        out.append(
            Window(
                start,
                start + window_ms,
                tasks=list(starmap(TaskRow, t.select(list(TASK_SCHEMA)).iter_rows()))
                if t is not None
                else [],
                fragments=[]
                if f is None
                else list(starmap(FragmentRow, f.select(list(FRAGMENT_SCHEMA)).iter_rows())),
                power=_power_rows(p),
                final=start == last,
            )
        )
    out[0].topology, out[0].topology_ms = workload.topology, workload.origin_ms
    if workload.carbon is not None:
        carry_carbon(out, starmap(CarbonRow, workload.carbon.select(list(CARBON_SCHEMA)).iter_rows()))
    return out


def _power_rows(p: pl.DataFrame | None) -> list[PowerRow]:
    if p is None:
        return []
    energy = p["energy_usage"].fill_null(0.0) if "energy_usage" in p.columns else pl.Series([0.0] * p.height)
    return [
        PowerRow("meter", int(ts), float(pw), float(e))
        for ts, pw, e in zip(p["timestamp_ms"], p["power_draw"], energy, strict=True)
    ]


def prediction_mape(agg: pl.DataFrame, consumption: pl.DataFrame | None) -> tuple[float, int]:
    """MAPE (%) of the twin's ``power_draw`` vs the measured power at the same instants, and the count."""
    if consumption is None or agg.is_empty():
        return float("nan"), 0
    pred = agg.select(
        pl.col("timestamp").dt.epoch("ms").alias("timestamp_ms"), pl.col("power_draw").alias("predicted")
    ).unique(subset=["timestamp_ms"], keep="first")
    j = consumption.join(pred, on="timestamp_ms", how="inner")
    return mape(j["predicted"].to_numpy(), j["power_draw"].to_numpy()), j.height


def uncalibrated_rows(workload: Workload, interval_ms: int) -> pl.DataFrame:
    """The twin without calibration: the causal engine with the physical topology over the whole workload
    (incremental == one-shot), rows summed over clusters like the twin's (``timestamp``, ``power_draw``)."""
    from opendt.engine import Engine

    engine = Engine(workload.topology, export_interval_ms=interval_ms, carbon=workload.carbon)
    rows = pl.concat(
        [engine.advance(workload.end_ms + 1, workload.tasks, workload.fragments), engine.finish()]
    )
    return (
        rows.group_by("timestamp_absolute", maintain_order=True)
        .agg(pl.col("power_draw").sum())
        .select(
            pl.from_epoch("timestamp_absolute", "ms").dt.replace_time_zone("UTC").alias("timestamp"),
            "power_draw",
        )
    )


def daily_mape(
    calibrated: pl.DataFrame,
    uncalibrated: pl.DataFrame,
    consumption: pl.DataFrame | None,
    rounds: list[RoundRecord],
) -> list[dict[str, Any]]:
    """Per UTC day: MAPE of both predictions at the instants where both and the meter have a value, the
    instant count, and the calibration rounds and parameter changes (applied rounds) of that day."""
    if consumption is None or calibrated.is_empty():
        return []

    def at(df: pl.DataFrame, name: str) -> pl.DataFrame:
        return df.select(
            pl.col("timestamp").dt.epoch("ms").alias("timestamp_ms"), pl.col("power_draw").alias(name)
        ).unique(subset=["timestamp_ms"], keep="first")

    j = (
        consumption.select("timestamp_ms", "power_draw")
        .join(at(calibrated, "cal"), on="timestamp_ms")
        .join(at(uncalibrated, "unc"), on="timestamp_ms")
        .filter(pl.col("power_draw") != 0)
        .with_columns(pl.from_epoch("timestamp_ms", "ms").dt.strftime("%Y-%m-%d").alias("day"))
    )

    def ape(col: str) -> pl.Expr:
        return ((pl.col(col) - pl.col("power_draw")).abs() / pl.col("power_draw").abs()).mean() * 100

    per = j.group_by("day", maintain_order=True).agg(ape("cal"), ape("unc"), pl.len().alias("n")).sort("day")
    by_round = {d["day"]: d for d in by_day(rounds)}
    return [
        {
            "day": day,
            "calibrated": round(cal, 4),
            "uncalibrated": round(unc, 4),
            "instants": n,
            "rounds": by_round.get(day, {}).get("rounds", 0),
            "changes": by_round.get(day, {}).get("changes", 0),
        }
        for day, cal, unc, n in per.iter_rows()
    ]


async def calibrate_offline(
    workload_dir: Path,
    settings: Settings,
    *,
    out: Path | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    pool_command: list[str] | None = None,
) -> OfflineResult:
    t0 = time.perf_counter()
    workload = await asyncio.to_thread(load_workload, workload_dir)
    window_ms = settings.windowing.window_s * 1000
    windows = await asyncio.to_thread(cut_windows, workload, window_ms)
    run_dir = out if out is not None else Path(tempfile.mkdtemp(prefix="opendt-calibrate-"))
    store = ResultStore(run_dir)
    await asyncio.to_thread(store.load)
    if store.durable_count:
        raise ValueError(f"{run_dir} already holds results; give an empty --out directory")
    box = TopologyBox()
    twin = TwinEngine(timeout_s=settings.simulation.timeout_s)
    interval_ms = settings.simulation.export_interval_s * 1000
    recovery = Recovery(durability_of(settings, run_dir), store, box, twin, export_interval_ms=interval_ms)
    await asyncio.to_thread(recovery.load)
    calibrator = calibrator_for(
        settings,
        box,
        twin,
        run_dir,
        inputs=recovery.d.inputs,
        checkpoints=recovery.d.checkpoints,
        store=store,
        pool_command=pool_command,
    )
    journal = calibrator.journal
    journal.on_new = on_round
    queue: asyncio.Queue[ClosedWindow | None] = asyncio.Queue(maxsize=settings.windowing.queue_size)
    simulator = WindowLoop(queue, twin, store, box, settings.simulation, hooks=calibrator, recovery=recovery)

    async def feed() -> None:
        for w in windows:
            await queue.put(ClosedWindow(w))
        await queue.put(None)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(feed())
        rounds = tg.create_task(calibrator.run())
        await simulator.run()
        rounds.cancel()
    value, matched = prediction_mape(store.agg, workload.consumption)
    uncal = await asyncio.to_thread(uncalibrated_rows, workload, settings.simulation.export_interval_s * 1000)
    unc_value, _ = prediction_mape(uncal, workload.consumption)
    days = daily_mape(store.agg, uncal, workload.consumption, journal.records)
    return OfflineResult(
        run_dir=run_dir,
        rounds=list(journal.records),
        windows=simulator.stats.windows_simulated,
        mape_pct=value,
        matched=matched,
        mape_uncalibrated_pct=unc_value,
        days=days,
        paths=parameter_paths(journal.records, calibrator.axes, workload.topology),
        wall_s=time.perf_counter() - t0,
        latencies_s=list(simulator.stats.latencies_s),
        latencies_during_rounds_s=during_rounds(store.windows, journal.records, calibrator.apply_delay_ms),
        gate_wait_s=calibrator.gate_wait_s,
    )


def during_rounds(windows: pl.DataFrame, rounds: list[RoundRecord], delay_ms: int) -> list[float]:
    """Latencies of the windows simulated while a round could be running: a round at ``R`` is started
    after the window ending at ``R`` and is over (the apply gate) before the window starting at
    ``R + delay``, so those are the windows starting in ``[R, R + delay]``."""
    if windows.is_empty() or not rounds:
        return []
    starts = windows["window_start"].dt.epoch("ms").to_numpy()
    lat = windows["latency_s"].to_numpy()
    mask = np.zeros(starts.size, dtype=bool)
    for r in rounds:
        mask |= (starts >= r.time_ms) & (starts <= r.time_ms + delay_ms)
    return [float(x) for x in lat[mask]]


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_round(r: RoundRecord) -> str:
    score = "-" if r.winner_score is None else f"{r.winner_score:.4g}"
    inc = "-" if r.incumbent_score is None else f"{r.incumbent_score:.4g}"
    radius = " ".join(f"{v['radius']:.3g}" for v in r.trust_region.values())
    values = ", ".join(
        f"{k.rsplit('.', 1)[-1]}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in r.in_effect.items()
    )
    return (
        f"round {r.round:4d}  t={iso_ms(r.time_ms)}  {r.status:8s} candidates={r.candidates:3d} "
        f"rejected={r.rejected} failed={r.failed}  {r.metric} current={inc} best={score} "
        f"gain={_num(r.improvement)} threshold={_num(r.threshold)} noise={_num(r.noise_pct)}%  "
        f"hour MAPE calibrated={_num(r.mape_calibrated)}% uncalibrated={_num(r.mape_uncalibrated)}%  "
        f"in effect: {values}" + (f"  radius {radius}" if radius else "") + f"  {r.duration_s:.2f}s  "
        f"{r.reason if r.status in ('skipped', 'failed') else ''}"
    ).rstrip()


def format_summary(result: OfflineResult) -> str:
    """The closing lines: both whole-trace MAPEs, the per-day table and the parameter paths."""
    s = result.as_dict()
    lines = [
        f"twin vs measured over {s['matched_instants']} instants: MAPE calibrated {s['mape_pct']:.3f} % | "
        f"uncalibrated {s['mape_uncalibrated_pct']:.3f} %",
        f"{s['rounds']} rounds ({s['applied']} parameter changes), {s['candidates_per_round']} candidates "
        f"per round; {s['windows']} windows in {s['wall_s']:.1f} s; window latency p95 "
        f"{s['window_latency_p95_s']} s (during rounds {s['window_latency_p95_during_rounds_s']} s); "
        f"results in {s['run_dir']}",
        "day         calibrated  uncalibrated  instants  rounds  changes",
    ]
    for d in result.days:
        worse = "  WORSE" if d["calibrated"] > d["uncalibrated"] else ""
        lines.append(
            f"{d['day']}  {d['calibrated']:9.3f}%  {d['uncalibrated']:11.3f}%  {d['instants']:8d}  "
            f"{d['rounds']:6d}  {d['changes']:7d}{worse}"
        )
    for path, steps in result.paths.items():
        trail = " -> ".join(
            f"{p['value']:.4g}" if isinstance(p["value"], float) else str(p["value"]) for p in steps
        )
        lines.append(f"{path}: {trail}")
    return "\n".join(lines) + "\n"


async def calibrate_cli(workload_dir: Path, settings: Settings, out: Path | None) -> int:
    """Print every round as it finishes, then the summary; exit 0."""
    import sys

    def show(r: RoundRecord) -> None:
        sys.stdout.write(format_round(r) + "\n")
        sys.stdout.flush()

    result = await calibrate_offline(workload_dir, settings, out=out, on_round=show)
    sys.stdout.write(format_summary(result))
    return 0
