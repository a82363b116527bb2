"""What the calibrator shows (``GET /api/calibration``, ``GET /api/status``, ``opendt calibrate``): counts,
the calibrated vs uncalibrated MAPE side by side (overall, last day, per day), the parameter paths, the
changes per day, the trust region and the noise estimate; computed from the journal's rounds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from opendt.calibration.journal import RoundRecord
from opendt.calibration.settings import CalibrationSettings
from opendt.calibration.space import Axis, current_values
from opendt.models.topology import Topology

DAY_MS = 86_400_000


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _mape(recs: Sequence[RoundRecord]) -> dict[str, Any]:
    """Sample-weighted calibrated and uncalibrated MAPE over the rounds' newest intervals."""
    scored = [r for r in recs if r.eval_samples and r.mape_calibrated is not None]
    n = sum(r.eval_samples for r in scored)
    if not n:
        return {"calibrated": None, "uncalibrated": None, "samples": 0}

    def mean(get: str) -> float:
        return round(sum(float(getattr(r, get)) * r.eval_samples for r in scored) / n, 4)

    cal, unc = mean("mape_calibrated"), mean("mape_uncalibrated")
    return {"calibrated": cal, "uncalibrated": unc, "gain": round(unc - cal, 4), "samples": n}


def by_day(recs: Sequence[RoundRecord]) -> list[dict[str, Any]]:
    """Per UTC day (of the round's newest interval): calibrated vs uncalibrated MAPE, rounds, changes."""
    days: dict[str, list[RoundRecord]] = {}
    for r in recs:
        days.setdefault(_day(r.time_ms - 1), []).append(r)
    return [
        {"day": d, **_mape(rs), "rounds": len(rs), "changes": sum(r.status == "applied" for r in rs)}
        for d, rs in days.items()
    ]


LEAF_UNITS = {"idlePower": "W", "maxPower": "W", "power": "W", "coreSpeed": "MHz"}


def axis_unit(axis: Axis) -> str:
    """The unit of an axis's values: ``× physical`` for a scale axis (a factor of each host's physical value),
    else the leaf's unit (W, MHz; '' for calibrationFactor, asymUtil, modelType)."""
    return "× physical" if axis.scale else LEAF_UNITS.get(axis.leaf.rsplit(".", 1)[-1], "")


def parameter_paths(
    recs: Sequence[RoundRecord], axes: Sequence[Axis], initial: Topology
) -> dict[str, list[dict[str, Any]]]:
    """Per axis: the initial value, then the value each applied round set, from its apply instant."""
    first = current_values(initial, initial, axes)
    start = recs[0].lookback_start_ms if recs else 0
    out: dict[str, list[dict[str, Any]]] = {
        a.path: ([{"time_ms": start, "value": first[i]}] if first is not None else [])
        for i, a in enumerate(axes)
    }
    for r in recs:
        if r.status == "applied":
            for path, v in r.winner.items():
                out.setdefault(path, []).append({"time_ms": r.apply_at_ms, "value": v, "round": r.round})
    return out


def calibration_view(
    settings: CalibrationSettings,
    recs: Sequence[RoundRecord],
    axes: Sequence[Axis],
    *,
    pending: int,
    gate_wait_s: float,
    initial: Topology | None,
) -> dict[str, Any]:
    last_day = [r for r in recs if recs and r.time_ms > recs[-1].time_ms - DAY_MS]
    noise = next((r.noise_pct for r in reversed(recs) if r.noise_pct is not None), None)
    region = next((r.trust_region for r in reversed(recs) if r.trust_region), {})
    spans = next((r.intervals for r in reversed(recs) if r.intervals), {})
    return {
        "enabled": True,
        "search": settings.search,
        "every_s": settings.every_s,
        "lookback_s": settings.lookback_s,
        "half_life_s": settings.half_life_s,
        "metric": settings.metric,
        "significance": settings.significance,
        "prior_weight": settings.prior_weight,
        "axes": [a.path for a in axes],
        "rounds": len(recs),
        "applied": sum(r.status == "applied" for r in recs),
        "skipped": sum(r.status == "skipped" for r in recs),
        "failed": sum(r.status == "failed" for r in recs),
        "pending": pending,
        "gate_wait_s": round(gate_wait_s, 3),
        "changes": sum(r.status == "applied" for r in recs),
        "mape": {**_mape(recs), "last_day": _mape(last_day)},
        "by_day": by_day(recs),
        "paths": {} if initial is None else parameter_paths(recs, axes, initial),
        "axis_units": {a.path: axis_unit(a) for a in axes},
        "trust_region": region,
        "intervals": spans,
        "noise_pct": None if noise is None else round(noise, 4),
        "last_round": recs[-1].summary() if recs else None,
    }
