"""README facts a newcomer checks first (issue 27): the demo's length and window count, and the keys of
``GET /api/optimizer`` are those the code produces."""

from __future__ import annotations

import re

from opendt.api.schemas import OptimizerState
from opendt.settings import REPO_ROOT, Settings
from opendt.workload import load_workload

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_the_demo_is_described_as_long_as_it_is() -> None:
    w = load_workload(REPO_ROOT / "data" / "demo")
    assert w.consumption is not None
    first = int(w.tasks["submission_ms"].min())  # type: ignore[arg-type]
    last = max(int(w.fragments["submission_ms"].max()), int(w.consumption["timestamp_ms"].max()))  # type: ignore[arg-type]
    window_ms = Settings().windowing.window_s * 1000
    windows = last // window_ms - first // window_ms + 1
    hours = round((last - first) / 3_600_000)
    described = re.search(r"\*\*Demo workload\*\*[^:]*: (\d+) synthetic hours \((\d+) windows of", README)
    assert described is not None
    assert (int(described.group(1)), int(described.group(2))) == (hours, windows)
    assert "demo day" not in README
    assert "one synthetic day" not in README
    for claim in re.findall(r"demo[^|]*?\((\d+) h, (\d+) windows", README):
        assert (int(claim[0]), int(claim[1])) == (hours, windows), claim


def test_the_optimizer_row_names_the_keys_it_answers() -> None:
    row = next(line for line in README.splitlines() if line.startswith("| `GET /api/optimizer"))
    named = set(re.findall(r"`(\w+)`", row)) - {"limit"}
    assert named, row
    assert named <= set(OptimizerState.model_fields), sorted(named - set(OptimizerState.model_fields))
    assert "history" in named
