"""How every report figure looks: paper size, fonts, a colour-blind-safe palette, UTC date axes.

Figures are built with matplotlib's object API (``Figure``, no pyplot: no global state, no display; files
are rendered by the Agg backend) at a fixed size (:data:`WIDTH_IN` wide, the text width of a two-column
paper, at :data:`DPI`), so a PNG is exactly ``width_in × dpi`` by ``height_in × dpi`` pixels. Colours are
Okabe & Ito's palette (distinguishable with every common colour-vision deficiency), and each run also gets
its own line style, so the figures read in greyscale too. Output is deterministic (no dates in the files,
fixed SVG ids): the same runs give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import matplotlib as mpl
import matplotlib.dates as mdates
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

WIDTH_IN = 7.0
DPI = 200
MEASURED = "#000000"
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
"""Okabe & Ito: blue, vermillion, bluish green, reddish purple, orange, sky blue (black: the measurement)."""
STYLES = ("-", "--", "-.", ":")
THRESHOLD = "#E69F00"

# tick labels by level (years, months, days, hours, minutes, seconds): days as "07 Oct", hours as "06:00" and
# the first tick of a day as its date, so an axis always says which days it spans
DATE_FORMATS = ["%Y", "%b %Y", "%d %b", "%H:%M", "%H:%M", "%S.%f"]
DATE_ZERO_FORMATS = ["", "%Y", "%b %Y", "%d %b", "%d %b", "%H:%M"]
MEASURED_DERIVED = (0, (1, 1))
"""Line style of series derived from the measured energy (black, dotted: not the measurement itself)."""

RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # bundled with matplotlib: the same glyphs on every machine
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "timezone": "UTC",
    "svg.hashsalt": "opendt-report",
    "svg.fonttype": "path",
    "figure.constrained_layout.use": True,
}


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def line_style(i: int) -> str:
    return STYLES[i % len(STYLES)]


@contextmanager
def paper() -> Iterator[None]:
    """The report's rc settings while figures are built and saved."""
    with mpl.rc_context(RC):  # type: ignore[arg-type]
        yield


def figure(height_in: float, nrows: int = 1, ncols: int = 1, **grid: Any) -> tuple[Figure, list[Axes]]:
    """A figure of the report's width; its axes in a flat list (rows first)."""
    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=grid or None)
    return fig, [ax for row in axes for ax in row]


def times(ms: Any) -> np.ndarray[Any, np.dtype[np.datetime64]]:
    """Epoch ms → datetime64[ms] (UTC) for matplotlib."""
    return np.asarray(ms, dtype=np.int64).astype("datetime64[ms]")


def date_axis(ax: Axes, *, label: bool = True) -> None:
    """Dates in UTC, concise ticks; the axis label says so."""
    locator = mdates.AutoDateLocator(minticks=4, maxticks=9)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(  # type: ignore[no-untyped-call]
            locator, formats=DATE_FORMATS, zero_formats=DATE_ZERO_FORMATS, show_offset=False
        )
    )
    if label:
        ax.set_xlabel("time (UTC)")


def no_data(ax: Axes, reason: str, *, keep_x: bool = False) -> None:
    """Mark an empty panel with the reason (a run in progress, no measured power, no calibration …); its
    tick labels go (those of x stay with ``keep_x``: a time axis shared with panels that have data)."""
    ax.text(0.5, 0.5, reason, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=8)
    ax.tick_params(axis="y", left=False, labelleft=False)
    if not keep_x:
        ax.tick_params(axis="x", bottom=False, labelbottom=False)


def freeze_layout(fig: Figure) -> None:
    """Lay the figure out once (constrained layout) and keep that layout: every later render, PNG or SVG,
    then places everything the same (constrained layout run again starts from the previous positions)."""
    with paper():
        fig.draw_without_rendering()
    fig.set_layout_engine("none")


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as ``png`` or ``svg`` bytes (fixed size: no tight bounding box)."""
    buf = io.BytesIO()
    meta: dict[str, Any] = {"Date": None} if fmt == "svg" else {}
    with paper():
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=meta)
    return buf.getvalue()
