"""What-if fidelity against datacenters whose truth is known.

    .venv/bin/python bench/whatif_fidelity.py [--days 2] [--only NAME] [--keep DIR] [--markdown]

For each truth below, a demo-like workload of ``--days`` days
(:func:`opendt.commands.demo.synthetic_workload`) whose meter is the truth's power (the causal engine,
1 % Gaussian noise, 30 s samples,
:func:`opendt.commands.demo.measured_power`); its ``topology.json`` is the demo's published one (what the twin
believes). The twin runs over it with calibration on (``opendt calibrate``'s path: the same
:class:`~opendt.twin.loop.WindowLoop` and :class:`~opendt.calibration.component.Calibrator` as the daemon,
windows cut from the files). Then, over the last day, each what-if is asked of the finished run the way
``opendt serve`` answers ``POST /api/whatif`` (:func:`opendt.commands.serve.build_view`: the run's stored
inputs and checkpoints, the scenario runner's warm start, the engine worker pool):

* **calibrated**: the change applied to the topology in effect at the range start (what the API does);
* **uncalibrated**: the same change applied to the physical (published) topology, from the same state;

and compared with the same change applied to the truth (the truth's own run from the first task, the change
at the range start, the same worker code, no noise). Reported per truth and what-if: the energy error over
the range (exact integrals, %) and the MAPE of the power at the twin's export instants in the range.

Truths:

* ``demo``: the demo's hidden topology (calibrationFactor 6.5; the published one says 4);
* ``aged``: the same model type with other parameters (idle × 1.4, max × 0.85, calibrationFactor 2.5);
* ``square``: another model type than the twin believes (square: P = idle + (max − idle) u², convex, which
  no mse curve (concave for calibrationFactor ≥ 1) follows), idle × 1.2, max × 1.1.

What-ifs (the same patch on every side): every host's core speed −25 %; half the hosts; +50 % hosts; twice
the load (every task submitted in the range replicated once, :func:`opendt.twin.scenarios.replicate_load`).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opendt.api.readmodel import topology_at  # noqa: E402
from opendt.commands.calibrate import calibrate_offline  # noqa: E402
from opendt.commands.demo import (  # noqa: E402
    DAY_MS,
    START,
    TRUE_CALIBRATION_FACTOR,
    demo_topology,
    measured_power,
    synthetic_workload,
    write_workload,
)
from opendt.commands.serve import build_view  # noqa: E402
from opendt.models.patch import apply_patch  # noqa: E402
from opendt.models.topology import Topology, parse_topology  # noqa: E402
from opendt.settings import Settings, load_settings  # noqa: E402
from opendt.twin.scenarios import replicate_load  # noqa: E402
from opendt.worker.warm import RoundBase, run_candidate  # noqa: E402
from opendt.workload import load_workload  # noqa: E402


def _moved(idle: float, mx: float, cf: float, model: str = "mse") -> dict[str, Any]:
    doc = demo_topology(cf)
    for h in doc["clusters"][0]["hosts"]:
        pm = h["cpuPowerModel"]
        pm["idlePower"], pm["maxPower"] = round(pm["idlePower"] * idle, 6), round(pm["maxPower"] * mx, 6)
        if model != "mse":
            pm["modelType"] = model
            del pm["calibrationFactor"]
    return doc


TRUTHS: dict[str, tuple[int, dict[str, Any]]] = {
    "demo": (7, demo_topology(TRUE_CALIBRATION_FACTOR)),
    "aged": (11, _moved(1.4, 0.85, 2.5)),
    "square": (13, _moved(1.2, 1.1, 1.0, "square")),
}
"""name → (workload seed, true topology)."""


def _host_patch(topo: dict[str, Any], leaf: str, f: float, *, integer: bool = False) -> dict[str, Any]:
    """Every host spec's ``leaf`` × ``f`` (absolute values per host spec, as the API takes them)."""
    out: dict[str, Any] = {}
    for cl in topo["clusters"]:
        for h in cl["hosts"]:
            v = h[leaf] if "." not in leaf else h[leaf.split(".")[0]][leaf.split(".")[1]]
            out[f"clusters[{cl['name']}].hosts[{h['name']}].{leaf}"] = (
                max(1, round(v * f)) if integer else round(v * f, 6)
            )
    return out


BELIEVED = demo_topology()
WHATIFS: dict[str, tuple[dict[str, Any], int]] = {
    "core speed -25 %": (_host_patch(BELIEVED, "cpu.coreSpeed", 0.75), 1),
    "half the hosts": (_host_patch(BELIEVED, "count", 0.5, integer=True), 1),
    "+50 % hosts": (_host_patch(BELIEVED, "count", 1.5, integer=True), 1),
    "twice the load": ({}, 2),
}
"""name → (patch, load factor)."""


def write_truth(dst: Path, seed: int, days: int, truth: dict[str, Any]) -> Path:
    tasks, fragments, carbon = synthetic_workload(seed, days)
    power = measured_power(tasks, fragments, carbon, np.random.default_rng(seed), [(0, truth)])
    write_workload(dst, tasks, fragments, carbon, power, demo_topology())
    return dst


def _changed(base: Topology, patch: dict[str, Any]) -> Topology:
    return apply_patch(base, patch) if patch else base


