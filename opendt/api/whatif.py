"""``POST /api/whatif``: a past range re-simulated with another topology, from the twin's state at its start,
answered side by side with the twin's baseline and the measurement."""

from __future__ import annotations

import math
from typing import Any

import polars as pl
from aiohttp import web

from opendt.api.http import SETTINGS, ApiError, json_body, json_response, parse_time, require_token
from opendt.api.readmodel import downsample, measured_power, topology_at
from opendt.api.routes import VIEW
from opendt.models.messages import iso_ms
from opendt.models.topology import Topology, TopologyError, parse_topology
from opendt.twin.history import HistoryGap
from opendt.twin.scenarios import ScenarioBusy, ScenarioResult, ScenarioStopped

RANGE_KEYS = ("range_energy_j", "range_carbon_g")
"""What a scenario run's statistics carry besides the tasks': the exact energy and carbon over the range."""


def _totals(res: ScenarioResult, start: int, end: int) -> dict[str, float | None]:
    """Energy and carbon: the exact integrals over ``[start, end)`` (the engine's, not a sum of export rows,
    whose first one may begin before ``start``); mean power = energy / duration; peak = the highest power
    at an export instant in ``[start, end)``."""
    stats = res.tasks or {}
    energy, carbon = stats.get("range_energy_j"), stats.get("range_carbon_g")
    rows = res.rows if res.rows is not None else pl.DataFrame()
    part = (
        rows.filter((pl.col("timestamp_ms") >= start) & (pl.col("timestamp_ms") < end))
        if rows.height
        else rows
    )
    peak = float(part["power_draw"].max()) if part.height else None  # type: ignore[arg-type]
    return {
        "energy_kwh": None if energy is None else round(float(energy) / 3.6e6, 6),
        # unknown (NaN) when part of the range had no carbon intensity received
        "carbon_kg": None if carbon is None or not math.isfinite(carbon) else round(float(carbon) / 1000, 6),
        "peak_w": None if peak is None else round(peak, 3),
        "mean_w": None if energy is None else round(float(energy) / ((end - start) / 1000), 3),
    }


def _task_stats(res: ScenarioResult) -> dict[str, Any] | None:
    return None if res.tasks is None else {k: v for k, v in res.tasks.items() if k not in RANGE_KEYS}


def _measured_totals(measured: pl.DataFrame | None, start: int, end: int) -> dict[str, float | None]:
    """Measured: mean and peak power of the samples in ``[start, end)``, energy = mean × range length."""
    none: dict[str, float | None] = {"energy_kwh": None, "carbon_kg": None, "peak_w": None, "mean_w": None}
    if measured is None:
        return none
    part = measured.filter((pl.col("timestamp_ms") >= start) & (pl.col("timestamp_ms") < end))
    if part.is_empty():
        return none
    mean = float(part["power_draw"].mean())  # type: ignore[arg-type]
    return {
        "energy_kwh": round(mean * (end - start) / 3.6e9, 6),
        "carbon_kg": None,
        "peak_w": round(float(part["power_draw"].max()), 3),  # type: ignore[arg-type]
        "mean_w": round(mean, 3),
    }


