"""``opendt report RUN [RUN ...]``: the paper's figures and an HTML page from run directories.

The arguments are registered by :func:`add_parser` (the CLI's parser); the work is :mod:`opendt.report`,
imported only when the command runs (matplotlib is not loaded by the other commands).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _formats(v: str) -> tuple[str, ...]:
    from opendt.report import FORMATS

    out = tuple(dict.fromkeys(f.strip().lower() for f in v.split(",") if f.strip()))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"formats are {', '.join(FORMATS)} (comma-separated), got {v!r}")
    return out


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    rep = sub.add_parser(
        "report",
        parents=list(parents),
        help="figures (PNG/SVG) and a self-contained HTML page from run directories",
        description="Figures of one or more runs, overlaid and labelled (e.g. uncalibrated vs calibrated): "
        "power "
        "prediction, MAPE over time, sustainability, job completion, calibrated parameters, carbon, window "
        "latency; a run in progress shows what it has made durable so far.",
    )
    rep.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="run directory, a data dir with runs/, or a run id (a unique prefix is enough; as opendt runs "
        "lists them under --data-dir)",
    )
    rep.add_argument("--data-dir", type=Path, help="where run ids are looked up (default: data_dir)")
    rep.add_argument("--out", type=Path, default=Path("report"), help="output directory (default: ./report)")
    rep.add_argument(
        "--format", type=_formats, default=("png", "html"), help="png,svg,html (default: png,html)"
    )
    rep.add_argument("--label", action="append", help="label of each RUN, in order (default: (un)calibrated)")
    rep.add_argument(
        "--workload",
        type=Path,
        help="workload dir: its consumption.parquet is the measured power (runs without measured.parquet)",
    )
    rep.add_argument("--nfr-mape", type=float, default=10.0, metavar="PCT", help="MAPE threshold line (%%)")
    rep.add_argument("--rolling-h", type=float, default=6.0, metavar="H", help="MAPE-over-time window (h)")
    rep.add_argument(
        "--wall-s",
        type=float,
        action="append",
        metavar="S",
        help="wall time of each RUN, measured outside (s)",
    )


def resolve_runs(names: Sequence[Path], data_dir: Path) -> list[Path]:
    """Each RUN as given when it is a path that exists, else the run of that id (or unique prefix) under
    ``data_dir``, as ``runs show`` and ``serve --run`` take it."""
    from opendt.commands.runs import find_run

    return [p if p.exists() else find_run(data_dir, str(p)) for p in names]


def report_cli(args: argparse.Namespace, data_dir: Path) -> int:
    """Write the report; print one line per run (headline numbers), then where the files are."""
    from opendt.report import Options, build_report, load_runs

    if args.nfr_mape <= 0 or args.rolling_h <= 0:
        raise ValueError("--nfr-mape and --rolling-h must be > 0")
    paths = resolve_runs(args.runs, data_dir)
    runs = load_runs(paths, labels=args.label, workload=args.workload, wall_s=args.wall_s)
    report = build_report(runs, args.out, args.format, Options(args.nfr_mape, args.rolling_h))
    for r, h in zip(report.runs, report.headlines, strict=True):
        mape = "n/a (no measured power)" if h.mape_pct is None else f"{h.mape_pct:.3f} %"
        err = "" if h.energy_error_pct is None else f", energy error {h.energy_error_pct:+.3f} %"
        carbon = "unknown (no carbon intensity received)" if h.carbon_kg is None else f"{h.carbon_kg:,.1f} kg"
        sys.stdout.write(
            f"{r.label}: {r.run_id}: MAPE {mape} over {h.matched} instants{err}; {h.windows} windows "
            f"({h.windows_failed} failed); energy {h.energy_kwh:,.1f} kWh, carbon {carbon}, "
            f"{h.jobs:,} jobs, CPU work {h.cpu_work_thz_s:,.0f} THz·s\n"
        )
    figs = len(report.manifest["figures"])
    page = f"; open {args.out / 'report.html'}" if "html" in args.format else ""
    sys.stdout.write(
        f"{figs} figures ({', '.join(args.format)}) and data in {args.out} "
        f"in {report.seconds['total_s']:.1f} s{page}\n"
    )
    return 0
