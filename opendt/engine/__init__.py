"""OpenDT's OpenDC-compatible simulation engine (see OPENDC_SEMANTICS.md and DESIGN.md §6–7)."""

from .engine import Engine
from .simulate import SimulationResult, simulate

__all__ = ["Engine", "SimulationResult", "simulate"]
