"""The Grafana JSON datasource under /grafana, over real loopback HTTP, checked against the plugin's OpenAPI.

Every answer goes through :class:`Client`, which checks: ``Content-Type: application/json``; a body that
Python parses without accepting ``NaN``/``Infinity``; a 200 body valid against the *unmodified* upstream
OpenAPI file (``shared/grafana/simpod-json-datasource.openapi.yaml``, the "strict profile" of the
README §12.3), except the table answers, which Grafana reads as rows of cells and the upstream file
cannot describe (its defect 1): those are checked against the file with README §12.2 overlay 1; a 4xx
body ``{"error": <text>, "field": <name>}``. Requests the plugin would send are checked against the same
file, so the fixtures stay honest.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import polars as pl
import pytest
import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate as validate_spec
from referencing import Registry
from referencing.jsonschema import DRAFT4

from opendt.api.app import serve_api
from opendt.api.grafana import METRICS
from opendt.api.readmodel import TwinView
from opendt.models.messages import iso_ms
from opendt.models.topology import parse_topology
from opendt.settings import ApiSettings
from opendt.twin.results import ResultStore, WindowRecord
from opendt.twin.status import TwinState
from opendt.twin.topology import TopologyBox

from .conftest import no_nan, utc

T0 = 1_665_100_800_000  # 2022-10-07T00:00:00Z
ROW_MS = 150_000
WINDOW_MS = 300_000
NAN, INF = float("nan"), float("inf")

# The simulated rows: k = 0..13 at T0 + 150 s·(k+1), two per 300 s window (window 7 failed, no rows).
SIM_T = [T0 + ROW_MS * (k + 1) for k in range(14)]
SIM_POWER = [NAN if k == 5 else 1000.0 + 50 * k for k in range(14)]
SIM_INTENSITY = [INF if k == 6 else 200.0 + k for k in range(14)]
SIM_EMISSION = [8.0 if k % 2 == 0 else 9.0 for k in range(14)]
SIM_VERSION = [0 if k // 2 < 4 else 1 for k in range(14)]
SIM_TASKS = [float(k % 3) for k in range(14)]
SIM_WORK = [100.0 + 10 * k for k in range(14)]  # GHz·s
SIM_JOULES = 150_000.0  # energy_usage of every row
# Measured power every 30 s: 1000 W, unknown (NaN) at T0 + 300 s.
MEAS_T = [T0 + 30_000 * j for j in range(1, 81)]
MEAS_POWER = [NAN if j == 10 else 1000.0 for j in range(1, 81)]
LATENCY = [0.5 + w for w in range(8)]
COMPUTE = [0.25 * (w + 1) for w in range(8)]
FACTOR, IDLE = "cpuPowerModel.calibrationFactor", "cpuPowerModel.idlePower"
ROUNDS: list[dict[str, Any]] = [
    {
        "time_ms": T0 + 600_000,
        "value": 1.0,
        "in_effect": {FACTOR: 1.0, IDLE: 100, "cpuPowerModel.modelType": "linear"},
    },
    {
        "time_ms": T0 + 1_200_000,
        "value": 1.1,
        "in_effect": {FACTOR: 1.1, IDLE: 100, "cpuPowerModel.modelType": "linear"},
    },
    {
        "time_ms": T0 + 1_800_000,
        "value": 1.25,
        "in_effect": {FACTOR: 1.25, IDLE: 120, "cpuPowerModel.modelType": "linear"},
    },
    {
        "time_ms": T0 + 2_100_000,
        "value": None,
        "in_effect": {FACTOR: NAN, IDLE: INF, "cpuPowerModel.modelType": "linear"},
    },
]
AXES = [FACTOR, IDLE, "cpuPowerModel.modelType"]
HOSTS = [{"count": 1, "cpu": {"coreCount": 8, "coreSpeed": 2000}, "memory": {"memorySize": 1000}}]
TOPO = parse_topology({"clusters": [{"name": "C01", "hosts": HOSTS}, {"name": "C02", "hosts": HOSTS}]})
DS = {"type": "simpod-json-datasource", "uid": "opendt"}


# -- the oracle ------------------------------------------------------------------------------------------


class Oracle:
    """Validators built from the upstream OpenAPI file (``$ref``s resolved in the document itself)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        validate_spec(spec)
        self.spec = spec
        table = copy.deepcopy(spec)  # README §12.2 overlay 1: table rows are rows of cells
        items = self._at(table, "/query", "response")["items"]["anyOf"]
        items[1]["properties"]["rows"]["items"] = {"type": "array", "items": {}}
        self._strict = self._registry(spec)
        self._table = self._registry(table)

    @staticmethod
    def _registry(doc: dict[str, Any]) -> Registry:
        registry: Registry = Registry().with_resource("urn:spec", DRAFT4.create_resource(doc))
        return registry

    @staticmethod
    def _at(doc: dict[str, Any], path: str, part: str) -> Any:
        op = doc["paths"][path]["post"]
        if part == "request":
            return op["requestBody"]["content"]["application/json"]["schema"]
        return op["responses"]["200"]["content"]["application/json"]["schema"]

    def errors(self, path: str, part: str, instance: Any, *, table: bool = False) -> list[str]:
        pointer = path.replace("/", "~1")
        body = "requestBody/content" if part == "request" else "responses/200/content"
        ref = f"urn:spec#/paths/{pointer}/post/{body}/application~1json/schema"
        v = OAS30Validator(
            {"$ref": ref},
            registry=self._table if table else self._strict,
            format_checker=oas30_format_checker,
        )
        return [e.message for e in v.iter_errors(instance)]

    def has(self, path: str, part: str) -> bool:
        op = self.spec["paths"][path]["post"]
        if part == "request":
            return "requestBody" in op
        return "content" in op["responses"]["200"]


@pytest.fixture(scope="session")
def oracle(shared_dir: Path) -> Oracle:
    spec_path = shared_dir / "grafana" / "simpod-json-datasource.openapi.yaml"
    if not spec_path.exists():
        pytest.skip(f"{spec_path} not found")
    return Oracle(yaml.safe_load(spec_path.read_text(encoding="utf-8")))


