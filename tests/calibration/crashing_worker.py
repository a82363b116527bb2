"""A candidate worker (the engine worker protocol) whose process dies when asked to run a candidate with
calibrationFactor 5.0: a real crashing subprocess, to check that a failing candidate does not stop a round."""

from __future__ import annotations

import os
from typing import Any

import polars as pl

from opendt.worker import warm
from opendt.worker.child import main

_real = warm.run_candidate


def _run_candidate(
    base: warm.RoundBase, topology: dict[str, Any], extra: dict[str, pl.DataFrame] | None = None
) -> pl.DataFrame:
    for cluster in topology["clusters"]:
        for host in cluster["hosts"]:
            if host.get("cpuPowerModel", {}).get("calibrationFactor") == 5.0:
                os._exit(3)
    return _real(base, topology, extra)


warm.run_candidate = _run_candidate

if __name__ == "__main__":
    raise SystemExit(main())