def truth_run(
    wl_dir: Path, truth: dict[str, Any], patch: dict[str, Any], load: int, start: int, end: int, interval: int
) -> tuple[float, pl.DataFrame]:
    """The truth with the change from ``start``: (energy J over [start, end), rows ``timestamp_ms``,
    ``power_draw``), by the what-if worker's own code (a fresh engine pre-rolled to ``start``)."""
    wl = load_workload(wl_dir)
    tasks, fragments = replicate_load(wl.tasks, wl.fragments, start, load)
    base = RoundBase(
        blob=None,
        init_topology=copy.deepcopy(truth),
        carbon=wl.carbon,
        tasks=tasks,
        fragments=fragments,
        until_ms=end,
        interval_ms=interval,
        apply_at_ms=start,
        regrid=False,
        full=True,
    )
    topo = _changed(parse_topology(truth, source="truth"), patch)
    extra: dict[str, pl.DataFrame] = {}
    rows = run_candidate(base, topo.to_json_dict(), extra)
    energy = float(extra["stats"]["range_energy_j"][0])
    return energy, rows.select(pl.col("timestamp_absolute").alias("timestamp_ms"), "power_draw")


def _mape(twin: pl.DataFrame, truth: pl.DataFrame, start: int, end: int) -> float:
    j = twin.select("timestamp_ms", pl.col("power_draw").alias("twin")).join(truth, on="timestamp_ms")
    j = j.filter(
        (pl.col("timestamp_ms") > start) & (pl.col("timestamp_ms") <= end) & (pl.col("power_draw") > 0)
    )
    ape = ((j["twin"] - j["power_draw"]).abs() / j["power_draw"]).to_numpy()
    return float(ape.mean() * 100)


async def one_truth(name: str, days: int, tmp: Path, settings: Settings) -> dict[str, Any]:
    seed, truth = TRUTHS[name]
    wl_dir = write_truth(tmp / name / "workload", seed, days, truth)
    t0 = time.perf_counter()
    result = await calibrate_offline(wl_dir, settings, out=tmp / name / "run")
    cal_wall = time.perf_counter() - t0
    view, _ = build_view(result.run_dir, settings)
    runner, store = view.scenarios, view.store
    assert runner is not None
    assert store is not None
    assert view.box is not None
    start = int(START.timestamp() * 1000) + (days - 1) * DAY_MS
    end = min(start + DAY_MS, int(store.windows["window_end"].dt.epoch("ms").max()))  # type: ignore[arg-type]
    interval = runner.export_interval_ms
    bases = {"calibrated": topology_at(view, start), "uncalibrated": view.box.physical}
    out: dict[str, Any] = {
        "truth": name,
        "range": [start, end],
        "twin_mape_pct": {
            "calibrated": round(result.mape_pct, 3),
            "uncalibrated": round(result.mape_uncalibrated_pct, 3),
        },
        "calibrate_wall_s": round(cal_wall, 1),
        "calibrated_models_at_start": {
            h["name"]: h["cpuPowerModel"]
            for c in bases["calibrated"].to_json_dict()["clusters"]
            for h in c["hosts"]
        },
        "whatifs": [],
    }
    try:
        for what, (patch, load) in {"no change": ({}, 1), **WHATIFS}.items():
            t_energy, t_rows = await asyncio.to_thread(
                truth_run, wl_dir, truth, patch, load, start, end, interval
            )
            row: dict[str, Any] = {"whatif": what, "truth_kwh": round(t_energy / 3.6e6, 3)}
            for variant, base in bases.items():
                (res,) = await runner.run(start, end, [_changed(base, patch)], what="whatif", load=load)
                assert res.rows is not None, res.error
                assert res.tasks is not None
                energy = float(res.tasks["range_energy_j"])
                row[variant] = {
                    "energy_error_pct": round((energy / t_energy - 1) * 100, 3),
                    "mape_pct": round(_mape(res.rows, t_rows, start, end), 3),
                }
            out["whatifs"].append(row)
    finally:
        await runner.close()
        await runner.pool.stop()
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| truth | what-if | energy error calibrated | uncalibrated | MAPE calibrated | uncalibrated |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for w in r["whatifs"]:
            c, u = w["calibrated"], w["uncalibrated"]
            lines.append(
                f"| {r['truth']} | {w['whatif']} | {c['energy_error_pct']:+.2f} % "
                f"| {u['energy_error_pct']:+.2f} % "
                f"| {c['mape_pct']:.2f} % | {u['mape_pct']:.2f} % |"
            )
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = load_settings()
    cal = base.calibration.model_copy(update={"enabled": True})
    out = []
    with tempfile.TemporaryDirectory(prefix="opendt-bench-whatif-") as td:
        tmp = args.keep or Path(td)
        for name in [args.only] if args.only else list(TRUTHS):
            settings = base.model_copy(update={"calibration": cal, "data_dir": tmp / name / "data"})
            r = await one_truth(name, args.days, tmp, settings)
            print(json.dumps(r), flush=True)
            out.append(r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=2, help="trace days (the what-ifs cover the last one)")
    ap.add_argument("--only", choices=list(TRUTHS), help="one truth only")
    ap.add_argument("--keep", type=Path, help="keep workloads and runs under DIR")
    args = ap.parse_args()
    results = asyncio.run(amain(args))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