class Client:
    """Calls the served datasource and checks every answer (and every request meant to be the plugin's)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, oracle: Oracle) -> None:
        self.session, self.base, self.oracle = session, base, oracle

    async def get(self, path: str) -> tuple[int, Any]:
        # the plugin sends the JSON content type on its GET too
        headers = {"Content-Type": "application/json"}
        async with self.session.get(self.base + path, headers=headers) as r:
            return r.status, self._read(r.content_type, await r.read())

    async def post(
        self, path: str, body: Any = None, *, raw: bytes | None = None, plugin: bool = True
    ) -> tuple[int, Any]:
        """POST ``body`` (as JSON) or ``raw`` bytes to ``/grafana<path>``; ``plugin``: the request is one the
        plugin could send, so it must itself conform to the spec."""
        spec_path = path if path in self.oracle.spec["paths"] else None
        if plugin and body is not None and spec_path and self.oracle.has(spec_path, "request"):
            assert self.oracle.errors(spec_path, "request", body) == [], "the test's request breaks the spec"
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.base + "/grafana" + path, data=data, headers=headers) as r:
            status, answer = r.status, self._read(r.content_type, await r.read())
        if status == 200:
            table = path == "/query" and any(el.get("type") == "table" for el in answer)
            assert spec_path is not None
            if self.oracle.has(spec_path, "response"):
                assert self.oracle.errors(spec_path, "response", answer, table=table) == []
        else:
            assert 400 <= status < 500, (status, answer)
            assert isinstance(answer, dict)
            assert isinstance(answer["error"], str)
            assert answer["error"]
        return status, answer

    @staticmethod
    def _read(content_type: str, raw: bytes) -> Any:
        assert content_type == "application/json"
        return json.loads(raw, parse_constant=no_nan)


# -- the twin --------------------------------------------------------------------------------------------


async def make_store(tmp: Path) -> ResultStore:
    store = ResultStore(tmp / "run")
    store.load()
    for w in range(8):
        start = T0 + w * WINDOW_MS
        ks = [k for k in range(14) if k // 2 == w]
        rows = pl.DataFrame(
            {
                "timestamp": utc([SIM_T[k] for k in ks]),
                "power_draw": pl.Series([SIM_POWER[k] for k in ks], dtype=pl.Float64),
                "energy_usage": pl.Series([SIM_JOULES for _ in ks], dtype=pl.Float64),
                "carbon_intensity": pl.Series([SIM_INTENSITY[k] for k in ks], dtype=pl.Float64),
                "carbon_emission": pl.Series([SIM_EMISSION[k] for k in ks], dtype=pl.Float64),
                "topology_version": pl.Series([SIM_VERSION[k] for k in ks], dtype=pl.Int64),
                "tasks_completed": pl.Series([int(SIM_TASKS[k]) for k in ks], dtype=pl.Int64),
                "cpu_work": pl.Series([SIM_WORK[k] for k in ks], dtype=pl.Float64),
                "window_start": utc([start for _ in ks]),
            }
        )
        version = 0 if w < 4 else 1
        status = "failed" if w == 7 else "ok"
        rec = WindowRecord(
            start, start + WINDOW_MS, status, len(ks), 1, 10, 10, version, LATENCY[w], COMPUTE[w], 1
        )
        await store.commit(rec, rows)
    return store


def make_view(store: ResultStore | None) -> TwinView:
    measured = pl.DataFrame({"timestamp_ms": MEAS_T, "power_draw": MEAS_POWER})
    return TwinView(
        store=store,
        measured=measured,
        box=TopologyBox(TOPO),
        calibration_view=lambda: {"enabled": True, "axes": AXES, "rounds": len(ROUNDS)},
        calibration_series=lambda: [dict(r) for r in ROUNDS],
    )


def served(view: TwinView, status: str = "running") -> AbstractAsyncContextManager[str]:
    """The API (Grafana routes included) on a free loopback port."""
    return serve_api(TwinState(status=status), ApiSettings(port=0, max_body_bytes=100_000), view)


@asynccontextmanager
async def client_for(view: TwinView, oracle: Oracle, status: str = "running") -> AsyncIterator[Client]:
    async with served(view, status) as base, aiohttp.ClientSession() as session:
        yield Client(session, base, oracle)


@pytest.fixture
async def client(tmp_path: Path, oracle: Oracle) -> AsyncIterator[Client]:
    async with client_for(make_view(await make_store(tmp_path)), oracle) as c:
        yield c


@pytest.fixture
async def empty_client(oracle: Oracle) -> AsyncIterator[Client]:
    async with client_for(TwinView(), oracle) as c:
        yield c


def grafana_query(
    targets: list[dict[str, Any]],
    *,
    frm: int = T0,
    to: int = T0 + 2_400_000,
    max_points: int = 1000,
    interval_ms: int = 300_000,
    **extra: Any,
) -> dict[str, Any]:
    """A /query body as Grafana 11 sends it through the plugin (README §6.2), extra fields included."""
    return {
        "app": "dashboard",
        "requestId": "SQR103",
        "timezone": "browser",
        "panelId": 2,
        "dashboardUID": "opendt",
        "range": {"from": iso_ms(frm), "to": iso_ms(to), "raw": {"from": "now-6h", "to": "now"}},
        "rangeRaw": {"from": "now-6h", "to": "now"},
        "interval": "5m",
        "intervalMs": interval_ms,
        "maxDataPoints": max_points,
        "targets": [
            {"refId": t.get("refId", chr(65 + i)), "datasource": DS, "editorMode": "code", "payload": {}, **t}
            for i, t in enumerate(targets)
        ],
        "scopedVars": {
            "__interval": {"text": "5m", "value": "5m"},
            "__interval_ms": {"text": "300000", "value": 300000},
        },
        "startTime": T0 + 2_400_123,
        "filters": [],
        **extra,
    }


def expected(
    times: list[int], values: list[float], frm: int, to: int, bucket: int, how: str = "mean"
) -> list[list[Any]]:
    """Reference bucketing of the raw lists: finite values in [frm, to], buckets of ``bucket`` from ``frm``."""
    groups: dict[int, list[float]] = {}
    for t, v in zip(times, values, strict=True):
        if frm <= t <= to and math.isfinite(v):
            groups.setdefault(frm + (t - frm) // bucket * bucket, []).append(v)
    aggs: dict[str, Callable[[list[float]], float]] = {
        "mean": lambda vs: sum(vs) / len(vs),
        "max": max,
        "min": min,
        "sum": sum,
    }
    agg = aggs[how]
    return [[pytest.approx(agg(vs)), t] for t, vs in sorted(groups.items())]


def series(answer: list[dict[str, Any]], ref: str) -> list[dict[str, Any]]:
    return [el for el in answer if el.get("refId") == ref]


def check_timeseries(answer: Any, refs: set[str], frm: int, to: int, max_points: int) -> None:
    """What the schema cannot say: refIds echoed, [value, ms] pairs, ascending, inside the range, capped."""
    assert isinstance(answer, list)
    for el in answer:
        assert el["refId"] in refs
        ts = [p[1] for p in el["datapoints"]]
        assert ts == sorted(ts)
        assert len(set(ts)) == len(ts)
        assert all(isinstance(t, int) and frm <= t <= to and t > 10**12 for t in ts)
        assert all(isinstance(p[0], float | int) and math.isfinite(p[0]) for p in el["datapoints"])
        assert 0 < len(ts) <= max_points


# -- health and discovery ---------------------------------------------------------------------------------


def test_spec_file_is_valid_openapi(oracle: Oracle) -> None:
    """The copied upstream file is a valid OpenAPI 3.0 document (so it can serve as the oracle)."""
    assert oracle.spec["openapi"] == "3.0.3"
    assert set(oracle.spec["paths"]) == {
        "/",
        "/metrics",
        "/metric-payload-options",
        "/query",
        "/variable",
        "/tag-keys",
        "/tag-values",
    }


async def test_health_is_exactly_200_on_both_paths(client: Client) -> None:
    """Save & test: GET /grafana (the datasource URL, no slash) and GET /grafana/ both answer 200 JSON."""
    for path in ("/grafana", "/grafana/"):
        status, body = await client.get(path)
        assert status == 200
        assert body == {"status": "ok", "twin": "running"}


async def test_health_is_503_with_the_plugin_error_shape_when_the_twin_failed(oracle: Oracle) -> None:
    """A failed twin makes Save & test fail with {"error": {"code", "message"}}, which the plugin displays."""
    async with client_for(TwinView(), oracle, status="failed") as c:
        status, body = await c.get("/grafana")
    assert status == 503
    assert body["error"]["code"] == "TWIN_FAILED"
    assert "failed" in body["error"]["message"]


async def test_metrics_lists_every_metric_with_its_payloads(client: Client) -> None:
    """/metrics answers the same full list to the code editor ({}), the builder and an empty body."""
    want = {
        "power_measured",
        "power_simulated",
        "carbon_intensity",
        "carbon_emission",
        "mape",
        "calibration_parameter",
        "window_latency",
        "tasks_completed",
        "cpu_work",
        "efficiency",
        "engine_divergence",
    }
    answers = []
    for body in ({}, {"metric": "power_measured", "payload": {"aggregation": "max"}}, None):
        status, answer = await client.post("/metrics", body)
        assert status == 200
        answers.append(answer)
    assert answers[0] == answers[1] == answers[2]
    metrics = {m["value"]: m for m in answers[0]}
    assert set(metrics) == want
    for m in metrics.values():
        assert m["label"]
        names = [p["name"] for p in m["payloads"]]
        assert "format" in names
        for p in m["payloads"]:
            assert p["type"] in ("select", "multi-select")
    agg = next(p for p in metrics["power_measured"]["payloads"] if p["name"] == "aggregation")
    assert [o["value"] for o in agg["options"]] == ["mean", "max", "min"]
    param = next(p for p in metrics["calibration_parameter"]["payloads"] if p["name"] == "parameter")
    assert param["type"] == "multi-select"
    assert "options" not in param  # the plugin asks /metric-payload-options for them


async def test_metric_payload_options_static_and_from_the_twin(client: Client) -> None:
    """Options come from the metric's choices, or (calibrated parameters) from the calibrator's axes."""
    status, answer = await client.post(
        "/metric-payload-options", {"metric": "carbon_emission", "payload": {}, "name": "aggregation"}
    )
    assert status == 200
    assert [o["value"] for o in answer] == ["sum", "mean", "max", "min"]
    status, answer = await client.post(
        "/metric-payload-options", {"metric": "calibration_parameter", "payload": {}, "name": "parameter"}
    )
    assert status == 200
    assert [o["value"] for o in answer] == AXES
    status, answer = await client.post("/metric-payload-options", None)
    assert (status, answer) == (200, [])


@pytest.mark.parametrize(
    ("body", "field", "word"),
    [
        ({"metric": "power_nope", "payload": {}, "name": "aggregation"}, "metric", "power_nope"),
        ({"metric": "mape", "payload": {}, "name": "aggregation"}, "name", "aggregation"),
        ({"metric": 5, "payload": {}, "name": "aggregation"}, "metric", "5"),
    ],
)
async def test_metric_payload_options_bad_input(
    client: Client, body: dict[str, Any], field: str, word: str
) -> None:
    """An unknown metric, or a payload name the metric does not have, is a 400 naming the field."""
    status, answer = await client.post("/metric-payload-options", body, plugin=False)
    assert status == 400
    assert answer["field"] == field
    assert word in answer["error"]


# -- /query: time series ----------------------------------------------------------------------------------


async def test_query_power_measured_and_simulated(client: Client) -> None:
    """A full Grafana body (unknown fields included): one series per target, refIds echoed, values the
    bucket means of the finite samples, NaN samples left out."""
    body = grafana_query([{"target": "power_measured"}, {"target": "power_simulated"}])
    status, answer = await client.post("/query", body)
    assert status == 200
    frm, to = T0, T0 + 2_400_000
    check_timeseries(answer, {"A", "B"}, frm, to, 1000)
    assert [el["target"] for el in answer] == ["Measured power", "Simulated power"]
    assert [el["unit"] for el in answer] == ["watt", "watt"]
    assert series(answer, "A")[0]["datapoints"] == expected(MEAS_T, MEAS_POWER, frm, to, 300_000)
    sim = series(answer, "B")[0]["datapoints"]
    assert sim == expected(SIM_T, SIM_POWER, frm, to, 300_000)
    # spot checks by hand: bucket 1 holds rows 1 and 2, bucket 3 the NaN row 5 and row 6
    assert sim[1] == [1075.0, T0 + 300_000]
    assert sim[3] == [1300.0, T0 + 900_000]


async def test_query_respects_the_range(client: Client) -> None:
    """Only samples with from <= t <= to count; both ends inclusive; a range without data answers []."""
    frm, to = T0 + 450_000, T0 + 1_050_000
    body = grafana_query([{"target": "power_simulated"}], frm=frm, to=to, interval_ms=150_000)
    status, answer = await client.post("/query", body)
    assert status == 200
    check_timeseries(answer, {"A"}, frm, to, 1000)
    assert answer[0]["datapoints"] == [
        [1100.0, frm],
        [1150.0, frm + 150_000],
        [1200.0, frm + 300_000],
        [1300.0, frm + 600_000],
    ]
    status, answer = await client.post(
        "/query", grafana_query([{"target": "power_simulated"}], frm=T0 - 10**7, to=T0)
    )
    assert (status, answer) == (200, [])


async def test_query_honours_max_data_points_and_interval(client: Client) -> None:
    """bucket = max(intervalMs, ceil((to − from + 1) / maxDataPoints)): maxDataPoints caps the points, and a
    larger intervalMs widens the buckets."""
    frm, to = T0, T0 + 2_400_000
    body = grafana_query([{"target": "power_measured"}], frm=frm, to=to, max_points=5, interval_ms=1000)
    status, answer = await client.post("/query", body)
    assert status == 200
    check_timeseries(answer, {"A"}, frm, to, 5)
    bucket = -(-(to - frm + 1) // 5)
    assert answer[0]["datapoints"] == expected(MEAS_T, MEAS_POWER, frm, to, bucket)
    assert len(answer[0]["datapoints"]) == 5
    body = grafana_query([{"target": "power_measured"}], frm=frm, to=to, max_points=1000, interval_ms=600_000)
    status, answer = await client.post("/query", body)
    assert [p[1] for p in answer[0]["datapoints"]] == [T0 + 600_000 * b for b in range(5)]
    # no hints at all: 60 s buckets (README §6.5 default)
    body = grafana_query([{"target": "power_simulated"}])
    del body["intervalMs"], body["maxDataPoints"]
    status, answer = await client.post("/query", body)
    assert status == 200
    assert answer[0]["datapoints"] == expected(SIM_T, SIM_POWER, frm, to, 60_000)


@pytest.mark.parametrize(
    ("target", "how", "times", "values"),
    [
        ("power_simulated", "max", SIM_T, SIM_POWER),
        ("power_simulated", "min", SIM_T, SIM_POWER),
        ("carbon_intensity", "mean", SIM_T, SIM_INTENSITY),
        ("carbon_emission", "sum", SIM_T, SIM_EMISSION),
        ("carbon_emission", "max", SIM_T, SIM_EMISSION),
    ],
)
async def test_query_aggregations(
    client: Client, target: str, how: str, times: list[int], values: list[float]
) -> None:
    """The aggregation payload picks the per-bucket statistic; carbon emission sums by default."""
    payload = (
        {}
        if (target, how) in {("carbon_emission", "sum"), ("carbon_intensity", "mean")}
        else {"aggregation": how}
    )
    frm, to = T0, T0 + 2_400_000
    status, answer = await client.post(
        "/query", grafana_query([{"target": target, "payload": payload}], interval_ms=600_000)
    )
    assert status == 200
    check_timeseries(answer, {"A"}, frm, to, 1000)
    assert answer[0]["datapoints"] == expected(times, values, frm, to, 600_000, how)


async def test_query_activity_and_efficiency(client: Client) -> None:
    """Issue 19: tasks completed and CPU work are summed per bucket by default; efficiency is each bucket's
    work (or tasks) over its simulated energy in kWh, checked against the raw lists."""
    frm, to = T0, T0 + 2_400_000
    targets: list[dict[str, Any]] = [
        {"target": "tasks_completed", "refId": "T"},
        {"target": "cpu_work", "refId": "W"},
        {"target": "efficiency", "refId": "E"},
        {"target": "efficiency", "refId": "J", "payload": {"of": "tasks"}},
    ]
    status, answer = await client.post("/query", grafana_query(targets, interval_ms=600_000))
    assert status == 200
    check_timeseries(answer, {"T", "W", "E", "J"}, frm, to, 1000)
    assert series(answer, "T")[0]["datapoints"] == expected(SIM_T, SIM_TASKS, frm, to, 600_000, "sum")
    assert series(answer, "W")[0]["datapoints"] == expected(SIM_T, SIM_WORK, frm, to, 600_000, "sum")
    kwh: dict[int, float] = {}
    for t in SIM_T:
        kwh[frm + (t - frm) // 600_000 * 600_000] = (
            kwh.get(frm + (t - frm) // 600_000 * 600_000, 0.0) + SIM_JOULES / 3.6e6
        )
    for ref, values in (("E", SIM_WORK), ("J", SIM_TASKS)):
        sums: dict[int, float] = {}
        for t, v in zip(SIM_T, values, strict=True):
            b = frm + (t - frm) // 600_000 * 600_000
            sums[b] = sums.get(b, 0.0) + v
        want = [[pytest.approx(sums[b] / kwh[b]), b] for b in sorted(sums)]
        assert series(answer, ref)[0]["datapoints"] == want
    status, answer = await client.post(
        "/query",
        grafana_query(
            [{"target": "tasks_completed", "payload": {"aggregation": "max"}}], interval_ms=600_000
        ),
    )
    assert status == 200
    assert answer[0]["datapoints"] == expected(SIM_T, SIM_TASKS, frm, to, 600_000, "max")


async def test_query_mape_per_bucket_and_cumulative(client: Client) -> None:
    """MAPE compares simulated with measured power at the instants both have (row k: 5·k %); rows where
    either side is NaN are left out; the cumulative mode is the MAPE since range.from."""
    targets: list[dict[str, Any]] = [
        {"target": "mape"},
        {"target": "mape", "payload": {"mode": "cumulative"}},
    ]
    status, answer = await client.post("/query", grafana_query(targets, interval_ms=600_000))
    assert status == 200
    check_timeseries(answer, {"A", "B"}, T0, T0 + 2_400_000, 1000)
    ape = {
        SIM_T[k]: 5.0 * k for k in range(14) if k not in (1, 5)
    }  # row 1: measured NaN; row 5: simulated NaN
    assert series(answer, "A")[0]["datapoints"] == expected(
        list(ape), list(ape.values()), T0, T0 + 2_400_000, 600_000
    )
    cumulative, seen = [], []
    for b in range(4):
        seen += [v for t, v in ape.items() if T0 + 600_000 * b <= t < T0 + 600_000 * (b + 1)]
        cumulative.append([pytest.approx(sum(seen) / len(seen)), T0 + 600_000 * b])
    assert series(answer, "B")[0]["datapoints"] == cumulative
    assert series(answer, "B")[0]["target"] == "MAPE, cumulative"


async def test_query_calibration_parameters_step_series(client: Client) -> None:
    """One series per numeric calibrated parameter (strings and NaN/Infinity values left out), the value in
    effect at range.from carried in as the first point; ``parameter`` picks paths."""
    frm = T0 + 900_000
    status, answer = await client.post(
        "/query", grafana_query([{"target": "calibration_parameter"}], frm=frm)
    )
    assert status == 200
    check_timeseries(answer, {"A"}, frm, T0 + 2_400_000, 1000)
    got = {el["target"]: el["datapoints"] for el in answer}
    assert got == {
        FACTOR: [[1.0, frm], [1.1, frm + 300_000], [1.25, frm + 900_000]],
        IDLE: [[100.0, frm], [100.0, frm + 300_000], [120.0, frm + 900_000]],
    }
    body = grafana_query([{"target": "calibration_parameter", "payload": {"parameter": [IDLE]}}])
    status, answer = await client.post("/query", body)
    assert [el["target"] for el in answer] == [IDLE]
    assert answer[0]["datapoints"] == [
        [100.0, T0 + 600_000],
        [100.0, T0 + 1_200_000],
        [120.0, T0 + 1_800_000],
    ]


async def test_query_window_latency(client: Client) -> None:
    """Window latency and compute time come from the window journal, at each window's end."""
    targets: list[dict[str, Any]] = [
        {"target": "window_latency"},
        {"target": "window_latency", "payload": {"quantity": "compute", "aggregation": "max"}},
    ]
    status, answer = await client.post("/query", grafana_query(targets))
    assert status == 200
    check_timeseries(answer, {"A", "B"}, T0, T0 + 2_400_000, 1000)
    ends = [T0 + WINDOW_MS * (w + 1) for w in range(8)]
    assert series(answer, "A")[0]["datapoints"] == [[v, t] for t, v in zip(ends, LATENCY, strict=True)]
    assert series(answer, "B")[0]["datapoints"] == [[v, t] for t, v in zip(ends, COMPUTE, strict=True)]
    assert [el["target"] for el in answer] == ["Window latency", "Window compute time (max)"]


