"""OpenDC's CPU power models (OPENDC_SEMANTICS §6.1), vectorized over hosts.

``u`` is the utilization ``min(demand / capacity, 1)``; every model is evaluated exactly as OpenDC's
``PowerModels`` does (mse as ``I + ((M − I) / 100) · (2u − u^r) · 100``, not clamped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def distinct(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The sorted distinct values of ``a`` (``np.unique`` without its first-call import of ``numpy.ma``)."""
    s = np.sort(a, axis=None)
    return s[np.r_[True, s[1:] != s[:-1]]] if s.size else s


class PowerModelLike(Protocol):
    """The fields of a power model (the pydantic ``PowerModel`` or the engine's ``PowerSpec``)."""

    @property
    def modelType(self) -> str: ...
    @property
    def idlePower(self) -> float: ...
    @property
    def maxPower(self) -> float: ...
    @property
    def power(self) -> float: ...
    @property
    def calibrationFactor(self) -> float: ...
    @property
    def asymUtil(self) -> float: ...
    @property
    def dvfs(self) -> bool: ...


class Model(NamedTuple):
    """One distinct parameter set (many hosts usually share it)."""

    kind: str
    idle: float
    max: float
    power: float
    factor: float
    asym: float
    dvfs: bool


@dataclass(frozen=True)
class PowerParams:
    """Per-host power models: ``group[h]`` indexes the distinct parameter sets in ``models``."""

    group: I64
    models: tuple[Model, ...]

    @staticmethod
    def from_models(models: list[PowerModelLike]) -> PowerParams:
        """Build the table from one power model per host."""
        index: dict[Model, int] = {}
        group = []
        for m in models:
            if m.modelType == "asymptotic" and m.asymUtil <= 0:
                raise ValueError("asymptotic power model needs asymUtil > 0")
            key = Model(
                m.modelType, m.idlePower, m.maxPower, m.power, m.calibrationFactor, m.asymUtil, bool(m.dvfs)
            )
            group.append(index.setdefault(key, len(index)))
        return PowerParams(group=np.array(group, dtype=np.int64), models=tuple(index))

    def evaluate(self, host: I64, u: F64) -> F64:
        """Power (W) of ``host[i]`` at utilization ``u[i]`` (``u`` already capped to [0, 1])."""
        if len(self.models) == 1:
            return _model(self.models[0], u)
        out = np.empty(u.shape, dtype=np.float64)
        gid = self.group[host]
        for g, model in enumerate(self.models):
            sel = gid == g
            if sel.any():
                out[sel] = _model(model, u[sel])
        return out

    def idle_power(self) -> F64:
        """P(0) of every host: what a host without tasks draws."""
        p0 = np.array([float(_model(m, np.zeros(1))[0]) for m in self.models])
        out: F64 = p0[self.group]
        return out


def _model(p: Model, u: F64) -> F64:
    """OpenDC's ``PowerModels`` formulas with scalar parameters."""
    span = p.max - p.idle
    if p.kind == "constant":
        return np.full(u.shape, p.power)
    if p.kind in ("linear", "square", "cubic", "sqrt"):
        uc = np.clip(u, 0.0, 1.0)
        if p.kind == "linear":
            f = uc
        elif p.kind == "square":
            f = uc * uc
        elif p.kind == "cubic":
            f = uc * uc * uc
        else:
            f = np.sqrt(uc)
        out: F64 = p.idle + span * f
        return out
    if p.kind == "mse":
        r = p.factor
        if r.is_integer() and 1.0 <= r <= 8.0:
            powed = u.copy()
            for _ in range(int(r) - 1):
                powed *= u  # repeated products: within 2 ulp of Math.pow, several times faster
        else:
            powed = np.power(u, r)
        out = p.idle + (span / 100.0) * (2.0 * u - powed) * 100.0
        return out
    x = u * u * u if p.dvfs else u
    out = p.idle + span / 2.0 * (1.0 + x - np.exp(-x / p.asym))
    return out
