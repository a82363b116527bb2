"""Workload records (one row of the SURF-format files), used where single records travel (API, messages)."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Task(_Record):
    id: str
    submission_time: AwareDatetime
    duration: int = Field(ge=0, description="ms (OpenDC ignores it: a task runs Σ fragment durations)")
    cpu_count: int = Field(gt=0)
    cpu_capacity: float = Field(ge=0, description="MHz")
    mem_capacity: int = Field(ge=0, description="MB")


class Fragment(_Record):
    id: str
    duration: int = Field(ge=0, description="ms")
    cpu_count: int = Field(gt=0)
    cpu_usage: float = Field(ge=0, description="MHz for the whole task")


class PowerSample(_Record):
    timestamp: AwareDatetime
    power_draw: float = Field(ge=0, description="W")
    energy_usage: float = Field(ge=0, description="J in the sample interval")


class CarbonSample(_Record):
    timestamp: AwareDatetime
    carbon_intensity: float = Field(ge=0, description="gCO2/kWh")