async def test_hidden_unchosen_and_absent_targets(client: Client) -> None:
    """Hidden targets and targets without a metric are skipped; no targets (or no body) answers []."""
    body = grafana_query(
        [
            {"target": "power_measured", "hide": True},
            {"target": "power_simulated"},
            {"refId": "C", "target": ""},
        ]
    )
    status, answer = await client.post("/query", body)
    assert status == 200
    assert [el["refId"] for el in answer] == ["B"]
    for empty in (grafana_query([]), None):
        status, answer = await client.post("/query", empty, plugin=False)
        assert (status, answer) == (200, [])


async def test_multi_value_target_and_payload_forms(client: Client) -> None:
    """A target "(a|b)" (multi-value variable, regex format) queries both; payload values may be strings,
    one-element lists, or the code editor's JSON text."""
    body = grafana_query(
        [{"target": "(power_measured|power_simulated)", "payload": {"aggregation": ["max"]}}]
    )
    status, answer = await client.post("/query", body)
    assert status == 200
    assert [el["target"] for el in answer] == ["Measured power (max)", "Simulated power (max)"]
    assert {el["refId"] for el in answer} == {"A"}
    legacy = grafana_query([{"target": "power_simulated"}])
    legacy["targets"][0]["payload"] = '{"aggregation": "min"}'
    status, answer = await client.post("/query", legacy, plugin=False)
    assert status == 200
    assert answer[0]["datapoints"] == expected(SIM_T, SIM_POWER, T0, T0 + 2_400_000, 300_000, "min")


