"""Model choice: the power model types OpenDC offers, each fitted to the round's lookback, as competitors.

Where the believed type's shape cannot follow the meter (a convex truth under an mse belief), the trust region
would push its parameters outside physics to fit the series; scoring the other types instead (multi-model, as
M3SA does over OpenDC's models) lets the data pick the shape. A type is scored at its best idle and maximum
power, not at the current values (tuned for another shape, they would judge it unfairly):

for ``linear``, ``square``, ``cubic`` and ``sqrt`` every host draws ``idle·(1 − f(u)) + max·f(u)``, linear in
its idle and maximum power, so with every host's idle × ``a`` and maximum × ``b`` the site draws
``a·I(t) + b·M(t)``. Two runs of the type (``a, b`` = ``1, 1`` and ``½, 1``, power-only replays of the round's
schedule: milliseconds) give ``I`` and ``M``; the recency-weighted least squares of the relative error gives
``a`` and ``b``, whose topology is scored too (if physical: ``0 ≤ idle < max``). Other types (``mse``,
``constant``, ``asymptotic``) are scored at the current values.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from opendt.calibration.scoring import F64, recency_weights
from opendt.calibration.space import Axis, Candidate, current_values
from opendt.models.patch import missing_parameters
from opendt.models.topology import Topology, TopologyError, parse_topology

LINEAR_IN_POWERS = ("linear", "square", "cubic", "sqrt")


class _Scored(Protocol):
    ts: npt.NDArray[np.int64] | None
    pred: F64 | None


class _Round(Protocol):
    axes: list[Axis]
    job: Any
    settings: Any

    def evaluate(
        self, stage: int, cands: list[tuple[Any, Candidate]], status: str = "ok"
    ) -> Awaitable[Any]: ...


def retyped(
    current: Topology, model: str, axes: Sequence[Axis], idle_f: float = 1.0, max_f: float = 1.0
) -> Candidate | None:
    """``current`` with every host's power model of type ``model``, idle power × ``idle_f`` and maximum ×
    ``max_f`` (its other parameters kept, so the search can come back); None when every host already has the
    type (and no factor is asked). A topology outside physics, or a type whose parameters the document does
    not set, is rejected with the reason."""
    doc: dict[str, Any] = copy.deepcopy(current.to_json_dict())
    hosts = [h for cl in doc["clusters"] for h in cl["hosts"]]
    same = all((h.get("cpuPowerModel") or {}).get("modelType") == model for h in hosts)
    if same and idle_f == 1.0 and max_f == 1.0:
        return None
    unknown = ("?",) * len(axes)
    for h in hosts:
        pm = h.setdefault("cpuPowerModel", {})
        pm["modelType"] = model
        for key, f in (("idlePower", idle_f), ("maxPower", max_f)):
            if f != 1.0 and key in pm:
                pm[key] = float(pm[key]) * f
        if f"{pm.get('idlePower', 0)}" and float(pm.get("idlePower", 0.0)) >= float(
            pm.get("maxPower", 1e300)
        ):
            return Candidate(unknown, None, f"idlePower {pm['idlePower']:.6g} must be < maxPower")
    try:
        topo = parse_topology(doc, source="candidate")
    except TopologyError as e:
        return Candidate(unknown, None, str(e))
    reason = missing_parameters(topo)
    if reason:
        return Candidate(unknown, None, reason)
    return Candidate(current_values(topo, topo, axes) or unknown, topo)


def fit_factors(
    whole: _Scored, half: _Scored, measured: pl.DataFrame, at_ms: int, half_life_s: float | None
) -> tuple[float, float] | None:
    """(a, b) minimising the recency-weighted squared relative error of ``a·I + b·M`` against the meter,
    from the runs at (1, 1) (``whole``) and (½, 1) (``half``); None when they do not line up or are
    degenerate."""
    if whole.ts is None or whole.pred is None or half.ts is None or half.pred is None:
        return None
    if whole.ts.shape != half.ts.shape or not np.array_equal(whole.ts, half.ts):
        return None
    meas = measured.join(pl.DataFrame({"timestamp_ms": whole.ts}), on="timestamp_ms", how="semi")
    y = meas.sort("timestamp_ms")["power_draw"].to_numpy().astype(np.float64)
    if y.size != whole.ts.size or y.size < 8:
        return None
    idle = 2.0 * (whole.pred - half.pred)
    mx = whole.pred - idle
    ok = y > 0
    w = np.sqrt(recency_weights(whole.ts, at_ms, half_life_s)[ok]) / y[ok]
    x = np.column_stack([idle[ok], mx[ok]]) * w[:, None]
    sol, *_ = np.linalg.lstsq(x, y[ok] * w, rcond=None)
    a, b = float(sol[0]), float(sol[1])
    if not (np.isfinite(a) and np.isfinite(b)) or a < 0 or b <= 0:
        return None
    return a, b


async def fit_type(rnd: _Round, current: Topology, model: str) -> None:
    """Score ``model`` on the round: at its fitted idle and maximum power where it is linear in them (above),
    else at the current values."""
    key = ("model", model)
    if model not in LINEAR_IN_POWERS:
        c = retyped(current, model, rnd.axes)
        if c is not None:
            await rnd.evaluate(0, [(key, c)])
        return
    whole = retyped(current, model, rnd.axes)
    if whole is None:  # the current type: fitted too (a closed-form step beside the trust region's)
        whole = Candidate(current_values(current, current, rnd.axes) or ("?",) * len(rnd.axes), current)
    half = retyped(current, model, rnd.axes, 0.5)
    if half is None or whole.topology is None or half.topology is None:
        return
    scored = await rnd.evaluate(0, [((*key, "whole"), whole), ((*key, "half"), half)])
    ab = fit_factors(scored[0], scored[1], rnd.job.measured, rnd.job.at_ms, rnd.settings.half_life_s)
    if ab is not None:
        fitted = retyped(current, model, rnd.axes, *ab)
        if fitted is not None:
            await rnd.evaluate(0, [((*key, "fit"), fitted)])
