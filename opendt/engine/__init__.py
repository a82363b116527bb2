"""OpenDT's OpenDC-compatible simulation engine (see OPENDC_SEMANTICS.md and DESIGN.md §6–7).

Importing it loads numpy only (polars and pydantic are imported by the functions that need them), so
``python -m opendt.engine`` starts quickly.
"""

from .engine import Engine
from .simulate import SimulationResult, simulate

__all__ = ["Engine", "SimulationResult", "simulate"]
