"""Reading the daemon's JSON log lines in the bench scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def events(log_path: Path, name: str) -> list[dict[str, Any]]:
    """The records of event ``name`` in a JSON-lines log (other lines are skipped)."""
    out = []
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == name:
            out.append(rec)
    return out