# -- /query: tables, empty stores, NaN ---------------------------------------------------------------------


async def test_query_table_format(client: Client, oracle: Oracle) -> None:
    """``format: table`` answers one wide table per target (Time + one number column per series); the
    unmodified upstream file rejects any real table (defect 1), so tables are checked with overlay 1."""
    body = grafana_query(
        [
            {"target": "calibration_parameter", "payload": {"format": "table"}},
            {"target": "power_simulated", "payload": {"format": "table", "aggregation": "max"}},
        ],
        interval_ms=600_000,
    )
    status, answer = await client.post("/query", body)
    assert status == 200
    calib, power = answer
    assert calib["refId"] == "A"
    assert calib["columns"] == [
        {"text": "Time", "type": "time"},
        {"text": FACTOR, "type": "number"},
        {"text": IDLE, "type": "number"},
    ]
    assert calib["rows"] == [
        [T0 + 600_000, 1.0, 100.0],
        [T0 + 1_200_000, 1.1, 100.0],
        [T0 + 1_800_000, 1.25, 120.0],
    ]
    assert power["refId"] == "B"
    assert power["columns"][1] == {"text": "Simulated power (max)", "type": "number"}
    assert power["rows"] == [
        [t, v] for v, t in expected(SIM_T, SIM_POWER, T0, T0 + 2_400_000, 600_000, "max")
    ]
    assert oracle.errors("/query", "response", answer) != []  # the upstream file alone cannot accept it


