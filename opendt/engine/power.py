"""OpenDC's CPU power models (OPENDC_SEMANTICS §6.1), vectorized over hosts.

``u`` is the utilization ``min(demand / capacity, 1)``; every model is evaluated exactly as OpenDC's
``PowerModels`` does (mse as ``I + ((M − I) / 100) · (2u − u^r) · 100``, not clamped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from opendt.models.topology import PowerModel

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

KINDS = ("constant", "linear", "square", "cubic", "sqrt", "mse", "asymptotic")


@dataclass(frozen=True)
class PowerParams:
    """Per-host power-model parameters as parallel arrays (one entry per host)."""

    kind: npt.NDArray[np.int8]
    idle: F64
    max: F64
    power: F64
    factor: F64
    asym: F64
    dvfs: npt.NDArray[np.bool_]

    @staticmethod
    def from_models(models: list[PowerModel]) -> PowerParams:
        """Build the arrays from one pydantic ``PowerModel`` per host."""
        for m in models:
            if m.modelType == "asymptotic" and m.asymUtil <= 0:
                raise ValueError("asymptotic power model needs asymUtil > 0")
        return PowerParams(
            kind=np.array([KINDS.index(m.modelType) for m in models], dtype=np.int8),
            idle=np.array([m.idlePower for m in models], dtype=np.float64),
            max=np.array([m.maxPower for m in models], dtype=np.float64),
            power=np.array([m.power for m in models], dtype=np.float64),
            factor=np.array([m.calibrationFactor for m in models], dtype=np.float64),
            asym=np.array([m.asymUtil for m in models], dtype=np.float64),
            dvfs=np.array([m.dvfs for m in models], dtype=np.bool_),
        )

    def evaluate(self, host: I64, u: F64) -> F64:
        """Power (W) of ``host[i]`` at utilization ``u[i]`` (``u`` already capped to [0, 1])."""
        out = np.empty(u.shape, dtype=np.float64)
        kinds = self.kind[host]
        present = np.unique(kinds) if kinds.size else kinds
        for k in present.tolist():
            sel = kinds == k if present.size > 1 else slice(None)
            h = host[sel]
            uu = u[sel]
            out[sel] = _model(KINDS[k], uu, self, h)
        return out

    def idle_power(self) -> F64:
        """P(0) of every host: what a host without tasks draws."""
        hosts = np.arange(self.kind.size, dtype=np.int64)
        return self.evaluate(hosts, np.zeros(self.kind.size, dtype=np.float64))


def _model(kind: str, u: F64, p: PowerParams, h: I64) -> F64:
    idle = p.idle[h]
    span = p.max[h] - idle
    if kind == "constant":
        return p.power[h].copy()
    if kind in ("linear", "square", "cubic", "sqrt"):
        uc = np.clip(u, 0.0, 1.0)
        if kind == "linear":
            f = uc
        elif kind == "square":
            f = uc * uc
        elif kind == "cubic":
            f = uc * uc * uc
        else:
            f = np.sqrt(uc)
        return idle + span * f
    if kind == "mse":
        f = p.factor[h]
        expo = float(f[0]) if f.size and bool(np.all(f == f[0])) else f
        if isinstance(expo, float) and expo.is_integer() and 1.0 <= expo <= 8.0:
            powed = u.copy()
            for _ in range(int(expo) - 1):
                powed *= u  # repeated products: within 2 ulp of Math.pow, several times faster
        else:
            powed = np.power(u, expo)
        return idle + (span / 100.0) * (2.0 * u - powed) * 100.0
    a = p.asym[h]
    x = np.where(p.dvfs[h], u * u * u, u)
    return idle + span / 2.0 * (1.0 + x - np.exp(-x / a))
