"""The provisioned Grafana dashboard (grafana/provisioning/dashboards/opendt.json) against the datasource.

The dashboard must point at our datasource (the uid of grafana/provisioning/datasources/opendt.yaml), ask
only for metrics /grafana/metrics lists, and each panel's query, built the way the plugin builds it (the
code editor's payload text with dashboard variables substituted in Grafana's JSON format, then parsed; the
dashboard's absolute time range; the panel's maxDataPoints and min interval; the ad hoc filters), must get
a non-empty answer that conforms to the plugin's unmodified OpenAPI file (README §12.3, strict profile).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import polars as pl
import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4

from opendt.api.app import serve_api
from opendt.api.http import parse_time
from opendt.api.readmodel import TwinView
from opendt.settings import ApiSettings
from opendt.twin.results import ResultStore, WindowRecord
from opendt.twin.status import TwinState

from .conftest import no_nan, utc

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
DASHBOARD = GRAFANA / "provisioning" / "dashboards" / "opendt.json"
PROVIDER = GRAFANA / "provisioning" / "dashboards" / "opendt.yaml"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "opendt.yaml"
T0 = 1_665_100_800_000  # 2022-10-07T00:00:00Z, inside the dashboard's range
WINDOW_MS = 300_000
FACTOR = "cpuPowerModel.calibrationFactor"


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def _datasource() -> dict[str, Any]:
    doc = yaml.safe_load(DATASOURCE.read_text(encoding="utf-8"))
    (ds,) = doc["datasources"]
    assert isinstance(ds, dict)
    return ds


def _panels() -> list[dict[str, Any]]:
    return list(_dashboard()["panels"])


def _duration_ms(text: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    assert m is not None, f"not a Grafana duration: {text!r}"
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2)]


def substitute(text: str, variables: dict[str, Any]) -> str:
    """Grafana's JSON variable format, as the plugin applies it to a code-mode payload: a single value is
    written as is (the template supplies the quotes), several values as a JSON array."""

    def value(m: re.Match[str]) -> str:
        v = variables[m.group(1) or m.group(2)]
        return v if isinstance(v, str) else json.dumps(v)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def plugin_request(dashboard: dict[str, Any], panel: dict[str, Any]) -> dict[str, Any]:
    """The /query body Grafana and the plugin send for ``panel`` with the dashboard's current settings."""
    variables = {
        v["name"]: v["current"]["value"] for v in dashboard["templating"]["list"] if v["type"] != "adhoc"
    }
    adhoc = [f for v in dashboard["templating"]["list"] if v["type"] == "adhoc" for f in v.get("filters", [])]
    frm = parse_time(dashboard["time"]["from"], "from")
    to = parse_time(dashboard["time"]["to"], "to")
    max_points = int(panel.get("maxDataPoints", 1000))
    interval_ms = max(_duration_ms(panel.get("interval", "1ms")), (to - frm) // max_points)
    targets = []
    for t in panel["targets"]:
        if t.get("hide"):
            continue
        raw = t.get("payload", "{}")
        payload = json.loads(substitute(raw, variables)) if isinstance(raw, str) else raw
        targets.append({**t, "payload": payload})
    return {
        "app": "dashboard",
        "requestId": f"SQR{panel['id']}",
        "timezone": dashboard.get("timezone", "browser"),
        "panelId": panel["id"],
        "dashboardUID": dashboard["uid"],
        "range": {"from": dashboard["time"]["from"], "to": dashboard["time"]["to"], "raw": dashboard["time"]},
        "rangeRaw": dashboard["time"],
        "interval": f"{interval_ms // 1000}s",
        "intervalMs": interval_ms,
        "maxDataPoints": max_points,
        "targets": targets,
        "scopedVars": {"__interval_ms": {"text": str(interval_ms), "value": interval_ms}},
        "startTime": to,
        "filters": adhoc,
    }


async def _view(tmp: Path) -> TwinView:
    """Two hours of a running twin: 24 windows, measured power every 30 s, three calibration rounds."""
    store = ResultStore(tmp / "run")
    store.load()
    for w in range(24):
        start = T0 + w * WINDOW_MS
        ts = [start + 150_000, start + 300_000]
        rows = pl.DataFrame(
            {
                "timestamp": utc(ts),
                "power_draw": [20_000.0 + 10 * w, 20_100.0 + 10 * w],
                "energy_usage": [3.0e6, 3.0e6],
                "carbon_intensity": [150.0 + w, 150.5 + w],
                "carbon_emission": [125.0, 126.0],
                "topology_version": [w // 8, w // 8],
                "window_start": utc([start, start]),
            }
        )
        rec = WindowRecord(start, start + WINDOW_MS, "ok", 2, 3, 30, 10, w // 8, 0.2 + w / 100, 0.1, 1)
        await store.commit(rec, rows)
    measured = pl.DataFrame(
        {"timestamp_ms": [T0 + 30_000 * j for j in range(1, 241)], "power_draw": [20_050.0] * 240}
    )
    rounds = [
        {"time_ms": T0 + 2_400_000 * r, "value": 1.0 + r / 10, "in_effect": {FACTOR: 1.0 + r / 10}}
        for r in (1, 2)
    ]
    return TwinView(
        store=store,
        measured=measured,
        calibration_view=lambda: {"enabled": True, "axes": [FACTOR]},
        calibration_series=lambda: rounds,
    )


@pytest.fixture
async def base(tmp_path: Path) -> AsyncIterator[str]:
    async with serve_api(TwinState(status="running"), ApiSettings(port=0), await _view(tmp_path)) as url:
        yield url


@pytest.fixture(scope="module")
def query_answer_validator(shared_dir: Path) -> OAS30Validator:
    """The unmodified upstream schema of a /query answer, ``$ref``s resolved in its own document."""
    spec = yaml.safe_load(
        (shared_dir / "grafana" / "simpod-json-datasource.openapi.yaml").read_text(encoding="utf-8")
    )
    registry = Registry().with_resource("urn:spec", DRAFT4.create_resource(spec))
    ref = "urn:spec#/paths/~1query/post/responses/200/content/application~1json/schema"
    return OAS30Validator({"$ref": ref}, registry=registry)


async def _post(base: str, path: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(base + "/grafana" + path, json=body) as r:
        assert r.content_type == "application/json"
        return r.status, json.loads(await r.read(), parse_constant=no_nan)


def test_dashboard_uses_our_datasource_everywhere() -> None:
    """Every panel, every target and the ad hoc filter variable name the provisioned datasource's uid and
    the plugin's type; panel ids are unique and every target has a refId unique in its panel."""
    ds = _datasource()
    want = {"type": ds["type"], "uid": ds["uid"]}
    assert ds["type"] == "simpod-json-datasource"
    dashboard = _dashboard()
    panels = dashboard["panels"]
    assert len(panels) >= 5
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert p["datasource"] == want, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == want, (p["title"], t["refId"])
            assert t["editorMode"] == "code"
            assert isinstance(t["payload"], str)  # README §6.3: provisioned payloads are JSON text
    adhoc = [v for v in dashboard["templating"]["list"] if v["type"] == "adhoc"]
    assert [v["datasource"] for v in adhoc] == [want]


def test_the_provider_reads_the_folder_compose_mounts() -> None:
    """The provider's path is where compose.yaml mounts the folder holding the dashboard JSON, and the
    datasource URL ends in /grafana without a trailing slash (README §2)."""
    (provider,) = yaml.safe_load(PROVIDER.read_text(encoding="utf-8"))["providers"]
    compose = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    mounts = [m.split(":") for m in compose["services"]["grafana"]["volumes"]]
    container_paths = []
    for host, container, *_ in mounts:
        local = (REPO / host).resolve()
        if DASHBOARD.is_relative_to(local):
            container_paths.append(Path(container) / DASHBOARD.relative_to(local))
    assert container_paths, "compose.yaml mounts no folder holding the dashboard"
    assert any(p.is_relative_to(provider["options"]["path"]) for p in container_paths)
    assert provider["type"] == "file"
    url = _datasource()["url"]
    assert url.endswith("/grafana")


async def test_every_panel_target_is_a_listed_metric(base: str) -> None:
    """Each target's metric is one /grafana/metrics lists, and each payload key is one of its payloads."""
    status, metrics = await _post(base, "/metrics", {})
    assert status == 200
    listed = {m["value"]: {p["name"] for p in m["payloads"]} for m in metrics}
    dashboard = _dashboard()
    for panel in dashboard["panels"]:
        for t in plugin_request(dashboard, panel)["targets"]:
            assert t["target"] in listed, (panel["title"], t["target"])
            assert set(t["payload"]) <= listed[t["target"]], (panel["title"], t["payload"])


@pytest.mark.parametrize("panel", _panels(), ids=lambda p: p["title"])
async def test_each_panel_query_gets_a_conformant_non_empty_answer(
    base: str, query_answer_validator: OAS30Validator, panel: dict[str, Any]
) -> None:
    """The panel's query as the plugin sends it answers 200 with a series for every target, valid against
    the unmodified upstream file, [value, ms] pairs ascending inside the range and within maxDataPoints."""
    body = plugin_request(_dashboard(), panel)
    status, answer = await _post(base, "/query", body)
    assert status == 200, answer
    assert [e.message for e in query_answer_validator.iter_errors(answer)] == []
    assert {el["refId"] for el in answer} == {t["refId"] for t in body["targets"]}
    frm, to = parse_time(body["range"]["from"], "from"), parse_time(body["range"]["to"], "to")
    for el in answer:
        points = el["datapoints"]
        assert 0 < len(points) <= body["maxDataPoints"]
        ts = [p[1] for p in points]
        assert ts == sorted(ts)
        assert all(frm <= t <= to for t in ts)
        assert all(math.isfinite(p[0]) for p in points)


async def test_the_adhoc_filter_variable_has_keys_and_values(base: str) -> None:
    """The dashboard's ad hoc filter variable is served: keys from /tag-keys, values from /tag-values, and a
    chosen filter is accepted by every panel's query."""
    status, keys = await _post(base, "/tag-keys", {})
    assert status == 200
    assert {k["text"] for k in keys} == {"source", "topology_version", "window_status"}
    status, values = await _post(base, "/tag-values", {"key": "topology_version"})
    assert (status, values) == (200, [{"text": "0"}, {"text": "1"}, {"text": "2"}])
    dashboard = _dashboard()
    for panel in dashboard["panels"]:
        body = plugin_request(dashboard, panel)
        body["filters"] = [{"key": "topology_version", "operator": "=", "value": "2"}]
        status, answer = await _post(base, "/query", body)
        assert status == 200, (panel["title"], answer)