async def test_empty_twin_answers_empty_arrays(empty_client: Client) -> None:
    """With no store, no measurements and no calibrator, every metric answers [] (never an error or null)."""
    for name in METRICS:
        for fmt in ("timeseries", "table"):
            status, answer = await empty_client.post(
                "/query", grafana_query([{"target": name, "payload": {"format": fmt}}])
            )
            assert (status, answer) == (200, [])
    status, answer = await empty_client.post(
        "/query", {"targets": [{"refId": "A", "target": "power_simulated"}]}
    )
    assert (status, answer) == (200, [])
    status, answer = await empty_client.post("/tag-values", {"key": "topology_version"})
    assert (status, answer) == (200, [])


async def test_empty_store_frame_answers_empty_arrays(tmp_path: Path, oracle: Oracle) -> None:
    """A store that exists but holds no window yet (the twin just started) also answers []."""
    store = ResultStore(tmp_path / "run")
    store.load()
    view = TwinView(
        store=store, measured=pl.DataFrame(schema={"timestamp_ms": pl.Int64, "power_draw": pl.Float64})
    )
    async with client_for(view, oracle) as c:
        for name in METRICS:
            status, answer = await c.post("/query", grafana_query([{"target": name}]))
            assert (status, answer) == (200, [])


async def test_non_finite_values_never_reach_the_wire(tmp_path: Path, oracle: Oracle) -> None:
    """NaN and ±Infinity in the store, the measurements and the calibration are dropped: a bucket of only
    NaN gives no point, the rest keep their finite values, and the raw bytes hold no NaN/Infinity/null."""
    store = ResultStore(tmp_path / "run")
    store.load()
    ts = [T0 + ROW_MS * (k + 1) for k in range(4)]  # buckets of 300 s from T0: ts0 | ts1 ts2 | ts3
    rows = pl.DataFrame(
        {
            "timestamp": utc(ts),
            "power_draw": [NAN, NAN, 500.0, INF],
            "energy_usage": [1.0, 1.0, 1.0, 1.0],
            "carbon_intensity": [NAN, -INF, 100.0, 1e308],
            "carbon_emission": [2.0, 1e308, 1e308, NAN],
            "topology_version": [0, 0, 0, 0],
            "window_start": utc([T0, T0, T0 + WINDOW_MS, T0 + WINDOW_MS]),
        }
    )
    await store.commit(WindowRecord(T0, T0 + WINDOW_MS, "ok", 2, 1, 1, 1, 0, NAN, INF, 1), rows.head(2))
    await store.commit(
        WindowRecord(T0 + WINDOW_MS, T0 + 2 * WINDOW_MS, "ok", 2, 1, 1, 1, 0, 0.5, 0.25, 1), rows.tail(2)
    )
    measured = pl.DataFrame({"timestamp_ms": ts, "power_draw": [NAN, 400.0, 400.0, 400.0]})
    view = TwinView(
        store=store, measured=measured, calibration_series=lambda: [r for r in ROUNDS if r["value"] is None]
    )
    targets = [{"target": name} for name in METRICS] + [
        {"target": "carbon_emission", "payload": {"format": "table"}}
    ]
    body = grafana_query(targets, interval_ms=WINDOW_MS)
    async with (
        served(view) as base,
        aiohttp.ClientSession() as s,
        s.post(base + "/grafana/query", json=body) as r,
    ):
        assert r.status == 200
        raw = await r.read()
    for token in (b"NaN", b"Infinity", b"null"):
        assert token not in raw
    answer = json.loads(raw, parse_constant=no_nan)
    assert oracle.errors("/query", "response", [el for el in answer if "datapoints" in el]) == []
    got = {el.get("target", "table"): el.get("datapoints", el.get("rows")) for el in answer}
    assert got == {
        "Measured power": [[400.0, T0 + WINDOW_MS], [400.0, T0 + 2 * WINDOW_MS]],
        "Simulated power": [[500.0, T0 + WINDOW_MS]],
        "Carbon intensity": [[100.0, T0 + WINDOW_MS], [1e308, T0 + 2 * WINDOW_MS]],
        "Carbon emission per bucket": [[2.0, T0]],  # 1e308 + 1e308 overflows to Infinity: dropped
        "MAPE": [[25.0, T0 + WINDOW_MS]],
        "Window latency": [[0.5, T0 + 2 * WINDOW_MS]],
        "table": [[T0, 2.0]],
    }


