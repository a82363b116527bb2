"""Issue 20's HTTP cases against the real daemon (the demo day simulated, no token): every bad query string and
body is a 4xx naming the field, never a 5xx; topologies and what-ifs outside the model's bounds are refused at
once and change nothing; a web page of another origin, or one reached by DNS rebinding, cannot write."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from opendt.models import bounds

from .conftest import DEMO, Answer, Daemon, call, post_json

ISSUE_QUERIES = [
    ("/api/power?start=-100000000000000000000", "start"),
    ("/api/power?start=253402300800000&end=253402300800001", "start"),
    ("/api/power?start=0&end=9223372036854775807", "end"),
    ("/api/power?step_s=99999999999999999999999", "step_s"),
    ("/api/power?start=%C2%B2%C2%B3", "start"),  # Unicode superscript digits, once taken as epoch ms
    ("/api/carbon?start=-100000000000000000000", "start"),
    ("/api/carbon?start=253402300800000&end=253402300800001", "start"),
    ("/api/carbon?start=0&end=9223372036854775807", "end"),
    ("/api/carbon?step_s=99999999999999999999999", "step_s"),
    ("/api/carbon?start=%C2%B2%C2%B3", "start"),
    # added: year 1 (rendered "1-01-01T…" before), other digits, steps beyond the range, limits
    ("/api/power?start=0001-01-01T00:00:00Z", "start"),
    ("/api/power?end=9999-12-31T23:59:59Z", "end"),
    ("/api/power?start=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%94-01-01T00:00:00Z", "start"),  # fullwidth digits
    ("/api/power?start=%D9%A1%D9%A2%D9%A3", "start"),  # Arabic-Indic digits
    ("/api/power?start=1709510400000&end=1709510460000&step_s=61", "step_s"),
    ("/api/power?step_s=0", "step_s"),
    ("/api/power?step_s=-60", "step_s"),
    ("/api/power?step_s=6e1", "step_s"),
    ("/api/carbon?step_s=%D9%A1", "step_s"),
    ("/api/windows?limit=%D9%A1%D9%A0", "limit"),
    ("/api/windows?limit=1_0", "limit"),
    ("/api/windows?limit=99999999999999999999999", "limit"),
]


@pytest.mark.parametrize(("path", "field"), ISSUE_QUERIES)
def test_bad_query_strings_are_400_naming_the_field(demo_twin: Daemon, path: str, field: str) -> None:
    """Each of the issue's 5xx query strings (and more of their kind) is a 400 naming the parameter."""
    answer = demo_twin.get(path)
    assert answer.status == 400, (path, answer)
    assert answer.json()["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"range": {"from": "0001-01-01T00:00:00Z", "to": "2024-03-05T00:00:00Z"}}, "range.from"),
        ({"range": {"from": 1e300, "to": 0}}, "range.from"),
        ({"range": {"from": "²³", "to": "2024-03-05T00:00:00Z"}}, "range.from"),
        ({"intervalMs": "١٠٠٠", "targets": [{"target": "power_measured"}]}, "intervalMs"),
        ({"maxDataPoints": 1e309}, None),  # not JSON (Infinity): 400 naming the body
    ],
)
def test_bad_grafana_queries_are_400(demo_twin: Daemon, body: dict[str, Any], field: str | None) -> None:
    """The Grafana datasource bounds its times and numbers the same way."""
    answer = call(
        demo_twin.url,
        "POST",
        "/grafana/query",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    assert answer.status == 400, answer
    assert answer.json()["field"] == (field or "body")


WRITES = [
    ("PUT", "/api/topology"),
    ("PUT", "/api/slo"),
    ("POST", "/api/whatif"),
    ("POST", "/api/optimizer/accept"),
]


@pytest.mark.parametrize(("method", "path"), [*WRITES, ("POST", "/grafana/query")])
def test_deeply_nested_bodies_are_400(demo_twin: Daemon, method: str, path: str) -> None:
    """A body of 100,000 ``[`` (a 5xx before), and a document one level deeper than the limit (32), are 400
    naming the body; 32 levels are parsed (and refused for what they contain)."""
    headers = {"Content-Type": "application/json"}
    for raw in (b"[" * 100_000, b'{"a":' + b"[" * 32 + b"]" * 32 + b"}"):
        answer = call(demo_twin.url, method, path, raw, headers)
        assert answer.status == 400, (raw[:40], answer)
        assert answer.json()["field"] == "body"
    answer = call(demo_twin.url, method, path, b'{"a":' + b"[" * 31 + b"]" * 31 + b"}", headers)
    assert answer.status < 500, answer
    assert b"nested" not in answer.body


def _unchanged(before: dict[str, Any], daemon: Daemon) -> None:
    """The twin's topology version, windows and scenario runs are where they were; it answers health."""
    after = daemon.status()
    assert after["topology"]["version"] == before["topology"]["version"]
    assert after["simulation"]["windows_durable"] == before["simulation"]["windows_durable"]
    assert after["simulation"]["windows_failed"] == 0
    assert daemon.get("/health").status == 200


def _topology() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEMO / "topology.json").read_text())
    return doc


