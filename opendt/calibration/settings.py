"""The calibrator's configuration section (``calibration.*``): its search (a trust region or a grid), scoring
and acceptance. Part of :class:`opendt.settings.Settings`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from opendt.section import Section


class CalibrationAxis(Section):
    """One axis of the calibration grid: a dotted host parameter and its ``values`` or ``linspace``."""

    parameter: str = Field(
        description="Dotted host parameter, e.g. cpuPowerModel.calibrationFactor, cpu.coreSpeed; prefix "
        "clusters[NAME]. (and/or hosts[NAME].) to restrict it to one cluster (host spec); default: all hosts"
    )
    values: list[float | str] | None = Field(
        default=None, description="Explicit values (strings for cpuPowerModel.modelType)"
    )
    linspace: tuple[float, float, int] | None = Field(
        default=None, description="(start, stop, num): num evenly spaced values, both ends included"
    )
    scale: bool = Field(
        default=False,
        description="Values multiply each host's value in the physical topology instead of replacing it "
        "(keeps heterogeneous hosts heterogeneous)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CalibrationAxis:
        if (self.values is None) == (self.linspace is None):
            raise ValueError(f"axis {self.parameter!r}: give exactly one of values or linspace")
        if self.linspace is not None and self.linspace[2] < 1:
            raise ValueError(f"axis {self.parameter!r}: linspace needs num >= 1")
        if self.values is not None and not self.values:
            raise ValueError(f"axis {self.parameter!r}: values is empty")
        return self

    def points(self) -> list[float | str]:
        if self.values is not None:
            return list(self.values)
        assert self.linspace is not None
        start, stop, num = self.linspace
        if num == 1:
            return [float(start)]
        step = (stop - start) / (num - 1)
        return [round(start + i * step, 10) for i in range(num)]


def _default_grid() -> list[CalibrationAxis]:
    return [
        CalibrationAxis(parameter="cpuPowerModel.idlePower", linspace=(0.4, 1.6, 4), scale=True),
        CalibrationAxis(parameter="cpuPowerModel.calibrationFactor", linspace=(3.0, 12.0, 4)),
    ]


class TrustAxis(Section):
    """One axis of the trust-region search: a numeric host parameter searched relative to its value in
    effect (every matched host's value × the same factor, so heterogeneous hosts stay heterogeneous)."""

    parameter: str = Field(
        description="Dotted numeric host parameter (cpuPowerModel.idlePower, .maxPower, .calibrationFactor, "
        ".power, .asymUtil, cpu.coreSpeed), optionally prefixed clusters[NAME]. / hosts[NAME]."
    )
    radius: float = Field(
        default=0.2,
        gt=0,
        le=4,
        description="Initial half-width, relative to the value in effect (0.2 = ±20 %)",
    )
    min_radius: float = Field(default=0.005, gt=0, description="The region never narrows below this")
    max_radius: float = Field(default=1.0, gt=0, le=4, description="The region never widens beyond this")

    @model_validator(mode="after")
    def _order(self) -> TrustAxis:
        if not self.min_radius <= self.radius <= self.max_radius:
            raise ValueError(f"axis {self.parameter!r}: need min_radius <= radius <= max_radius")
        return self


def _default_trust_region() -> list[TrustAxis]:
    return [
        TrustAxis(parameter="cpuPowerModel.idlePower", radius=0.2),
        TrustAxis(parameter="cpuPowerModel.maxPower", radius=0.2),
        TrustAxis(parameter="cpuPowerModel.calibrationFactor", radius=0.25),
    ]


ModelType = Literal["constant", "linear", "square", "cubic", "sqrt", "mse", "asymptotic"]


class CalibrationSettings(Section):
    """The online calibrator (issues 5, 17). Rounds run every ``every_s`` of trace time over the trailing
    ``lookback_s``, samples weighted by recency (``half_life_s``). ``search: trust_region`` (default) searches
    ``trust_region`` around the values in effect; ``search: grid`` searches the fixed ``grid`` (the cartesian
    product of its axes, or, when only ``parameter``/``values`` are set, that single axis). Setting ``grid``
    or ``parameter``/``values`` without ``search`` selects the grid, as before."""

    enabled: bool = False
    every_s: int = Field(
        default=3600, gt=0, description="Trace seconds between rounds (a multiple of window_s)"
    )
    lookback_s: int = Field(
        default=10800, gt=0, description="Trailing trace seconds scored (a multiple of window_s)"
    )
    half_life_s: float | None = Field(
        default=3600.0,
        gt=0,
        description="A measured sample's weight in the score halves every half_life_s of age (from the round "
        "instant); null = every sample of the lookback weighs the same",
    )
    search: Literal["trust_region", "grid"] = Field(
        default="trust_region",
        description="trust_region: around the values in effect, widening when the best point sits on the "
        "region's edge and narrowing when not; grid: the fixed grid (+ refine_steps)",
    )
    trust_region: list[TrustAxis] = Field(
        default_factory=_default_trust_region,
        description="Axes of the trust-region search; default idlePower ±20 %, maxPower ±20 %, "
        "calibrationFactor ±25 % to start with",
    )
    iterations: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Trust-region steps per round: each evaluates the 3^n points centre × (1 + {-r, 0, +r}) "
        "per axis, moves to the best and resizes the region",
    )
    significance: float = Field(
        default=4.0,
        ge=0,
        description="A challenger replaces the values in effect only when its weighted-MAPE improvement "
        "exceeds this many standard errors of what the meter noise explains (the sample-to-sample part of "
        "the paired per-sample difference); 0 = any improvement",
    )
    hysteresis: float = Field(
        default=0.05,
        ge=0,
        description="A challenger's gain must also exceed this fraction of the estimated meter noise (in the "
        "metric's unit, MAPE pp): a band no gain within the noise's resolution crosses",
    )
    prior_weight: float = Field(
        default=0.0,
        ge=0,
        description="Among the candidates whose score is within the noise threshold of the best's (what the "
        "data cannot tell apart), pick the one minimising score + prior_weight × threshold × Σ|ln(value / "
        "physical value)|: parameters leave the physical topology's values only as far as the data demands; "
        "0 = the best score (the default: with a weight, a kill -9 and rerun does not keep the rounds)",
    )
    model_types: list[ModelType] = Field(
        default_factory=list,
        description="trust_region: power model types scored each round as competitors, each at its fitted "
        "idle and maximum power (linear, square, cubic, sqrt) or the current values (mse, constant, "
        "asymptotic), e.g. [mse, linear, square, cubic, sqrt]; [] (default) = the believed type only",
    )
    metric: Literal["mape", "rmse", "energy"] = Field(
        default="mape", description="Score that picks the winner: MAPE %, RMSE W, or |energy error| %"
    )
    parameter: str = Field(
        default="cpuPowerModel.calibrationFactor",
        description="Single-axis shorthand (used when grid is unset)",
    )
    values: list[float] = Field(
        default_factory=lambda: [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], description="Values of ``parameter``"
    )
    grid: list[CalibrationAxis] = Field(
        default_factory=_default_grid,
        description="Axes of the search grid (cartesian product); default: idlePower ×0.4…×1.6 (4 values) × "
        "calibrationFactor 3…12 (4 values)",
    )
    refine_steps: int = Field(
        default=1, ge=0, description="Successive refinements: zoom every numeric axis around the best point"
    )
    refine_points: int = Field(default=3, ge=2, description="Points per numeric axis in each refinement")
    margin: float = Field(
        default=0.0, ge=0, lt=1, description="Relative improvement over the current topology's score needed"
    )
    max_parallel: int = Field(default=2, ge=1, description="Candidate worker processes (bounded pool)")
    nice: int = Field(default=10, ge=0, le=19, description="Niceness of candidate workers (low CPU priority)")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-candidate simulation timeout")
    compare: Literal["mean", "instant"] = Field(
        default="mean",
        description="Predicted value at a measured instant t: mean power over (t − Δ, t] (energy / Δ, "
        "Δ = the measured sampling interval) or the instantaneous power at t",
    )
    apply_delay_s: int = Field(
        default=1800,
        ge=0,
        description="Trace seconds after the round instant at which the winner takes effect (rounded up to "
        "a window start); the twin waits there for a late round, so results never depend on wall time",
    )

    @model_validator(mode="after")
    def _one_space(self) -> CalibrationSettings:
        single = {"parameter", "values"} & self.model_fields_set
        if single and "grid" in self.model_fields_set:
            raise ValueError("set either grid or parameter/values, not both")
        if single and "grid" not in self.model_fields_set:
            object.__setattr__(
                self, "grid", [CalibrationAxis(parameter=self.parameter, values=list(self.values))]
            )
        if (single or "grid" in self.model_fields_set) and "search" not in self.model_fields_set:
            object.__setattr__(self, "search", "grid")
        if self.apply_delay_s >= self.every_s:
            raise ValueError(
                "apply_delay_s must be < every_s (a round's winner applies before the next round)"
            )
        return self
