"""``opendt report``: the paper's figures and a self-contained HTML page from run directories.

:func:`build_report` reads the runs (:mod:`.runs`: only what is durable, so a run in progress works too),
computes the series and headline numbers (:mod:`.series`), draws every figure (:mod:`.figures`,
:mod:`.figures_twin`; matplotlib, Agg, fixed paper size) and writes, under ``out``:

* ``<figure>.png`` / ``<figure>.svg`` for each requested image format;
* ``report.html`` (``html`` format): the headline table and every figure embedded;
* ``data/<figure>.csv``: the points of each figure (``series, run, timestamp_ms, time_utc, value``);
* ``report.json``: the headline numbers per run and the figures (files, pixel size, data file).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import polars as pl
import structlog

from . import figures, figures_twin
from .figures import Options, Plot
from .html import EmbeddedFigure, page
from .runs import Run, RunError, default_labels, expand, load_run
from .series import Headline, headline
from .style import DPI, freeze_layout, paper, render

__all__ = ["FORMATS", "Options", "Report", "RunError", "build_report", "load_runs"]

log = structlog.get_logger(component="report")

FORMATS = ("png", "svg", "html")
FIGURES = (
    figures.power_prediction,
    figures.mape_over_time,
    figures.sustainability,
    figures.job_completion,
    figures_twin.calibration,
    figures_twin.carbon,
    figures_twin.window_latency,
)
MIME = {"png": "image/png", "svg": "image/svg+xml"}


@dataclass
class Report:
    out: Path
    runs: list[Run]
    headlines: list[Headline]
    files: list[Path] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _version() -> str:
    try:
        return version("opendt")
    except PackageNotFoundError:
        return "unknown"


def load_runs(
    paths: list[Path],
    *,
    labels: list[str] | None = None,
    workload: Path | None = None,
    wall_s: list[float] | None = None,
) -> list[Run]:
    """The runs of ``paths`` (run directories, or data directories with runs under ``runs/``), labelled."""
    dirs = expand(paths)
    if labels and len(labels) != len(dirs):
        raise RunError(f"{len(labels)} labels for {len(dirs)} runs ({', '.join(d.name for d in dirs)})")
    if wall_s and len(wall_s) != len(dirs):
        raise RunError(f"{len(wall_s)} wall times for {len(dirs)} runs")
    cache: dict[Path, pl.DataFrame] = {}
    runs = [load_run(d, workload=workload, cache=cache) for d in dirs]
    for r, label in zip(runs, labels or default_labels(runs), strict=True):
        r.label = label
    for r, w in zip(runs, wall_s or [], strict=False):
        r.wall_s = w
    return runs


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _data_csv(plot: Plot) -> bytes:
    df = plot.data.with_columns(
        pl.from_epoch("timestamp_ms", "ms").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").alias("time_utc")
    ).select("series", "run", "timestamp_ms", "time_utc", "value")
    return df.write_csv().encode()


def build_report(
    runs: list[Run], out: Path, formats: tuple[str, ...] = ("png",), options: Options | None = None
) -> Report:
    """Draw every figure of ``runs`` into ``out`` in ``formats`` (``png``, ``svg``, ``html``)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"--format: {', '.join(unknown) or 'none given'}; choose from {', '.join(FORMATS)}")
    if not runs:
        raise RunError("no run to report on")
    opt = options or Options()
    t0 = time.perf_counter()
    report = Report(out, runs, [headline(r) for r in runs])
    (out / "data").mkdir(parents=True, exist_ok=True)
    images = [f for f in formats if f in MIME]
    embed = images[0] if images else "png"  # the page shows the first image format asked for
    embedded: list[EmbeddedFigure] = []
    listed: list[dict[str, Any]] = []
    t_draw = t_save = 0.0
    for make in FIGURES:
        t1 = time.perf_counter()
        with paper():
            plot = make(runs, opt)
        t2 = time.perf_counter()
        width, height = (round(v * DPI) for v in plot.fig.get_size_inches())
        freeze_layout(plot.fig)
        kinds = dict.fromkeys([*images, *([embed] if "html" in formats else [])])
        rendered = {kind: render(plot.fig, kind) for kind in kinds}  # once each: the page embeds the file
        files: list[str] = []
        for fmt in images:
            path = out / f"{plot.name}.{fmt}"
            _write(path, rendered[fmt])
            report.files.append(path)
            files.append(path.name)
        if "html" in formats:
            embedded.append(
                EmbeddedFigure(
                    plot.name, plot.title, plot.caption, MIME[embed], rendered[embed], width, height, files
                )
            )
        csv = out / "data" / f"{plot.name}.csv"
        _write(csv, _data_csv(plot))
        report.files.append(csv)
        listed.append(
            {
                "name": plot.name,
                "title": plot.title,
                "files": files,
                "data": f"data/{plot.name}.csv",
                "width_px": width,
                "height_px": height,
                "dpi": DPI,
                "points": plot.data.height,
            }
        )
        t_draw += t2 - t1
        t_save += time.perf_counter() - t2
        plot.fig.clear()
    if "html" in formats:
        html = page(runs, report.headlines, embedded, _version())
        _write(out / "report.html", html.encode())
        report.files.append(out / "report.html")
    report.manifest = {
        "runs": [
            {
                "label": r.label,
                "run_id": r.run_id,
                "path": str(r.path),
                "calibrated": r.calibrated,
                "measured_source": r.measured_source,
                "wall_s": r.wall_s,
                **h.as_dict(),
            }
            for r, h in zip(runs, report.headlines, strict=True)
        ],
        "figures": listed,
        "options": {"nfr_mape_pct": opt.nfr_mape_pct, "rolling_h": opt.rolling_h},
        "formats": list(formats),
        "html": "report.html" if "html" in formats else None,
    }
    _write(out / "report.json", json.dumps(report.manifest, indent=1).encode())
    report.files.append(out / "report.json")
    report.seconds = {"draw_s": t_draw, "save_s": t_save, "total_s": time.perf_counter() - t0}
    log.info(
        "report_written",
        out=str(out),
        runs=len(runs),
        figures=len(listed),
        formats=",".join(formats),
        seconds=round(report.seconds["total_s"], 3),
    )
    return report
