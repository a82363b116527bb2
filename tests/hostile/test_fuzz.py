"""A targeted hypothesis fuzz of every endpoint of the real daemon (demo day simulated, no token): query
strings, JSON bodies (random, deep, huge numbers, mutated topologies, what-ifs, Grafana queries), raw bytes
and the headers that guard writes. Whatever arrives, the answer is never a 5xx, every 4xx is a JSON error, and
the daemon keeps running (the ``demo_twin`` fixture checks it, its memory and its clean exit at the end)."""

from __future__ import annotations

import copy
import json
import math
from typing import Any
from urllib.parse import urlencode

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .conftest import DEMO, Answer, Daemon, call

SETTINGS = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
GETS = [
    "/health",
    "/api/status",
    "/api/power",
    "/api/carbon",
    "/api/windows",
    "/api/topology",
    "/api/calibration",
    "/api/slo",
    "/api/optimizer",
    "/grafana",
    "/openapi.json",
]
WRITES = [
    ("PUT", "/api/topology"),
    ("PUT", "/api/slo"),
    ("POST", "/api/topology/reset"),
    ("POST", "/api/whatif"),
    ("POST", "/api/optimizer/accept"),
]
GRAFANA = ["metrics", "metric-payload-options", "query", "variable", "tag-keys", "tag-values"]
HOSTILE_TEXT = [
    "²³",
    "١٢٣",
    "２０２４-01-01T00:00:00Z",
    "-100000000000000000000",
    "9223372036854775807",
    "99999999999999999999999",
    "253402300800000",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "1e3",
    "1_000",
    "nan",
    "inf",
    "",
    " ",
    "0",
    "-1",
    "2024-03-04T06:00:00Z",
    "1709532000000",
    "\x00",
]
HUGE = [0, -1, 1, 2**31, 2**62, 2**63, 2**64, 10**30, -(10**30), 1e300, -1e300, 5e-324, 4096, 4097, 65537]

texts = st.one_of(
    st.sampled_from(HOSTILE_TEXT), st.text(max_size=30), st.integers(4000, 6000).map(lambda n: "x" * n)
)
numbers = st.one_of(
    st.sampled_from(HUGE),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_infinity=False, allow_nan=False),
)
times = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from(HOSTILE_TEXT),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
json_docs = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.one_of(texts, st.sampled_from(["topology", "patch", "start", "end", "round", "range", "targets"])), children, max_size=4)
    ),
    max_leaves=20,
)  # fmt: skip


def _demo_topology() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEMO / "topology.json").read_text())
    return doc


def _paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in [(*path, k), *_paths(v, (*path, k))]]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in [(*path, i), *_paths(v, (*path, i))]]
    return []


TOPOLOGY_PATHS = _paths(_demo_topology())


@st.composite
def mutated_topologies(draw: st.DrawFn) -> dict[str, Any]:
    """The demo topology with one to three values replaced by hostile ones."""
    doc = copy.deepcopy(_demo_topology())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(TOPOLOGY_PATHS))
        node: Any = doc
        for k in path[:-1]:
            node = node[k] if isinstance(node, dict | list) else None
        if isinstance(node, dict | list):  # an earlier change may have replaced a section by a value
            node[path[-1]] = draw(st.one_of(leaves, st.sampled_from(HUGE)))
    return doc


PATCH_PATHS = st.one_of(
    st.sampled_from(
        ["count", "cpu.coreCount", "cpu.count", "cpu.coreSpeed", "memory.memorySize", "cpuPowerModel.idlePower",
         "cpuPowerModel.maxPower", "cpuPowerModel.calibrationFactor", "cpuPowerModel.asymUtil",
         "cpuPowerModel.modelType", "clusters[demo].hosts[A].count", "hosts[B].cpu.coreCount", "clusters[x].count"]
    ),
    texts,
)  # fmt: skip
whatifs = st.fixed_dictionaries(
    {"start": times, "end": times},
    optional={
        "patch": st.dictionaries(PATCH_PATHS, st.one_of(numbers, texts, leaves), max_size=3),
        "topology": mutated_topologies(),
        "step_s": st.one_of(numbers, texts),
        "reason": texts,
    },
)
in_range_whatifs = st.fixed_dictionaries(
    {
        "start": st.sampled_from(["2024-03-05T06:00:00Z", 1709618400000, "2024-03-05T08:00:00+02:00"]),
        "end": st.sampled_from(["2024-03-05T07:00:00Z", "2024-03-05T09:30:00Z", 1709622000001]),
        "patch": st.one_of(
            st.dictionaries(PATCH_PATHS, st.one_of(numbers, texts), min_size=1, max_size=3),
            st.fixed_dictionaries(
                {},
                optional={
                    "clusters[demo].hosts[A].count": st.integers(1, 4000),
                    "cpu.coreCount": st.integers(1, 65536),
                    "cpu.coreSpeed": st.floats(1, 1e5),
                    "cpuPowerModel.calibrationFactor": st.floats(1, 1000),
                    "memory.memorySize": st.floats(0, 2**40),
                },
            ),
        ),
    },
    optional={"step_s": st.one_of(st.integers(-5, 20_000), numbers)},
)
"""What-ifs inside the twin's history (the last day): hostile patches reach the model; patches within the
bounds (up to 4,000 more hosts, 65,536 cores) run in the scenario worker."""
grafana_bodies = st.fixed_dictionaries(
    {},
    optional={
        "range": st.fixed_dictionaries({"from": st.one_of(times, leaves), "to": st.one_of(times, leaves)}),
        "intervalMs": st.one_of(numbers, texts),
        "maxDataPoints": st.one_of(numbers, texts),
        "targets": st.lists(
            st.fixed_dictionaries(
                {
                    "target": st.one_of(
                        st.sampled_from(["power_measured", "mape", "(power_simulated|mape)"]), texts
                    )
                },
                optional={"payload": json_docs, "refId": texts, "format": texts},
            ),
            max_size=3,
        ),
        "adhocFilters": json_docs,
        "payload": json_docs,
        "metric": texts,
        "name": texts,
        "key": texts,
    },
)


