"""The optimizer's configuration section (``optimizer.*``): its strategy, the bounds every proposal respects,
scoring, and what accepting a proposal does. Part of :class:`opendt.settings.Settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from opendt.section import Section

REPO_ROOT = Path(__file__).resolve().parents[2]


class OptimizerSettings(Section):
    """The SLO-driven optimizer (issue 7): proposal strategy, the bounds every proposal respects, scoring."""

    enabled: bool = False
    every_windows: int = Field(default=12, ge=1)
    strategy: Literal["rules", "llm"] = "rules"
    accept: Literal["plan", "apply"] = Field(
        default="plan",
        description="What accepting a proposal does: plan (the twin goes on twinning the physical datacenter "
        "and serves the plan's forecast until dc.topology shows it) or apply (the twin simulates it at once)",
    )
    forecast_every_s: int = Field(
        default=3600,
        ge=60,
        le=86_400,
        description="A plan's forecast: the trailing range, refreshed this often",
    )
    slo_path: Path = REPO_ROOT / "config" / "slo.json"
    slo_poll_s: float = Field(default=2.0, gt=0, description="Seconds between checks of the SLO file")
    llm_base_url: str = "https://api.openai.com/v1"
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = Field(default=20.0, gt=0, description="Per attempt; a timeout is not retried")
    llm_retries: int = Field(default=2, ge=0, description="Retries after a 429, a 5xx or a connection error")
    llm_backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles on each retry")
    min_host_count: int = Field(default=1, ge=1, description="No host group is scaled below this many hosts")
    min_core_count: int = Field(default=8, ge=1, description="Floor of cpu.coreCount (consolidation)")
    small_step_core_cap: int = Field(default=32, ge=1, description="Cap of the +2 cores rule")
    max_core_count: int = Field(default=48, ge=1, description="Cap of the +4 cores rule and of any proposal")
    min_core_speed_mhz: float = Field(default=1800.0, gt=0, description="Floor of cpu.coreSpeed (MHz)")
    core_speed_factor: float = Field(default=0.9, gt=0, lt=1, description="coreSpeed multiplier of the rule")
    downscale: Literal["one_host", "to_slo"] = Field(
        default="to_slo",
        description="massive_downscale: one host fewer per group (the earlier design), or the share of hosts "
        "the energy excess asks for (count × SLO/energy, at least one fewer)",
    )
    search_steps: int = Field(
        default=6,
        ge=0,
        description="Host-count cuts tried per search ladder when an energy rule matches (coarse, then "
        "refined where the energy SLO is first met, until one meets every SLO); 0: only the rule's proposal "
        "(the earlier design)",
    )
    search_refinements: int = Field(
        default=3, ge=0, description="Refined ladders at most per round (each narrows the interval ~7×)"
    )
    search_floor: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="Deepest cut the search tries, as a fraction of each group's hosts",
    )
    energy_weight: float = Field(default=0.6, ge=0, description="Score weight of the energy-side SLO terms")
    performance_weight: float = Field(default=0.4, ge=0, description="Score weight of the runtime/wait terms")
    min_improvement: float = Field(default=0.05, ge=0, description="Score gain a proposal needs to be kept")

    @model_validator(mode="after")
    def _ordered_bounds(self) -> OptimizerSettings:
        if not self.min_core_count <= self.small_step_core_cap <= self.max_core_count:
            raise ValueError("need min_core_count <= small_step_core_cap <= max_core_count")
        if self.energy_weight + self.performance_weight <= 0:
            raise ValueError("energy_weight + performance_weight must be > 0")
        return self
