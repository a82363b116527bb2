"""Progress of a long command: a bar on a terminal (percent of the trace, rate, ETA), periodic structured
log lines otherwise (``progress`` events with the same fields)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TextIO

import structlog

from opendt.log import StatusLine

log = structlog.get_logger(component="cli")

BAR_WIDTH = 28


def format_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@dataclass
class Sample:
    fraction: float | None
    """Share of the trace done, 0..1 (None when the end is unknown: a live stream)."""
    done: int
    """Units done (windows)."""
    total: int | None
    unit: str = "windows"


class Progress:
    """Renders :class:`Sample` s: a bar redrawn in place on a terminal, a ``progress`` log line every
    ``every_s`` otherwise. The rate and ETA come from the units done since the first sample."""

    def __init__(self, stream: TextIO, *, every_s: float = 5.0, label: str = "simulating") -> None:
        self.tty = stream.isatty()
        self.every_s = every_s
        self.label = label
        self._t0: float | None = None
        self._done0 = 0
        self._frac0 = 0.0
        self._last_line = 0.0

    def update(self, s: Sample, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._t0 is None:
            self._t0, self._done0, self._frac0 = now, s.done, s.fraction or 0.0
        elapsed = now - self._t0
        rate = (s.done - self._done0) / elapsed if elapsed > 0 else 0.0
        eta = None
        if s.fraction is not None and elapsed > 0 and s.fraction > self._frac0:
            eta = (1 - s.fraction) * elapsed / (s.fraction - self._frac0)
        if self.tty:
            StatusLine.show(self._bar(s, rate, eta))
        elif now - self._last_line >= self.every_s:
            self._last_line = now
            log.info(
                "progress",
                what=self.label,
                percent=None if s.fraction is None else round(100 * s.fraction, 1),
                done=s.done,
                total=s.total,
                unit=s.unit,
                rate_per_s=round(rate, 2),
                eta_s=None if eta is None else round(eta, 1),
            )

    def _bar(self, s: Sample, rate: float, eta: float | None) -> str:
        total = f"/{s.total}" if s.total else ""
        tail = f"{s.done}{total} {s.unit}  {rate:.1f}/s"
        if s.fraction is None:
            return f"{self.label}  {tail}"
        filled = round(BAR_WIDTH * min(1.0, s.fraction))
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        eta_text = "" if eta is None else f"  ETA {format_duration(eta)}"
        return f"{self.label} {bar} {100 * s.fraction:5.1f} %  {tail}{eta_text}"

    def close(self) -> None:
        if self.tty:
            StatusLine.clear()
