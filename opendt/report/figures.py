"""The paper's four figures: power prediction, MAPE over time, sustainability overview, job completion.

Each function takes the runs (overlaid, labelled) and returns a :class:`Plot`: the matplotlib figure and the
data it draws in long form (``series``, ``run``, ``timestamp_ms``, ``value``; one row per point), which the
report writes beside the images so every plotted number can be checked and re-plotted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import series as S
from .runs import Run
from .style import MEASURED, MEASURED_DERIVED, THRESHOLD, color, date_axis, figure, line_style, no_data, times

MEASURED_LABEL = "measured"


@dataclass
class Options:
    nfr_mape_pct: float = 10.0
    rolling_h: float = 6.0


@dataclass
class Plot:
    name: str
    title: str
    caption: str
    fig: Figure
    data: pl.DataFrame
    notes: list[str] = field(default_factory=list)


DATA_SCHEMA = {"series": pl.Utf8, "run": pl.Utf8, "timestamp_ms": pl.Int64, "value": pl.Float64}


def tidy(series: str, run: str, ts_ms: pl.Series, values: pl.Series) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "series": series,
            "run": run,
            "timestamp_ms": ts_ms.cast(pl.Int64),
            "value": values.cast(pl.Float64),
        },
        schema=DATA_SCHEMA,
    )


def stack(parts: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(parts) if parts else pl.DataFrame(schema=DATA_SCHEMA)


def measured_union(runs: list[Run], bucket_ms: int) -> pl.DataFrame:
    """The measured buckets of every run (the same datacenter: a bucket is taken from the first run that has
    it), so runs still in progress do not cut the measurement short."""
    parts = [S.measured_buckets(r, bucket_ms) for r in runs]
    parts = [p for p in parts if p.height]
    if not parts:
        return pl.DataFrame(
            schema={"timestamp_ms": pl.Int64, "power_w": pl.Float64, "energy_kwh": pl.Float64}
        )
    return pl.concat(parts).unique("timestamp_ms", keep="first", maintain_order=True).sort("timestamp_ms")


def hourly_xy(
    ts_ms: pl.Series, values: pl.Series
) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.float64]]:
    """Step points of an hourly series: each value held over its bucket [start, start + 1 h)."""
    y = values.cast(pl.Float64).to_numpy()
    return times(np.append(ts_ms.to_numpy(), int(ts_ms[-1]) + S.HOUR_MS)), np.append(y, y[-1])


def step_hourly(ax: Axes, ts_ms: pl.Series, values: pl.Series, **kw: object) -> None:
    if ts_ms.len():
        ax.step(*hourly_xy(ts_ms, values), where="post", **kw)  # type: ignore[arg-type]


def legend_above(fig: Figure, axes: list[Axes], ncols: int = 4) -> None:
    """One legend above the figure: every labelled line of the panels, once, in drawing order."""
    seen: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside upper center", ncols=min(ncols, len(seen)))


def power_prediction(runs: list[Run], opt: Options) -> Plot:
    """Measured vs twin power (kW, 5-min means) with the MAPE; below, the signed error of those means."""
    fig, (ax, err) = figure(4.2, 2, 1, height_ratios=[2.2, 1], hspace=0.05)
    err.sharex(ax)
    parts: list[pl.DataFrame] = []
    meas = measured_union(runs, S.FIVE_MIN_MS)
    if meas.height:
        ax.plot(
            times(meas["timestamp_ms"]), meas["power_w"] / 1e3, color=MEASURED, lw=0.9, label=MEASURED_LABEL
        )
        parts.append(tidy("power_5min_kw", MEASURED_LABEL, meas["timestamp_ms"], meas["power_w"] / 1e3))
    drawn = False
    for i, r in enumerate(runs):
        b = S.twin_buckets(r, S.FIVE_MIN_MS)
        if b.is_empty():
            continue
        drawn = True
        h = S.headline(r)
        mape = "" if h.mape_pct is None else f", MAPE {h.mape_pct:.2f} %"
        kw = {"color": color(i), "ls": line_style(i), "lw": 0.9}
        ax.plot(times(b["timestamp_ms"]), b["power_w"] / 1e3, label=f"twin: {r.label}{mape}", **kw)  # type: ignore[arg-type]
        parts.append(tidy("power_5min_kw", r.label, b["timestamp_ms"], b["power_w"] / 1e3))
        e = S.five_min_error(r)
        if e.height:
            err.plot(times(e["timestamp_ms"]), e["error_pct"], **kw)  # type: ignore[arg-type]
            parts.append(tidy("error_5min_pct", r.label, e["timestamp_ms"], e["error_pct"]))
    if not drawn and not meas.height:
        no_data(ax, "no durable window yet")
    else:
        ax.set_ylabel("power (kW)")
        ax.set_ylim(bottom=0)
        ax.tick_params(labelbottom=False)
        err.axhline(0, color=MEASURED, lw=0.6)
        for y in (opt.nfr_mape_pct, -opt.nfr_mape_pct):
            err.axhline(y, color=THRESHOLD, lw=0.8, ls=":")
        err.set_ylabel("error (%)")
        date_axis(err)
        legend_above(fig, [ax], 3)
        if not meas.height:
            no_data(err, "no measured power: no error", keep_x=True)
    return Plot(
        "power_prediction",
        "Power prediction",
        "Measured power (ground truth) and the twin's prediction over the run, 5-minute means in kW; the "
        "legend "
        "gives each run's MAPE over the matched export instants (the headline MAPE). Lower panel: the signed "
        f"error of the 5-minute means, (twin − measured) / measured, with the ±{opt.nfr_mape_pct:g} % NFR.",
        fig,
        stack(parts),
    )


def mape_over_time(runs: list[Run], opt: Options) -> Plot:
    """Rolling MAPE of each run, with the NFR threshold; the legend says how much of the time meets it."""
    fig, (ax,) = figure(2.8)
    parts: list[pl.DataFrame] = []
    for i, r in enumerate(runs):
        m = S.rolling_mape(r, opt.rolling_h)
        if m.is_empty():
            continue
        within = float((m["mape"] <= opt.nfr_mape_pct).cast(pl.Float64).mean() or 0.0) * 100.0  # type: ignore[arg-type]
        label = f"{r.label}: ≤ NFR {within:.0f} % of the time"
        ax.plot(times(m["timestamp_ms"]), m["mape"], color=color(i), ls=line_style(i), label=label)
        parts.append(tidy("rolling_mape_pct", r.label, m["timestamp_ms"], m["mape"]))
    if not parts:
        no_data(ax, "no matched instants (no measured power, or no durable window yet)")
    else:
        ax.axhline(opt.nfr_mape_pct, color=THRESHOLD, ls=":", lw=1.2, label=f"NFR {opt.nfr_mape_pct:g} %")
        ax.set_ylim(0, max(opt.nfr_mape_pct * 1.5, float(stack(parts)["value"].max() or 0) * 1.05))  # type: ignore[arg-type]
        ax.set_ylabel(f"MAPE (%), rolling {opt.rolling_h:g} h")
        date_axis(ax)
        legend_above(fig, [ax], 3)
    return Plot(
        "mape_over_time",
        "MAPE over time",
        f"MAPE of each run over the trailing {opt.rolling_h:g} h of matched instants (twin power_draw vs the "
        f"measured sample at the same instant), against the non-functional requirement of "
        f"{opt.nfr_mape_pct:g} %; the legend gives the share of instants at or under it.",
        fig,
        stack(parts),
    )


def _hourly(runs: list[Run]) -> list[pl.DataFrame]:
    return [S.twin_buckets(r, S.HOUR_MS) for r in runs]


def _per_measured_kwh(
    ax: Axes,
    first: pl.DataFrame | None,
    meas: pl.DataFrame,
    amount: pl.Expr,
    series: str,
    what: str,
    parts: list[pl.DataFrame],
) -> None:
    """Per hour, ``amount`` of the first run's hourly frame over the measured energy of that hour (hours with
    measured energy only), drawn dotted as derived from the measurement and added to ``parts``."""
    if first is None or not meas.height:
        return
    j = first.join(meas, on="timestamp_ms", how="inner", suffix="_m").filter(pl.col("energy_kwh_m") > 0)
    per_kwh = j.select(amount / pl.col("energy_kwh_m")).to_series()
    step_hourly(
        ax, j["timestamp_ms"], per_kwh, color=MEASURED, ls=MEASURED_DERIVED, label=f"{what} / measured energy"
    )
    parts.append(tidy(series, MEASURED_LABEL, j["timestamp_ms"], per_kwh))


def _finish_stacked(
    fig: Figure, axes: list[Axes], first: pl.DataFrame | None, ylabels: tuple[str, str, str]
) -> None:
    """Three stacked hourly panels: labelled from zero with one date axis and one legend, or "no data"."""
    if first is None:
        for a in axes:
            no_data(a, "no durable window yet" if a is axes[0] else "")
        return
    for a, label in zip(axes, ylabels, strict=True):
        a.set_ylabel(label)
        a.set_ylim(bottom=0)
    for a in axes[:2]:
        a.tick_params(labelbottom=False)
    date_axis(axes[2])
    legend_above(fig, axes)


def sustainability(runs: list[Run], opt: Options) -> Plot:
    """Power (kW), CPU work per hour (THz·s) and efficiency (THz·s per kWh), hourly; measured vs twin."""
    fig, axes = figure(5.6, 3, 1, hspace=0.05)
    for a in axes[1:]:
        a.sharex(axes[0])
    parts: list[pl.DataFrame] = []
    meas = measured_union(runs, S.HOUR_MS)
    hourly = _hourly(runs)
    if meas.height:
        step_hourly(
            axes[0], meas["timestamp_ms"], meas["power_w"] / 1e3, color=MEASURED, label=MEASURED_LABEL
        )
        parts.append(tidy("power_1h_kw", MEASURED_LABEL, meas["timestamp_ms"], meas["power_w"] / 1e3))
    for i, (r, h) in enumerate(zip(runs, hourly, strict=True)):
        if h.is_empty():
            continue
        kw = {"color": color(i), "ls": line_style(i)}
        work = h["work_ghz_s"] / 1e3
        eff = (h["work_ghz_s"] / 1e3) / h["energy_kwh"]
        step_hourly(axes[0], h["timestamp_ms"], h["power_w"] / 1e3, label=f"twin: {r.label}", **kw)
        step_hourly(axes[1], h["timestamp_ms"], work, **kw)
        step_hourly(axes[2], h["timestamp_ms"], eff, **kw)
        parts += [
            tidy("power_1h_kw", r.label, h["timestamp_ms"], h["power_w"] / 1e3),
            tidy("cpu_work_thz_s_per_h", r.label, h["timestamp_ms"], work),
            tidy("efficiency_thz_s_per_kwh", r.label, h["timestamp_ms"], eff),
        ]
    first = next((h for h in hourly if h.height), None)
    # the work the trace asked for, per measured kWh
    _per_measured_kwh(
        axes[2], first, meas, pl.col("work_ghz_s") / 1e3, "efficiency_thz_s_per_kwh", "work", parts
    )
    _finish_stacked(
        fig, axes, first, ("power (kW)", "CPU work\n(THz·s per h)", "efficiency\n(THz·s per kWh)")
    )
    return Plot(
        "sustainability",
        "Sustainability overview",
        "Hourly: mean power (kW; measured and twin); the CPU work the simulated hosts delivered "
        "(THz·s = 10¹² "
        "cycles, each host's demand capped at its capacity; ≈ TFLOP at one operation per cycle); efficiency, "
        "that work per kWh of the twin's energy, and per kWh of the measured energy (black).",
        fig,
        stack(parts),
    )


def job_completion(runs: list[Run], opt: Options) -> Plot:
    """Jobs completed per hour, energy per hour (kWh), jobs per kWh; measured energy where known."""
    fig, axes = figure(5.6, 3, 1, hspace=0.05)
    for a in axes[1:]:
        a.sharex(axes[0])
    parts: list[pl.DataFrame] = []
    meas = measured_union(runs, S.HOUR_MS)
    hourly = _hourly(runs)
    if meas.height:
        step_hourly(axes[1], meas["timestamp_ms"], meas["energy_kwh"], color=MEASURED, label=MEASURED_LABEL)
        parts.append(tidy("energy_kwh_per_h", MEASURED_LABEL, meas["timestamp_ms"], meas["energy_kwh"]))
    for i, (r, h) in enumerate(zip(runs, hourly, strict=True)):
        if h.is_empty():
            continue
        kw = {"color": color(i), "ls": line_style(i)}
        jpk = h["jobs"] / h["energy_kwh"]
        if i == 0:
            axes[0].fill_between(
                *hourly_xy(h["timestamp_ms"], h["jobs"]), step="post", color=color(i), alpha=0.2, lw=0
            )
        step_hourly(axes[0], h["timestamp_ms"], h["jobs"].cast(pl.Float64), label=f"twin: {r.label}", **kw)
        step_hourly(axes[1], h["timestamp_ms"], h["energy_kwh"], **kw)
        step_hourly(axes[2], h["timestamp_ms"], jpk, **kw)
        parts += [
            tidy("jobs_per_h", r.label, h["timestamp_ms"], h["jobs"].cast(pl.Float64)),
            tidy("energy_kwh_per_h", r.label, h["timestamp_ms"], h["energy_kwh"]),
            tidy("jobs_per_kwh", r.label, h["timestamp_ms"], jpk),
        ]
    first = next((h for h in hourly if h.height), None)
    _per_measured_kwh(axes[2], first, meas, pl.col("jobs"), "jobs_per_kwh", "jobs", parts)
    _finish_stacked(fig, axes, first, ("jobs completed\nper h", "energy\n(kWh per h)", "jobs per kWh"))
    return Plot(
        "job_completion",
        "Job completion",
        "Hourly: the tasks the twin completed (each counted once, in the hour it finished), the energy (kWh; "
        "measured in black), and jobs per kWh of the twin's energy and of the measured energy (black).",
        fig,
        stack(parts),
    )