# -- bad input ---------------------------------------------------------------------------------------------


def _with(**changes: Any) -> dict[str, Any]:
    body = grafana_query([{"target": "power_simulated"}])
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node: Any = body
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[leaf] = value
    return body


BAD_QUERIES = [
    pytest.param(b"{nope", "body", "JSON", id="not-json"),
    pytest.param(b"NaN", "body", "JSON", id="nan-literal"),
    pytest.param(b"[1, 2]", "body", "object", id="array-body"),
    pytest.param(_with(targets={"target": "power_simulated"}), "targets", "list", id="targets-object"),
    pytest.param(_with(targets=["power_simulated"]), "targets[0]", "object", id="target-string"),
    pytest.param(
        _with(targets__0__target="power_simulatd"), "targets[0].target", "power_simulatd", id="unknown-metric"
    ),
    pytest.param(_with(targets__0__target=7), "targets[0].target", "string", id="target-number"),
    pytest.param(_with(targets__0__refId=["A"]), "targets[0].refId", "string", id="refid-list"),
    pytest.param(
        _with(targets__0__payload={"aggregation": "median"}),
        "targets[0].payload.aggregation",
        "median",
        id="bad-agg",
    ),
    pytest.param(
        _with(targets__0__payload={"aggregation": ["max", "min"]}),
        "targets[0].payload.aggregation",
        "one value",
        id="two-aggs",
    ),
    pytest.param(
        _with(targets__0__payload={"aggregation": {"x": 1}}),
        "targets[0].payload.aggregation",
        "string",
        id="agg-object",
    ),
    pytest.param(_with(targets__0__payload="{aggregation"), "targets[0].payload", "JSON", id="payload-text"),
    pytest.param(_with(targets__0__payload=[1]), "targets[0].payload", "object", id="payload-list"),
    pytest.param(
        _with(targets__0__payload={"format": "csv"}), "targets[0].payload.format", "csv", id="bad-format"
    ),
    pytest.param(_with(range__from="yesterday"), "range.from", "yesterday", id="from-garbage"),
    pytest.param(_with(range__to=None), "range.to", "missing", id="to-missing"),
    pytest.param(_with(range__to=[1]), "range.to", "ISO", id="to-list"),
    pytest.param(_with(range__from="2022-10-08T00:00:00.000Z"), "range.to", "before", id="reversed"),
    pytest.param(_with(range__from="99999999999999999999"), "range.from", "out of range", id="from-huge"),
    pytest.param(_with(range="last week"), "range", "object", id="range-string"),
    pytest.param(_with(maxDataPoints=0), "maxDataPoints", ">= 1", id="maxdp-zero"),
    pytest.param(_with(maxDataPoints="many"), "maxDataPoints", "many", id="maxdp-text"),
    pytest.param(_with(maxDataPoints=True), "maxDataPoints", "True", id="maxdp-bool"),
    pytest.param(_with(intervalMs=-1), "intervalMs", ">= 0", id="interval-negative"),
    pytest.param(_with(filters={"key": "source"}), "filters", "list", id="filters-object"),
    pytest.param(
        _with(filters=[{"key": "rack", "operator": "=", "value": "r1"}]),
        "filters[0].key",
        "rack",
        id="filter-key",
    ),
    pytest.param(
        _with(filters=[{"key": "source", "operator": "~~", "value": "x"}]),
        "filters[0].operator",
        "~~",
        id="filter-op",
    ),
    pytest.param(
        _with(filters=[{"key": "source", "operator": "<", "value": "x"}]),
        "filters[0].operator",
        "numeric",
        id="filter-order-on-text",
    ),
    pytest.param(
        _with(filters=[{"key": "topology_version", "operator": ">", "value": "one"}]),
        "filters[0].value",
        "number",
        id="filter-not-number",
    ),
    pytest.param(
        _with(filters=[{"key": "source", "operator": "=~", "value": "("}]),
        "filters[0].value",
        "regular",
        id="filter-bad-regex",
    ),
    pytest.param(
        _with(adhocFilters=[{"key": "source", "operator": "=", "value": None}]),
        "adhocFilters[0].value",
        "string",
        id="legacy-filter",
    ),
    pytest.param(_with(adhocFilters={"key": "source"}), "adhocFilters", "list", id="legacy-filters-object"),
]


