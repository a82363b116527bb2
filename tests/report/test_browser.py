"""report.html in Debian's headless Chromium, opened from the file: every figure loads; a screenshot of the
page is saved to tests/artifacts/report.png. Skipped only without a Chromium binary (``make test`` installs
one where it can: .ci/install-chromium)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from .. import chromium
from .conftest import FIGURES, CliReport

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

IMAGES = """JSON.stringify(Array.from(document.images).map(i => ({
  id: i.closest('figure')?.id ?? null, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
  shown: i.getBoundingClientRect().width })))"""


async def test_report_html_in_headless_chromium(cli_report: CliReport, tmp_path: Path) -> None:
    """1. Chromium opens report.html from its file URL; 2. the page has one image per figure, in order, each
    loaded (complete, natural size = the manifest's pixels) and laid out; 3. the headline table has a column
    per run; 4. no console error or exception; 5. a full-page screenshot goes to tests/artifacts/report.png."""
    exe = chromium.binary()
    if exe is None:
        pytest.skip(
            f"no Chromium binary ({', '.join(chromium.NAMES)}) on PATH; .ci/install-chromium installs it"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    url = (cli_report.out / "report.html").resolve().as_uri()
    async with asyncio.timeout(180), chromium.page(exe, tmp_path) as cdp:
        await cdp.call("Runtime.enable")
        await cdp.call("Page.enable")
        await cdp.call(
            "Emulation.setDeviceMetricsOverride", width=1200, height=900, deviceScaleFactor=1, mobile=False
        )
        await cdp.call("Page.navigate", url=url)
        await cdp.wait_for(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'", "the page"
        )
        images = json.loads(await cdp.js(IMAGES))
        assert [i["id"] for i in images] == list(FIGURES)
        sizes = {f["name"]: (f["width_px"], f["height_px"]) for f in cli_report.manifest["figures"]}
        for img in images:
            assert img["complete"], img
            assert (img["w"], img["h"]) == sizes[img["id"]], img
            assert img["shown"] > 500, img
        columns = await cdp.js("document.querySelectorAll('table')[0].querySelectorAll('thead th').length")
        assert columns == 2 + len(cli_report.manifest["runs"])
        errors = [
            e
            for e in cdp.events
            if e["method"] == "Runtime.exceptionThrown"
            or (e["method"] == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")
        ]
        assert not errors, errors
        metrics = await cdp.call("Page.getLayoutMetrics")
        height = int(metrics["cssContentSize"]["height"]) + 1
        png = await cdp.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": 1200, "height": height, "scale": 1},
        )
    data = base64.b64decode(png["data"])
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 100_000
    shot.write_bytes(data)
