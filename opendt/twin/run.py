"""Run identity: which run directory a twin writes to (``<data_dir>/runs/<run_id>/``)."""

from __future__ import annotations

import hashlib

import orjson

from opendt.settings import Settings
from opendt.workload import Workload


def run_id_for(settings: Settings, workload: Workload) -> str:
    """Deterministic: the same workload and twin configuration resume the same run directory."""
    key = orjson.dumps(
        [
            str(workload.path.resolve()),
            settings.windowing.window_s,
            settings.simulation.export_interval_s,
            settings.simulation.engine,
            workload.topology.to_json_dict(),
        ]
    )
    return f"{workload.meta.name}-{hashlib.sha1(key, usedforsecurity=False).hexdigest()[:10]}"