@pytest.mark.parametrize(("body", "field", "word"), BAD_QUERIES)
async def test_bad_query_is_400_naming_the_field(client: Client, body: Any, field: str, word: str) -> None:
    """Unusable /query input is a 400 JSON answer whose field names the culprit and whose text says why."""
    if isinstance(body, bytes):
        status, answer = await client.post("/query", raw=body)
    else:
        status, answer = await client.post("/query", body, plugin=False)
    assert status == 400
    assert answer["field"] == field
    assert word in answer["error"]


async def test_wrong_method_and_path_are_json_4xx(client: Client) -> None:
    """A GET on a POST route and an unknown path under /grafana answer 405 / 404 as JSON, not HTML."""
    status, body = await client.get("/grafana/query")
    assert status == 405
    assert isinstance(body["error"], str)
    status, body = await client.post("/nothing-here", {})
    assert status == 404


# -- ad hoc filters ------------------------------------------------------------------------------------------


async def test_adhoc_filters_select_series_and_rows(client: Client) -> None:
    """``source`` hides whole series; ``topology_version`` and ``window_status`` cut rows of the series that
    carry them; series without the key are untouched; the pre-0.6.4 ``adhocFilters`` works the same."""
    targets = [
        {"target": "power_measured"},
        {"target": "power_simulated"},
        {"target": "mape"},
        {"target": "window_latency"},
    ]
    body = grafana_query(targets, filters=[{"key": "source", "operator": "=", "value": "measured"}])
    status, answer = await client.post("/query", body)
    assert status == 200
    assert [el["refId"] for el in answer] == ["A", "C", "D"]

    body = grafana_query(targets, filters=[{"key": "topology_version", "operator": ">=", "value": "1"}])
    status, answer = await client.post("/query", body)
    check_timeseries(answer, {"A", "B", "C", "D"}, T0, T0 + 2_400_000, 1000)
    v1 = [k for k in range(14) if SIM_VERSION[k] == 1]
    assert series(answer, "B")[0]["datapoints"] == expected(
        [SIM_T[k] for k in v1], [SIM_POWER[k] for k in v1], T0, T0 + 2_400_000, 300_000
    )
    assert series(answer, "A")[0]["datapoints"] == expected(MEAS_T, MEAS_POWER, T0, T0 + 2_400_000, 300_000)
    assert [p[0] for p in series(answer, "D")[0]["datapoints"]] == LATENCY[4:]

    legacy = grafana_query(
        [{"target": "window_latency"}],
        adhocFilters=[{"key": "window_status", "operator": "!=", "value": "failed"}],
    )
    del legacy["filters"]
    status, answer = await client.post("/query", legacy, plugin=False)
    assert [p[0] for p in answer[0]["datapoints"]] == LATENCY[:7]

    body = grafana_query(
        [{"target": "window_latency"}],
        filters=[{"key": "window_status", "operator": "=~", "value": "fail.*"}],
    )
    status, answer = await client.post("/query", body)
    assert [p[0] for p in answer[0]["datapoints"]] == LATENCY[7:]

    body = grafana_query(
        [{"target": "power_simulated"}],
        filters=[{"key": "topology_version", "operator": "=|", "value": "", "values": ["5", "6"]}],
    )
    status, answer = await client.post("/query", body, plugin=False)
    assert (status, answer) == (200, [])


