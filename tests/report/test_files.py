"""What ``opendt report`` writes: every figure as PNG and SVG of the stated size, the data files, one
self-contained HTML page with every figure embedded, and the same bytes when run again."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from matplotlib import image

from opendt.report import build_report, load_runs

from .conftest import DEMO, FIGURES, CliReport, DemoRuns, opendt, opendt_env


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def assert_drawn(path: Path) -> None:
    """The image holds a drawing: many colours, and a fair share of pixels that are not background."""
    px = image.imread(path)[..., :3]
    colours = np.unique((px.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    ink = float((px.min(axis=2) < 0.9).mean())
    assert colours.shape[0] > 20, (path.name, colours.shape)
    assert ink > 0.02, (path.name, ink)


def test_every_figure_as_png_and_svg_of_the_stated_size(cli_report: CliReport) -> None:
    """1. The manifest lists the seven figures, each 7 in wide at 200 dpi; 2. each PNG is that many pixels and
    holds a drawing; 3. each SVG is well-formed XML of that size in points; 4. each has its data file."""
    figs = {f["name"]: f for f in cli_report.manifest["figures"]}
    assert tuple(figs) == FIGURES
    for name, f in figs.items():
        assert f["files"] == [f"{name}.png", f"{name}.svg"]
        assert (f["width_px"], f["dpi"]) == (1400, 200)
        assert f["height_px"] >= 400
        png = cli_report.out / f"{name}.png"
        assert png_size(png.read_bytes()) == (f["width_px"], f["height_px"])
        assert png.stat().st_size > 20_000
        assert_drawn(png)
        svg = ET.parse(cli_report.out / f"{name}.svg").getroot()
        assert svg.tag.endswith("svg")
        assert float(svg.attrib["width"].removesuffix("pt")) == f["width_px"] / 200 * 72
        assert abs(float(svg.attrib["height"].removesuffix("pt")) - f["height_px"] / 200 * 72) < 0.01
        assert len(ET.tostring(svg)) > 20_000
        data = (cli_report.out / f["data"]).read_text().splitlines()
        assert data[0] == "series,run,timestamp_ms,time_utc,value"
        assert len(data) - 1 == f["points"] > 0


def test_html_is_self_contained_with_every_figure_embedded(cli_report: CliReport) -> None:
    """report.html references nothing outside itself: no http(s) URL, no src other than data: URIs; it
    embeds the seven figures as PNGs of their stated size, and its table shows each run's MAPE."""
    html = (cli_report.out / "report.html").read_text()
    assert not re.search(r"https?://", html)
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == len(FIGURES)
    for src, f in zip(srcs, cli_report.manifest["figures"], strict=True):
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"))
        assert data == (cli_report.out / f"{f['name']}.png").read_bytes()
        assert f'width="{f["width_px"]}" height="{f["height_px"]}"' in html
    for run in cli_report.manifest["runs"]:
        assert f"{run['mape_pct']:.3f} %" in html
        assert run["label"] in html


def test_same_runs_give_the_same_bytes(cli_report: CliReport, demo_runs: DemoRuns, tmp_path: Path) -> None:
    """The report built again (in process, same inputs) writes byte-identical images, data, HTML and JSON."""
    runs = load_runs([demo_runs.uncalibrated, demo_runs.calibrated], workload=DEMO)
    again = build_report(runs, tmp_path / "again", ("png", "svg", "html"))
    names = sorted(p.relative_to(again.out) for p in again.files)
    assert names == sorted(p.relative_to(cli_report.out) for p in cli_report.out.rglob("*") if p.is_file())
    for rel in names:
        if rel.name == "report.json":  # holds the run paths, which are the same here too
            continue
        assert (again.out / rel).read_bytes() == (cli_report.out / rel).read_bytes(), rel
    assert (again.out / "report.json").read_text() == (cli_report.out / "report.json").read_text()


def test_bad_arguments_are_refused_with_a_message(demo_runs: DemoRuns, tmp_path: Path) -> None:
    """An unknown format is a usage error (exit 2); a path that holds no run, or labels that do not match
    the runs, exit 1 with one line naming the problem; nothing is written."""
    out = tmp_path / "out"
    bad_format = subprocess.run(
        opendt("report", demo_runs.calibrated, "--out", out, "--format", "png,pdf"),
        env=opendt_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad_format.returncode == 2
    assert "formats are png, svg, html" in bad_format.stderr
    no_run = subprocess.run(
        opendt("report", tmp_path, "--out", out),
        env=opendt_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert no_run.returncode == 1
    assert "not a run directory" in no_run.stderr
    labels = subprocess.run(
        opendt("report", demo_runs.calibrated, "--label", "a", "--label", "b", "--out", out),
        env=opendt_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert labels.returncode == 1
    assert "2 labels for 1 runs" in labels.stderr
    assert not out.exists()
