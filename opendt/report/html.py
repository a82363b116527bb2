"""The report as one self-contained HTML page: the headline table, every figure embedded, definitions.

No script, no external reference (figures are ``data:`` URIs, the style sheet is inline): the page opens
from a file, offline, and can be mailed or archived as it is. It carries no generation date, so the same
runs give the same bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

from .runs import Run
from .series import Headline

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#111;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ccc}
.sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}thead th{background:#f2f2f2}
td.note{color:#555;text-align:left;font-size:.8rem}
figure{margin:1.5rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9rem;color:#333;max-width:900px}
code{font-size:.85rem;background:#f5f5f5;padding:0 .2rem}
"""


@dataclass
class EmbeddedFigure:
    name: str
    title: str
    caption: str
    mime: str
    data: bytes
    width_px: int
    height_px: int
    files: list[str]


def iso(ms: int | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(v: float | None, fmt: str, unit: str = "") -> str:
    return "—" if v is None else f"{v:{fmt}}{unit}"


ROWS: list[tuple[str, Callable[[Run, Headline], str], str]] = [
    ("run", lambda r, h: r.run_id, "run directory name"),
    (
        "span",
        lambda r, h: "—" if h.span_ms is None else f"{iso(h.span_ms[0])} → {iso(h.span_ms[1])}",
        "durable",
    ),
    ("windows", lambda r, h: f"{h.windows:,} ({h.windows_failed} failed)", "journaled"),
    ("MAPE", lambda r, h: _num(h.mape_pct, ".3f", " %"), "at the matched export instants"),
    (
        "energy error",
        lambda r, h: _num(h.energy_error_pct, "+.3f", " %"),
        "Σ twin / Σ measured − 1, same instants",
    ),
    ("matched instants", lambda r, h: f"{h.matched:,}", "twin instants with a measured sample"),
    ("energy (twin)", lambda r, h: _num(h.energy_kwh, ",.1f", " kWh"), "Σ energy_usage"),
    (
        "energy (measured)",
        lambda r, h: _num(h.measured_energy_kwh, ",.1f", " kWh"),
        "Σ power × sampling interval",
    ),
    ("carbon (twin)", lambda r, h: _num(h.carbon_kg, ",.1f", " kg CO₂"), "Σ carbon_emission"),
    ("jobs completed", lambda r, h: f"{h.jobs:,}", "Σ tasks_completed"),
    ("CPU work", lambda r, h: _num(h.cpu_work_thz_s, ",.0f", " THz·s"), "Σ cpu_work (10¹² cycles)"),
    (
        "efficiency",
        lambda r, h: _num(h.efficiency_thz_s_per_kwh, ",.1f", " THz·s/kWh"),
        "CPU work per twin kWh",
    ),
    ("wall time", lambda r, h: _num(r.wall_s, ",.1f", " s"), "of the whole run, where recorded"),
    ("Σ window latency", lambda r, h: _num(h.latency_sum_s, ",.1f", " s"), "the twin's time on its windows"),
    (
        "window latency p50 / p95 / max",
        lambda r, h: (
            " / ".join(_num(v, ".3f") for v in (h.latency_p50_s, h.latency_p95_s, h.latency_max_s)) + " s"
        ),
        "per window",
    ),
    (
        "calibration",
        lambda r, h: (
            f"{h.calibration_rounds} rounds, {h.calibration_applied} applied"
            if h.calibration_rounds
            else "off"
        ),
        "calibration.parquet",
    ),
    ("topology versions", lambda r, h: str(h.topology_versions), "in the journaled windows"),
    (
        "window / export interval",
        lambda r, h: f"{_num(h.window_s, 'g')} s / {_num(h.export_interval_s, 'g')} s",
        "",
    ),
    ("measured power from", lambda r, h: r.measured_source, ""),
]


def headline_table(runs: list[Run], heads: list[Headline]) -> str:
    cols = "".join(f"<th>{escape(r.label)}</th>" for r in runs)
    body = []
    for name, get, note in ROWS:
        cells = "".join(f"<td>{escape(get(r, h))}</td>" for r, h in zip(runs, heads, strict=True))
        body.append(f"<tr><th>{escape(name)}</th>{cells}<td class=note>{escape(note)}</td></tr>")
    return f"<table><thead><tr><th></th>{cols}<th></th></tr></thead><tbody>{''.join(body)}</tbody></table>"


def settings_table(runs: list[Run]) -> str:
    keys = sorted({k for r in runs for k in _flat(r.settings)})
    if not keys:
        return (
            "<p>No <code>run.json</code> in these run directories: the settings above are read from the run "
            "files.</p>"
        )
    cols = "".join(f"<th>{escape(r.label)}</th>" for r in runs)
    flat = [_flat(r.settings) for r in runs]
    rows = "".join(
        f"<tr><th>{escape(k)}</th>"
        + "".join(f"<td>{escape(str(f.get(k, '—')))}</td>" for f in flat)
        + "</tr>"
        for k in keys
    )
    return f"<table><thead><tr><th></th>{cols}</tr></thead><tbody>{rows}</tbody></table>"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def page(runs: list[Run], heads: list[Headline], figures: list[EmbeddedFigure], version: str) -> str:
    names = ", ".join(escape(r.label) for r in runs)
    figs = []
    for f in figures:
        uri = f"data:{f.mime};base64,{base64.b64encode(f.data).decode()}"
        files = ", ".join(f"<code>{escape(x)}</code>" for x in f.files)
        figs.append(
            f'<figure id="{escape(f.name)}"><h3>{escape(f.title)}</h3>'
            f'<img src="{uri}" alt="{escape(f.title)}" width="{f.width_px}" height="{f.height_px}">'
            f"<figcaption>{escape(f.caption)} Files: {files}.</figcaption></figure>"
        )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>OpenDT report: {names}</title><style>{CSS}</style></head><body>"
        f"<h1>OpenDT report</h1><p class=sub>{names}</p>"
        f"<h2>Headline numbers</h2>{headline_table(runs, heads)}"
        "<p>MAPE and energy error compare the twin's <code>power_draw</code> at its export instants with the "
        "measured sample at the same instant (measured &gt; 0), as <code>opendt calibrate</code> and "
        "<code>/api/power</code> do. A run in progress shows what it has made durable so far.</p>"
        f"<h2>Figures</h2>{''.join(figs)}"
        f"<h2>Settings</h2>{settings_table(runs)}"
        f"<p class=sub>Made by <code>opendt report</code> (OpenDT {escape(version)}); the data behind every "
        "figure is in <code>data/&lt;figure&gt;.csv</code>, the numbers above in "
        "<code>report.json</code>.</p>"
        "</body></html>\n"
    )