def _pct(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return round((new / old - 1) * 100, 4)


def _whole_topology_changes(base: Topology, topo: Topology) -> list[dict[str, Any]]:
    """What a posted whole topology changes against the one in effect at start: every patchable value that
    differs, or, when the clusters or host specs differ, one change naming the shapes."""
    from opendt.models.patch import PatchError, topology_diff

    try:
        return [vars(c) for c in topology_diff(base, topo)]
    except PatchError:

        def shape(t: Topology) -> str:
            return "; ".join(
                f"{c.name}: " + ", ".join(f"{h.name}×{h.count}" for h in c.hosts) for c in t.clusters
            )

        return [{"path": "clusters", "leaf": "clusters", "before": shape(base), "after": shape(topo)}]


WHATIF_KEYS = {"start", "end", "topology", "patch", "step_s", "reason"}


async def whatif(request: web.Request) -> web.Response:
    """Simulate a past range with another topology, from the twin's state at the range start."""
    require_token(request)
    view = request.app[VIEW]
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(422, "body: must be a JSON object", "body")
    unknown = sorted(set(body) - WHATIF_KEYS)
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r} (allowed: {sorted(WHATIF_KEYS)})", unknown[0])
    for name in ("start", "end"):
        if name not in body:
            raise ApiError(422, f"{name}: required (ISO-8601 time or epoch milliseconds)", name)
        if not isinstance(body[name], str | int) or isinstance(body[name], bool):
            raise ApiError(422, f"{name}: must be an ISO-8601 string or epoch milliseconds", name)
    start, end = parse_time(str(body["start"]), "start"), parse_time(str(body["end"]), "end")
    if end <= start:
        raise ApiError(422, "end: must be after start", "end")
    limit = request.app[SETTINGS].whatif_max_range_s
    if end - start > limit * 1000:
        raise ApiError(422, f"end: the range is longer than api.whatif_max_range_s ({limit} s)", "end")
    step_s = body.get("step_s", 0)
    span_s = -(-(end - start) // 1000)
    if not isinstance(step_s, int) or isinstance(step_s, bool) or not 0 <= step_s <= span_s:
        raise ApiError(
            422, f"step_s: must be an integer number of seconds in 0..{span_s} (the range)", "step_s"
        )
    if ("topology" in body) == ("patch" in body):
        raise ApiError(
            422, "give exactly one of topology (a whole topology) or patch (dotted parameters)", "patch"
        )
    if view.scenarios is None or view.box is None:
        raise ApiError(404, "no twin to run a what-if on (the API runs without a twin or a run directory)")
    base = topology_at(view, start)
    changes: list[dict[str, Any]] = []
    if "patch" in body:
        from opendt.models.patch import PatchError, apply_patch, topology_diff

        patch = body["patch"]
        if not isinstance(patch, dict) or not patch:
            raise ApiError(422, "patch: must be a non-empty object of dotted path → value", "patch")
        try:
            topo = apply_patch(base, patch)
            changes = [vars(c) for c in topology_diff(base, topo)]
        except PatchError as e:
            raise ApiError(422, f"patch: {e}", "patch") from None
    else:
        try:
            topo = parse_topology(body["topology"], source="topology")
        except TopologyError as e:
            raise ApiError(422, str(e), ".".join(p for p in ("topology", e.field) if p)) from None
        changes = _whole_topology_changes(base, topo)
    try:
        # the baseline runs beside the what-if, from the same state with the topology in effect at start: both
        # totals are then the same exact integral over [start, end)
        baseline, res = await view.scenarios.run(start, end, [base, topo], what="whatif")
    except HistoryGap as e:
        raise ApiError(422, f"start/end: {e}", "start") from None
    except ScenarioStopped as e:
        raise ApiError(503, f"what-if not run: {e}", None) from None
    except ScenarioBusy as e:
        raise ApiError(429, f"too many what-if runs queued: {e}", None) from None
    for r in (baseline, res):
        if r.rows is None:
            raise ApiError(500, f"the what-if simulation failed: {r.error}", None)
    assert baseline.rows is not None
    assert res.rows is not None
    step_ms = (step_s or max(60, -(-(end - start) // 1000 // 500))) * 1000
    measured = measured_power(view)
    totals = {
        "measured": _measured_totals(measured, start, end),
        "baseline": _totals(baseline, start, end),
        "whatif": _totals(res, start, end),
    }
    delta = {
        f"{name}_pct": _pct(totals["whatif"][key], totals["baseline"][key])
        for name, key in (("energy", "energy_kwh"), ("carbon", "carbon_kg"), ("peak", "peak_w"))
    }
    return json_response(
        {
            "start": iso_ms(start),
            "end": iso_ms(end),
            "step_s": step_ms // 1000,
            "base_topology_version": view.box.current.version,
            "changes": changes,
            "topology": topo.to_json_dict(),
            "series": {
                "measured": downsample(measured, "power_draw", start, end, step_ms),
                "baseline": downsample(baseline.rows, "power_draw", start, end, step_ms),
                "whatif": downsample(res.rows, "power_draw", start, end, step_ms),
            },
            "totals": totals,
            "tasks": {"baseline": _task_stats(baseline), "whatif": _task_stats(res)},
            "delta": {
                k.replace("_kwh", "").replace("_kg", "").replace("_w", ""): v for k, v in delta.items()
            },
            "elapsed_s": round(res.compute_s, 4),
        }
    )