async def test_tag_keys_and_values(client: Client) -> None:
    """Tag keys are source, topology_version and window_status; their values are the twin's own."""
    status, keys = await client.post("/tag-keys", {})
    assert status == 200
    assert keys == [
        {"type": "string", "text": "source"},
        {"type": "number", "text": "topology_version"},
        {"type": "string", "text": "window_status"},
    ]
    want = {
        "source": ["measured", "simulated"],
        "topology_version": ["0", "1"],
        "window_status": ["failed", "ok"],
    }
    for key, values in want.items():
        status, answer = await client.post("/tag-values", {"key": key})
        assert status == 200
        assert answer == [{"text": v} for v in values]
    status, answer = await client.post("/tag-values", {"key": "rack"})
    assert (status, answer["field"]) == (400, "key")
    status, answer = await client.post("/tag-values", {}, plugin=False)
    assert (status, answer["field"]) == (400, "key")


# -- /variable -------------------------------------------------------------------------------------------


async def test_variable_answers_text_value_frames(client: Client) -> None:
    """/variable answers a data frame with __text/__value fields for every variable query it knows."""
    rng = {"from": iso_ms(T0), "to": iso_ms(T0 + 1_000_000), "raw": {"from": "now-6h", "to": "now"}}
    want = {
        "metrics": ([m.label for m in METRICS.values()], list(METRICS)),
        "calibration_parameters": (AXES, AXES),
        "clusters": (["C01", "C02"], ["C01", "C02"]),
        "topology_versions": (["v0"], ["0"]),  # v1 starts at T0 + 1200 s, after this range
        "sources": (["Measured", "Simulated"], ["measured", "simulated"]),
    }
    for target, (texts, values) in want.items():
        status, answer = await client.post("/variable", {"payload": {"target": target}, "range": rng})
        assert status == 200
        assert answer == {
            "fields": [{"name": "__text", "values": texts}, {"name": "__value", "values": values}]
        }
    status, answer = await client.post("/variable", {"payload": {"target": "topology_versions"}})
    assert answer["fields"][1]["values"] == ["0", "1"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {"target": "racks"}}, "payload.target"),
        ({"payload": {"target": 3}}, "payload.target"),
        ({"payload": "metrics"}, "payload"),
        ({}, "payload"),
        ({"payload": {"target": "metrics"}, "range": {"from": "soon", "to": "later"}}, "range.from"),
    ],
)
async def test_variable_bad_input(client: Client, body: dict[str, Any], field: str) -> None:
    """An unknown variable query, a payload that is not an object or a bad range is a 400 naming it."""
    status, answer = await client.post("/variable", body, plugin=False)
    assert status == 400
    assert answer["field"] == field


ODD_VALUES: list[Any] = [None, True, 0, -1.5, 1e300, "x", "", [], [None], [{}], {}, {"a": [1]}]
ODD_FIELDS: dict[str, list[tuple[str | int, ...]]] = {
    "/metrics": [("metric",), ("payload",), ("payload", "aggregation")],
    "/metric-payload-options": [("metric",), ("payload",), ("name",)],
    "/query": [
        ("range",),
        ("range", "from"),
        ("range", "to"),
        ("intervalMs",),
        ("maxDataPoints",),
        ("targets",),
        ("targets", 0),
        ("targets", 0, "target"),
        ("targets", 0, "refId"),
        ("targets", 0, "hide"),
        ("targets", 0, "payload"),
        ("targets", 0, "payload", "aggregation"),
        ("targets", 1, "payload", "parameter"),
        ("filters",),
        ("filters", 0),
        ("filters", 0, "key"),
        ("filters", 0, "operator"),
        ("filters", 0, "value"),
        ("filters", 0, "values"),
    ],
    "/variable": [("payload",), ("payload", "target"), ("range",), ("range", "from")],
    "/tag-keys": [("filters",)],
    "/tag-values": [("key",)],
}
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/metrics": {"metric": "power_measured", "payload": {"aggregation": "max"}},
    "/metric-payload-options": {"metric": "power_measured", "payload": {}, "name": "aggregation"},
    "/query": grafana_query(
        [
            {"target": "power_measured"},
            {"target": "calibration_parameter", "payload": {"parameter": [FACTOR]}},
        ],
        filters=[{"key": "topology_version", "operator": "=|", "value": "0", "values": ["0", "1"]}],
    ),
    "/variable": {
        "payload": {"target": "topology_versions"},
        "range": {"from": iso_ms(T0), "to": iso_ms(T0 + 1)},
    },
    "/tag-keys": {"filters": []},
    "/tag-values": {"key": "source"},
}


async def test_odd_values_in_any_field_never_cause_a_server_error(client: Client) -> None:
    """Every JSON type in every field the handlers read gives 200 or a 4xx JSON naming the problem, never a
    5xx (a small deterministic fuzz; schemathesis in --mode all found a dict used as a filter key)."""
    for path, fields in ODD_FIELDS.items():
        status, _ = await client.post(path, VALID_BODIES[path])
        assert status == 200, path
        for where in fields:
            for odd in ODD_VALUES:
                body = copy.deepcopy(VALID_BODIES[path])
                node: Any = body
                for step in where[:-1]:
                    node = node[step]
                node[where[-1]] = odd
                status, answer = await client.post(path, body, plugin=False)
                assert status in (200, 400), (path, where, odd, status, answer)