def _timed(fn: Any) -> tuple[Answer, float]:
    t0 = time.monotonic()
    answer = fn()
    return answer, time.monotonic() - t0


@pytest.mark.parametrize(
    ("cpu", "count", "field"),
    [
        ({"coreCount": 2**62, "count": 4, "coreSpeed": 2400}, 24, "clusters.0.hosts.0.cpu.coreCount"),
        ({"coreCount": 10**30, "coreSpeed": 2400}, 24, "clusters.0.hosts.0.cpu.coreCount"),
        ({"coreCount": 16, "coreSpeed": 2400}, bounds.MAX_HOSTS + 1, "clusters.0.hosts.0.count"),
        ({"coreCount": 4096, "count": 32, "coreSpeed": 2400}, 24, "clusters.0.hosts.0.cpu"),
    ],
)
def test_topologies_outside_the_bounds_are_422_at_once(
    demo_twin: Daemon, cpu: dict[str, Any], count: int, field: str
) -> None:
    """The issue's killers (coreCount 2⁶² with cpu.count 4; coreCount 10³⁰; a host count past ``MAX_HOSTS``:
    100,000 is a real site now) and a host of
    more than 65,536 cores: 422 naming the field within a second, plain or wrapped; nothing is applied or
    saved, and the daemon runs on."""
    before = demo_twin.status()
    doc = _topology()
    doc["clusters"][0]["hosts"][0].update(cpu=cpu, count=count)
    for body, prefix in ((doc, ""), ({"topology": doc, "reason": "hostile"}, "topology.")):
        answer, took = _timed(lambda body=body: post_json(demo_twin.url, "PUT", "/api/topology", body))
        assert answer.status == 422, answer
        assert answer.json()["field"] == prefix + field
        assert took < 2
    assert not list((demo_twin.data_dir / "runs").glob("*/topologies/v1.json"))
    _unchanged(before, demo_twin)


@pytest.mark.parametrize("hosts", [bounds.MAX_HOSTS + 1, 10**12])
def test_huge_whatifs_are_422_at_once(demo_twin: Daemon, hosts: int) -> None:
    """What-ifs past ``MAX_HOSTS`` (once 500 after 60 s, the worker tied up) are 422 naming the patch within
    a second, as patch or as whole topology; no scenario runs."""
    before = demo_twin.status()
    runs = before["scenarios"]["runs"]
    span = {"start": "2024-03-04T06:00:00Z", "end": "2024-03-04T07:00:00Z"}
    answer, took = _timed(
        lambda: post_json(demo_twin.url, "POST", "/api/whatif", {**span, "patch": {"count": hosts}})
    )
    assert answer.status == 422, answer
    assert answer.json()["field"] == "patch"
    assert f"less than or equal to {bounds.MAX_HOSTS}" in answer.json()["error"]
    assert took < 2
    doc = _topology()
    doc["clusters"][0]["hosts"][1]["count"] = hosts
    answer = post_json(demo_twin.url, "POST", "/api/whatif", {**span, "topology": doc})
    assert answer.status == 422, answer
    assert answer.json()["field"] == "topology.clusters.0.hosts.1.count"
    assert demo_twin.status()["scenarios"]["runs"] == runs
    _unchanged(before, demo_twin)