def _check(answer: Answer, what: Any) -> None:
    event(f"status {answer.status}")  # --hypothesis-show-statistics lists how often each was answered
    assert answer.status < 500, (what, answer.status, answer.body[:300])
    if answer.status >= 400 and answer.headers.get("content-type", "").startswith("application/json"):
        doc = answer.json()
        assert "error" in doc, (what, doc)


def _body(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()  # NaN / Infinity, when drawn, are bad JSON on purpose


@SETTINGS
@given(path=st.sampled_from(GETS), params=st.dictionaries(st.one_of(st.sampled_from(["start", "end", "step_s", "limit"]), texts), st.one_of(texts, times.map(str), numbers.map(str)), max_size=4))  # fmt: skip
def test_fuzz_query_strings(demo_twin: Daemon, path: str, params: dict[str, str]) -> None:
    """Any query string on every GET endpoint: never a 5xx."""
    safe = {k.encode("utf-8", "surrogatepass"): v.encode("utf-8", "surrogatepass") for k, v in params.items()}
    query = urlencode(safe)
    _check(call(demo_twin.url, "GET", f"{path}?{query}" if query else path), (path, params))


@SETTINGS
@given(
    target=st.sampled_from(WRITES),
    doc=st.one_of(json_docs, mutated_topologies(), whatifs, st.fixed_dictionaries({"topology": mutated_topologies(), "reason": leaves})),
)  # fmt: skip
def test_fuzz_write_bodies(demo_twin: Daemon, target: tuple[str, str], doc: Any) -> None:
    """Random and mutated JSON to every write endpoint (as our own page would send it): never a 5xx."""
    method, path = target
    _check(call(demo_twin.url, method, path, _body(doc), {"Content-Type": "application/json"}), (path, doc))


@settings(SETTINGS, max_examples=80)
@given(doc=st.one_of(whatifs, in_range_whatifs))
def test_fuzz_whatifs(demo_twin: Daemon, doc: dict[str, Any]) -> None:
    """What-ifs with made-up times, patches, topologies and steps: never a 5xx."""
    _check(call(demo_twin.url, "POST", "/api/whatif", _body(doc), {"Content-Type": "application/json"}), doc)


@SETTINGS
@given(endpoint=st.sampled_from(GRAFANA), doc=st.one_of(grafana_bodies, json_docs))
def test_fuzz_grafana(demo_twin: Daemon, endpoint: str, doc: Any) -> None:
    """The Grafana datasource's endpoints with made-up queries: never a 5xx."""
    answer = call(
        demo_twin.url, "POST", f"/grafana/{endpoint}", _body(doc), {"Content-Type": "application/json"}
    )
    _check(answer, (endpoint, doc))


@SETTINGS
@given(
    target=st.sampled_from([*WRITES, *(("POST", f"/grafana/{e}") for e in GRAFANA)]),
    raw=st.one_of(st.binary(max_size=300), st.sampled_from([b"[" * 100_000, b"{" * 5000, b'{"a":1e999}', b"\xff\xfe"])),
    headers=st.dictionaries(
        st.sampled_from(["Content-Type", "Origin", "Host", "Sec-Fetch-Site", "Authorization"]),
        st.one_of(texts.filter(lambda t: t.isprintable() and t.isascii() and "\n" not in t), st.sampled_from(["application/json", "text/plain", "http://evil.example", "null", "cross-site", "evil.example"])),
        max_size=3,
    ),
)  # fmt: skip
def test_fuzz_raw_bodies_and_headers(
    demo_twin: Daemon, target: tuple[str, str], raw: bytes, headers: dict[str, str]
) -> None:
    """Arbitrary bytes with arbitrary guard headers (content type, origin, host): never a 5xx."""
    method, path = target
    _check(call(demo_twin.url, method, path, raw, headers), (path, raw[:60], headers))


def test_after_the_fuzz_the_twin_answers(demo_twin: Daemon) -> None:
    """After every fuzz case: /health is 200, no window failed, the series have no NaN."""
    assert demo_twin.get("/health").status == 200
    status = demo_twin.status()
    assert status["simulation"]["windows_failed"] == 0
    power = demo_twin.get("/api/power")
    assert power.status == 200
    doc = json.loads(power.body, parse_constant=lambda c: math.nan)
    assert all(math.isfinite(v) for _, v in doc["simulated"])


@SETTINGS
@given(
    prefix=st.sampled_from(["/static/", "/api/", "/grafana/", "/", "/docs/"]),
    rest=st.one_of(
        texts, st.sampled_from(["..%2F..%2Fsettings.py", "%00", "app.js%00.css", "%ff", "a/../../b"])
    ),
)
def test_fuzz_paths(demo_twin: Daemon, prefix: str, rest: str) -> None:
    """Made-up paths (encoded, traversing, with NUL or invalid UTF-8): never a 5xx."""
    path = prefix + "".join(
        c if c.isascii() and c.isprintable() and c not in " ?#" else f"%{ord(c) & 0xFF:02X}" for c in rest
    )
    _check(call(demo_twin.url, "GET", path), path)
