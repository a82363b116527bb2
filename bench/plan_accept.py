"""Accepting a proposal plans a change, it does not fake one (issue 26 item 4), measured on the demo.

    .venv/bin/python bench/plan_accept.py [--workload data/demo] [--speed 3600]

Two runs of the daemon in process (embedded broker, replay at ``--speed``), calibration and optimizer on
(energy SLO well below the workload's use, so rounds keep proposals): run A accepts nothing; run B accepts
the first kept proposal as soon as there is one (``POST /api/optimizer/accept``, ``optimizer.accept: plan``).
Printed: the twin's MAPE and energy error over the whole run (``GET /api/power``'s metrics) of both and their
difference (the issue's bound: 0.1 pp), the calibration rounds applied in each, the plan's status and its
newest forecast, and whether that forecast equals ``POST /api/whatif`` of the plan's topology over the same
range (largest relative difference of the power series and of the energy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from opendt.calibration.settings import CalibrationSettings
from opendt.daemon import run_daemon, wait_until
from opendt.log import configure_logging
from opendt.settings import ApiSettings, OptimizerSettings, ReplaySettings, Settings
from opendt.twin.status import TwinState

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _json(s: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with s.request(method, url, json=body, headers=AUTH) as r:
        doc = await r.json()
        if r.status >= 400:
            raise RuntimeError(f"{method} {url}: {r.status} {doc}")
        return doc


async def run(workload: Path, speed: str, *, accept: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="opendt-bench-plan-"))
    (tmp / "slo.json").write_text(json.dumps({"energy_kwh_per_window": 0.08, "task_wait_p95_s": 7200.0}))
    settings = Settings(
        replay=ReplaySettings(workload=workload, speed="max" if speed == "max" else float(speed)),
        api=ApiSettings(port=0, token=TOKEN),
        calibration=CalibrationSettings(enabled=True),
        optimizer=OptimizerSettings(enabled=True, slo_path=tmp / "slo.json"),
        data_dir=tmp / "data",
    )
    state, stop = TwinState(), asyncio.Event()
    out: dict[str, Any] = {"accepted": None}
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        await wait_until(state.ready, daemon, "serving")
        url = state.api_url
        async with aiohttp.ClientSession() as s:
            while True:
                st = await _json(s, "GET", f"{url}/api/status")
                if (
                    accept
                    and out["accepted"] is None
                    and (await _json(s, "GET", f"{url}/api/optimizer"))["best"]
                ):
                    out["accepted"] = await _json(s, "POST", f"{url}/api/optimizer/accept", {})
                if st["simulation"]["done"] and st["optimizer"]["status"] == "idle":
                    break
                await asyncio.sleep(0.5)
            out["power"] = (await _json(s, "GET", f"{url}/api/power"))["metrics"]
            out["calibration"] = st.get("calibration", {})
            opt = await _json(s, "GET", f"{url}/api/optimizer?limit=1")
            out["plan"] = opt.get("plan")
            f = (out["plan"] or {}).get("forecast")
            if f and "error" not in f:
                body = {
                    "start": f["start_ms"],
                    "end": f["end_ms"],
                    "topology": f["topology"],
                    "step_s": f["step_s"],
                }
                w = await _json(s, "POST", f"{url}/api/whatif", body)
                diffs = [
                    abs(a - b) / max(1.0, abs(b))
                    for (_, a), (_, b) in zip(f["series"]["plan"], w["series"]["whatif"], strict=True)
                ]
                e_f, e_w = f["energy_kwh"]["plan"], w["totals"]["whatif"]["energy_kwh"]
                out["forecast_vs_whatif"] = {
                    "series": max(diffs, default=0.0),
                    "energy": abs(e_f - e_w) / e_w,
                }
            windows = await _json(s, "GET", f"{url}/api/windows?limit=5000")
            out["versions"] = sorted({w["topology_version"] for w in windows["windows"]})
        stop.set()
    assert daemon.result() == 0
    out["wall_s"] = time.perf_counter() - t0
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", type=Path, default=ROOT / "data" / "demo")
    ap.add_argument("--speed", default="3600")
    args = ap.parse_args()
    configure_logging("warning")
    a = await run(args.workload, args.speed, accept=False)
    b = await run(args.workload, args.speed, accept=True)
    for name, r in (("A (no accept)", a), ("B (accept as plan)", b)):
        p = r["power"]
        print(f"{name}: MAPE {p['mape_pct']} %, energy error {p['energy_error_pct']} %, "
              f"simulated topology versions {r['versions']}, {r['wall_s']:.1f} s")  # fmt: skip
    print(f"MAPE difference B − A: {b['power']['mape_pct'] - a['power']['mape_pct']:+.4f} pp (bound ±0.1 pp)")
    plan = b["plan"] or {}
    f = plan.get("forecast") or {}
    print(f"plan: round {plan.get('round')}, status {plan.get('status')}, patch {plan.get('patch')}")
    if f and "error" not in f:
        print(f"forecast {f['start_ms']}..{f['end_ms']}: plan {f['energy_kwh']['plan']} kWh vs twin "
              f"{f['energy_kwh']['twin']} kWh ({f['energy_pct']} %)")  # fmt: skip
        print(f"forecast vs POST /api/whatif: largest relative difference {b['forecast_vs_whatif']}")


if __name__ == "__main__":
    asyncio.run(main())