def test_whatif_steps_and_times_are_bounded(demo_twin: Daemon) -> None:
    """A what-if step beyond its range or far-off times are 422/400 naming the field."""
    span = {"start": "2024-03-04T06:00:00Z", "end": "2024-03-04T07:00:00Z", "patch": {"cpu.coreSpeed": 2000}}
    for body, status, field in [
        ({**span, "step_s": 2**63}, 422, "step_s"),
        ({**span, "step_s": 3601}, 422, "step_s"),
        ({**span, "start": 2**63 - 1}, 400, "start"),
        ({**span, "start": "0001-01-01T00:00:00Z"}, 400, "start"),
        ({**span, "end": "²³"}, 400, "end"),
    ]:
        answer = post_json(demo_twin.url, "POST", "/api/whatif", body)
        assert (answer.status, answer.json()["field"]) == (status, field), (body, answer)


def test_cross_origin_and_rebinding_writes_are_refused(demo_twin: Daemon) -> None:
    """Without a token: the issue's cross-origin text/plain POST to /api/topology/reset (202 before) is 403;
    a text/plain body is 415; a page reached by DNS rebinding (its own name as Host and Origin) is 403; a
    cross-site fetch is 403; nothing changes. Our own page (same origin, JSON) and non-browser clients write."""
    before = demo_twin.status()
    host = demo_twin.url.removeprefix("http://")
    refused = [
        ({"Origin": "http://evil.example", "Content-Type": "text/plain"}, b"x", 403, "Origin"),
        ({"Origin": "null"}, None, 403, "Origin"),
        ({"Content-Type": "text/plain"}, b"{}", 415, "Content-Type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=1", 415, "Content-Type"),
        (
            {
                "Host": "rebound.example:" + host.split(":")[1],
                "Origin": "http://rebound.example:" + host.split(":")[1],
            },
            None,
            403,
            "Host",
        ),
        ({"Host": "localhost.evil.example"}, None, 403, "Host"),
        ({"Sec-Fetch-Site": "cross-site"}, None, 403, "Sec-Fetch-Site"),
        ({"Origin": f"http://{host.split(':')[0]}:1"}, None, 403, "Origin"),
    ]
    for headers, body, status, field in refused:
        answer = call(demo_twin.url, "POST", "/api/topology/reset", body, headers)
        assert (answer.status, answer.json()["field"]) == (status, field), (headers, answer)
    doc = _topology()
    answer = call(
        demo_twin.url, "PUT", "/api/topology", json.dumps(doc).encode(), {"Content-Type": "text/plain"}
    )
    assert answer.status == 415
    _unchanged(before, demo_twin)
    same_origin = {
        "Origin": demo_twin.url,
        "Sec-Fetch-Site": "same-origin",
        "Content-Type": "application/json",
    }
    answer = call(
        demo_twin.url,
        "PUT",
        "/api/topology",
        json.dumps({"topology": doc, "reason": "same origin"}).encode(),
        same_origin,
    )
    assert answer.status == 202, answer
    answer = call(
        demo_twin.url, "POST", "/api/topology/reset", None, {"Host": "localhost:" + host.split(":")[1]}
    )
    assert answer.status == 202, answer
    assert demo_twin.status()["topology"]["version"] == before["topology"]["version"] + 2


def test_whatifs_of_large_datacenters_run(demo_twin: Daemon) -> None:
    """A what-if of 100,000 hosts (once refused: 4,096 was the cap) and one of 65,536 cores a host run and
    answer 200 within api.whatif_timeout_s; one host past ``MAX_HOSTS`` is 422."""
    span = {"start": "2024-03-05T06:00:00Z", "end": "2024-03-05T07:00:00Z"}
    for patch in ({"clusters[demo].hosts[A].count": 100_000 - 12}, {"cpu.coreCount": 65536}):
        answer, took = _timed(
            lambda patch=patch: post_json(demo_twin.url, "POST", "/api/whatif", {**span, "patch": patch})
        )
        assert answer.status == 200, answer
        assert answer.json()["series"]["whatif"], answer.json()
        assert took < 60
    answer = post_json(
        demo_twin.url,
        "POST",
        "/api/whatif",
        {**span, "patch": {"clusters[demo].hosts[A].count": bounds.MAX_HOSTS - 11}},
    )
    assert answer.status == 422, answer
    assert f"{bounds.MAX_HOSTS + 1} hosts in all" in answer.json()["error"]
