"""The twin's own figures: calibrated parameters over time, carbon, and window latency."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from opendt.models.patch import leaf_value, parse_path, targets
from opendt.models.topology import parse_topology

from . import series as S
from .figures import MEASURED_LABEL, Options, Plot, legend_above, measured_union, stack, step_hourly, tidy
from .runs import Run
from .style import MEASURED, MEASURED_DERIVED, color, date_axis, figure, line_style, no_data, times


def _parameters(run: Run) -> pl.DataFrame:
    """Long form of the values in effect after each round, from the instant they apply: ``parameter``,
    ``timestamp_ms`` (the round's apply instant when its winner was applied, else the round's time),
    ``value``, ``applied``."""
    rows: list[tuple[str, int, float, bool]] = []
    cal = run.calibration
    if cal is not None:
        for rec in cal.sort("round").iter_rows(named=True):
            applied = rec["status"] == "applied"
            at = int(rec["apply_at_ms"] if applied else rec["time_ms"])
            for name, value in json.loads(rec["in_effect"] or "{}").items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    rows.append((name, at, float(value), applied))
    schema = {"parameter": pl.Utf8, "timestamp_ms": pl.Int64, "value": pl.Float64, "applied": pl.Boolean}
    return pl.DataFrame(rows, schema=schema, orient="row").sort(
        "parameter", "timestamp_ms", maintain_order=True
    )


UNITS = {"cpu.coreSpeed": "MHz", "cpuPowerModel.idlePower": "W", "cpuPowerModel.maxPower": "W",
         "cpuPowerModel.power": "W"}  # fmt: skip


def axis_label(runs: list[Run], name: str) -> str:
    """The parameter's leaf and unit. Whether the calibrator records it as the value or as a multiple of the
    physical value (a ``scale`` axis) is read from the run: the topology a round applied (``topologies/
    v<N>.json``) holds the value; "as recorded" when no run applied one."""
    leaf = name.rsplit(".", 1)[-1]
    unit = UNITS.get(parse_path(name).leaf, "") if _is_path(name) else ""
    for r in runs:
        for rec in (r.calibration if r.calibration is not None else pl.DataFrame()).iter_rows(named=True):
            value = json.loads(rec["in_effect"] or "{}").get(name)
            doc = r.path / "topologies" / f"v{rec['version']}.json"
            if rec["status"] != "applied" or not isinstance(value, int | float) or not doc.is_file():
                continue
            try:
                topo = parse_topology(json.loads(doc.read_text())["topology"])
                p = parse_path(name)
                ci, hi = targets(topo, p)[0]
                actual = leaf_value(topo.clusters[ci].hosts[hi], p.leaf)
            except (OSError, ValueError, KeyError, IndexError):
                continue
            if isinstance(actual, int | float) and abs(actual - value) <= 1e-9 * max(1.0, abs(actual)):
                return f"{leaf} ({unit or 'unitless'})"
            return f"{leaf} (× physical)"
    return f"{leaf} (as recorded)"


def _is_path(name: str) -> bool:
    try:
        parse_path(name)
    except ValueError:
        return False
    return True


def calibration(runs: list[Run], opt: Options) -> Plot:
    """One step line per calibrated parameter (a panel each), per calibrated run; dots mark applied rounds."""
    per_run = [(i, r, _parameters(r)) for i, r in enumerate(runs)]
    names = sorted({n for _, _, p in per_run for n in p["parameter"].unique().to_list()})
    fig, axes = figure(max(2.8, 0.8 + 1.6 * len(names)), max(1, len(names)), 1, hspace=0.05)
    parts: list[pl.DataFrame] = []
    if not names:
        no_data(axes[0], "no calibration round in these runs (calibration off, or none yet)")
    for ax, name in zip(axes, names, strict=False):
        for i, r, p in per_run:
            q = p.filter(pl.col("parameter") == name)
            if q.is_empty():
                continue
            end = r.span_ms[1] if r.span_ms is not None else int(q["timestamp_ms"].max())  # type: ignore[arg-type]
            ts = pl.concat([q["timestamp_ms"], pl.Series([max(end, int(q["timestamp_ms"].max()))])])  # type: ignore[arg-type]
            vals = pl.concat([q["value"], q["value"].tail(1)])
            step_hourly(ax, ts, vals, color=color(i), ls=line_style(i), label=r.label)
            hit = q.filter(pl.col("applied"))
            ax.plot(times(hit["timestamp_ms"]), hit["value"], "o", ms=2.5, color=color(i))
            parts.append(tidy(name, r.label, q["timestamp_ms"], q["value"]))
        ax.set_ylabel(axis_label(runs, name))
        ax.set_title(name, loc="left", fontsize=7, pad=2)
        if ax is not axes[len(names) - 1]:
            ax.tick_params(labelbottom=False)
    if names:
        for a in axes[1:]:
            a.sharex(axes[0])
        date_axis(axes[len(names) - 1])
        legend_above(fig, axes)
    return Plot(
        "calibration",
        "Calibrated parameters",
        "The value of each calibrated parameter in effect over time, one step line per run, from the instant "
        "a round's winner applies (dots: applied rounds); a parameter the calibrator scales is shown as a "
        "multiple of the physical value.",
        fig,
        stack(parts),
    )


def carbon(runs: list[Run], opt: Options) -> Plot:
    """Grid carbon intensity (gCO2/kWh) and the emission per hour (kg CO2), twin and measured energy."""
    fig, (top, bottom) = figure(4.2, 2, 1, hspace=0.05)
    bottom.sharex(top)
    parts: list[pl.DataFrame] = []
    hourly = [S.twin_buckets(r, S.HOUR_MS) for r in runs]
    meas = measured_union(runs, S.HOUR_MS)
    drawn_intensity = False
    for i, (r, h) in enumerate(zip(runs, hourly, strict=True)):
        if h.is_empty():
            continue
        if not drawn_intensity:  # one grid: the intensity is the same for every run of a workload
            a = r.agg
            top.step(times(a["timestamp_ms"]), a["carbon_intensity"].to_numpy(), where="pre", color=MEASURED)
            parts.append(
                tidy("carbon_intensity_gco2_per_kwh", r.label, a["timestamp_ms"], a["carbon_intensity"])
            )
            drawn_intensity = True
        step_hourly(
            bottom,
            h["timestamp_ms"],
            h["carbon_kg"],
            color=color(i),
            ls=line_style(i),
            label=f"twin: {r.label}",
        )
        parts.append(tidy("emission_kg_per_h", r.label, h["timestamp_ms"], h["carbon_kg"]))
    first = next((h for h in hourly if h.height), None)
    if first is not None and meas.height:
        j = first.join(meas, on="timestamp_ms", how="inner", suffix="_m")
        em = j["energy_kwh_m"] * j["intensity"] / 1000.0
        step_hourly(
            bottom,
            j["timestamp_ms"],
            em,
            color=MEASURED,
            ls=MEASURED_DERIVED,
            label="measured energy × intensity",
        )
        parts.append(tidy("emission_kg_per_h", MEASURED_LABEL, j["timestamp_ms"], em))
    if first is None:
        no_data(top, "no durable window yet")
        no_data(bottom, "")
    else:
        top.set_ylabel("intensity\n(gCO₂/kWh)")
        bottom.set_ylabel("emission\n(kg CO₂ per h)")
        top.set_ylim(bottom=0)
        bottom.set_ylim(bottom=0)
        top.tick_params(labelbottom=False)
        date_axis(bottom)
        legend_above(fig, [top, bottom], 3)
    return Plot(
        "carbon",
        "Carbon",
        "Carbon intensity of the grid the twin was given (gCO₂/kWh, at each export instant) and the emission "
        "per hour (kg CO₂): the twin's (∫ intensity × power) and the measured energy at the hour's "
        "intensity.",
        fig,
        stack(parts),
    )


def window_latency(runs: list[Run], opt: Options) -> Plot:
    """Per window: latency over trace time (dots, rolling 1 h p95 line), and its distribution (ECDF)."""
    fig, (ax, cdf) = figure(2.8, 1, 2, width_ratios=[3, 1])
    parts: list[pl.DataFrame] = []
    for i, r in enumerate(runs):
        w = r.windows.filter(pl.col("latency_s").is_not_null())
        if w.is_empty():
            continue
        lat = w["latency_s"]
        ax.plot(
            times(w["window_start_ms"]), lat.to_numpy(), ".", ms=2.5, color=color(i), alpha=0.45, mec="none"
        )
        p95 = (
            w.with_columns(pl.from_epoch("window_start_ms", "ms").alias("_t"))
            .select(pl.col("latency_s").rolling_quantile_by("_t", window_size="1h", quantile=0.95))
            .to_series()
        )
        s = np.sort(lat.to_numpy())
        label = f"{r.label}: p50 {np.percentile(s, 50):.3f} s, p95 {np.percentile(s, 95):.3f} s"
        ax.plot(times(w["window_start_ms"]), p95.to_numpy(), color=color(i), ls=line_style(i), label=label)
        cdf.step(s, np.arange(1, s.size + 1) / s.size, where="post", color=color(i), ls=line_style(i))
        parts += [
            tidy("latency_s", r.label, w["window_start_ms"], lat),
            tidy("latency_p95_1h_s", r.label, w["window_start_ms"], p95),
        ]
    if not parts:
        no_data(ax, "no durable window yet")
        no_data(cdf, "")
    else:
        ax.set_yscale("log")
        ax.set_ylabel("window latency (s)")
        date_axis(ax)
        cdf.set_xscale("log")
        cdf.set_xlabel("latency (s)")
        cdf.set_ylabel("share of windows")
        cdf.set_ylim(0, 1)
        legend_above(fig, [ax], 2)
    return Plot(
        "window_latency",
        "Window latency",
        "The twin's own performance: the wall time from taking a window to making it durable (simulation, "
        "results, journal; at --speed max also any wait for a calibration round), per window over trace time "
        "(dots; line: rolling 1 h 95th percentile), and its distribution (right).",
        fig,
        stack(parts),
    )
