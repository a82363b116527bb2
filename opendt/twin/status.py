"""The twin's observable state: components write it, the API reads it (never the other way round)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Counters:
    """Counted outside any component's own stats (the daemon's status view adds the windows counts)."""

    malformed_messages: int = 0


@dataclass
class TwinState:
    status: str = "starting"
    run_id: str = ""
    started_at: float = field(default_factory=time.time)
    bootstrap_servers: str = ""
    api_url: str = ""
    workload: dict[str, Any] = field(default_factory=dict)
    watermark_ms: int | None = None
    replay: dict[str, Any] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    components: dict[str, str] = field(default_factory=dict)
    providers: dict[str, Callable[[], Any]] = field(default_factory=dict)
    """Live views published by components (replay progress, simulator stats, …), read at snapshot time; a
    view named like a field above (``counters``, ``watermark_ms``, ``replay``) replaces that field."""

    def watermark_or(self, default: int) -> int:
        """The current watermark (a live view when published), else ``default``."""
        view = self.providers.get("watermark_ms")
        value = view() if view is not None else self.watermark_ms
        return default if value is None else int(value)

    def snapshot(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "run_id": self.run_id,
            "uptime_s": round(time.time() - self.started_at, 3),
            "kafka": {"bootstrap_servers": self.bootstrap_servers},
            "api_url": self.api_url,
            "workload": self.workload,
            "watermark_ms": self.watermark_ms,
            "replay": self.replay,
            "counters": vars(self.counters).copy(),
            "components": dict(self.components),
            **{name: provide() for name, provide in self.providers.items()},
        }
