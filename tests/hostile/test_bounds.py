"""The bounds of opendt.models.bounds where values enter: the topology model (and the engine's fast parse, which
agrees with it), patches, calibration candidates, the Kafka message models and the fast decoder (which agree
on every record hypothesis makes up), and the ISO rendering of times."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any, Literal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendt.calibration.trust import physical_reason
from opendt.engine.topology import TopoSpec, parse_fast
from opendt.models import bounds
from opendt.models.fastdecode import decode_row
from opendt.models.messages import (
    FragmentMessage,
    FragmentRow,
    Heartbeat,
    MessageError,
    PowerMessage,
    PowerRow,
    SimTopologyMessage,
    TaskMessage,
    TaskRow,
    decode,
    iso_ms,
)
from opendt.models.patch import PatchError, apply_patch
from opendt.models.topology import TopologyError, parse_topology

HOST: dict[str, Any] = {
    "name": "H",
    "count": 2,
    "cpu": {"coreCount": 16, "coreSpeed": 2100, "count": 1},
    "memory": {"memorySize": 128000},
    "cpuPowerModel": {"modelType": "mse", "idlePower": 25, "maxPower": 174, "calibrationFactor": 4},
}
DOC: dict[str, Any] = {"clusters": [{"name": "C", "hosts": [HOST]}]}


def _with(path: str, value: Any, doc: dict[str, Any] = DOC) -> dict[str, Any]:
    """``doc`` with the dotted ``path`` (list indices as numbers) set to ``value``."""
    out = copy.deepcopy(doc)
    node: Any = out
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    return out


H = "clusters.0.hosts.0"
OUTSIDE = [
    # the cases: coreCount 2^62 with cpu.count 4, coreCount 10^30, host count past MAX_HOSTS
    (_with(f"{H}.cpu", {"coreCount": 2**62, "count": 4, "coreSpeed": 2100}), f"{H}.cpu.coreCount"),
    (_with(f"{H}.cpu.coreCount", 10**30), f"{H}.cpu.coreCount"),
    (_with(f"{H}.count", bounds.MAX_HOSTS + 1), f"{H}.count"),
    (_with(f"{H}.count", 10**12), f"{H}.count"),
    (_with(f"{H}.cpu", {"coreCount": 4096, "count": 32, "coreSpeed": 2100}), f"{H}.cpu"),
    (_with(f"{H}.cpu.count", 2**31), f"{H}.cpu.count"),
    (_with(f"{H}.cpu.coreSpeed", 0.5), f"{H}.cpu.coreSpeed"),
    (_with(f"{H}.cpu.coreSpeed", "1e400 GHz"), f"{H}.cpu.coreSpeed"),
    (_with(f"{H}.cpu.coreSpeed", 1e6), f"{H}.cpu.coreSpeed"),
    (_with(f"{H}.memory.memorySize", 2.0**41), f"{H}.memory.memorySize"),
    (_with(f"{H}.cpuPowerModel.idlePower", float("nan")), f"{H}.cpuPowerModel.idlePower"),
    (_with(f"{H}.cpuPowerModel.maxPower", float("inf")), f"{H}.cpuPowerModel.maxPower"),
    (_with(f"{H}.cpuPowerModel.maxPower", "2 MW"), f"{H}.cpuPowerModel.maxPower"),
    (_with(f"{H}.cpuPowerModel.calibrationFactor", -1), f"{H}.cpuPowerModel.calibrationFactor"),
    (_with(f"{H}.cpuPowerModel.calibrationFactor", 1e6), f"{H}.cpuPowerModel.calibrationFactor"),
    (_with(f"{H}.cpuPowerModel.asymUtil", 2), f"{H}.cpuPowerModel.asymUtil"),
    (_with(f"{H}.name", "h" * 257), f"{H}.name"),
    (
        _with("clusters.0.powerSource", {"carbonTracePath": "/" * 4097}),
        "clusters.0.powerSource.carbonTracePath",
    ),
    (_with("clusters.0.count", 2**40), "clusters.0.count"),
    (_with(f"{H}.cpuDistributionPolicy", {"updateIntervalLength": 2**64}), f"{H}.cpuDistributionPolicy"),
    (
        _with("clusters", [{"name": f"c{i}", "hosts": [HOST]} for i in range(bounds.MAX_CLUSTERS + 1)]),
        "clusters",
    ),
    (_with("clusters.0.hosts", [{**HOST, "count": bounds.MAX_HOSTS}, {**HOST, "count": 1}]), ""),
]


@pytest.mark.parametrize(("doc", "field"), OUTSIDE, ids=lambda v: "" if isinstance(v, dict) else v)
def test_out_of_bounds_topologies_name_the_field(doc: dict[str, Any], field: str) -> None:
    """Every bound of the topology model refuses a value outside it with a TopologyError naming the field, and
    the engine's fast parse declines the document too (it never accepts what the model refuses)."""
    with pytest.raises(TopologyError) as e:
        parse_topology(doc)
    assert e.value.field.startswith(field)
    assert field.split(".")[-1] in str(e.value)
    assert parse_fast(doc) is None


AT_BOUNDS = [
    _with(f"{H}.count", bounds.MAX_HOSTS),
    _with(f"{H}.cpu", {"coreCount": 4096, "count": 16, "coreSpeed": bounds.MAX_CORE_SPEED_MHZ}),
    _with(f"{H}.cpu", {"coreCount": 1, "coreSpeed": bounds.MIN_CORE_SPEED_MHZ}),
    _with(
        f"{H}.cpuPowerModel", {"modelType": "mse", "idlePower": 0, "maxPower": 1e6, "calibrationFactor": 1000}
    ),
    _with(f"{H}.cpuPowerModel", {"modelType": "asymptotic", "idlePower": 1, "maxPower": 2, "asymUtil": 1}),
    _with(f"{H}.memory.memorySize", bounds.MAX_MEMORY_MIB),
    _with("clusters", [{"name": f"c{i}", "hosts": [{**HOST, "count": 100}]} for i in range(10_000)]),
]


@pytest.mark.parametrize("doc", AT_BOUNDS)
def test_values_at_the_bounds_are_accepted_alike_by_both_parses(doc: dict[str, Any]) -> None:
    """A value exactly at a bound is valid, and the fast parse gives the model's spec."""
    model = TopoSpec.from_model(parse_topology(doc))
    assert parse_fast(doc) == model


def test_patches_past_the_bounds_name_the_path() -> None:
    """What-if and optimizer patches: a huge integer is refused before any arithmetic, a value outside a bound
    by the model, each naming the patched path."""
    topo = parse_topology(DOC)
    with pytest.raises(PatchError, match=r"'cpu.coreCount': 1e30 or more is out of range"):
        apply_patch(topo, {"cpu.coreCount": 10**30})
    with pytest.raises(PatchError, match=r"cpu.coreSpeed.*1e30 or more is out of range"):
        apply_patch(topo, {"cpu.coreSpeed": 10**400})
    for count in (bounds.MAX_HOSTS + 1, 1e18):
        with pytest.raises(
            PatchError, match=rf"count: Input should be less than or equal to {bounds.MAX_HOSTS}"
        ):
            apply_patch(topo, {"count": count})
    assert apply_patch(topo, {"count": 1_000_000}).host_count == 1_000_000


def test_calibration_candidates_respect_the_upper_bounds() -> None:
    """A trust-region step that scales a parameter past the model's bound is rejected with the reason."""
    assert physical_reason("cpuPowerModel.calibrationFactor", 2000.0).startswith(
        "cpuPowerModel.calibrationFactor must be in [1, 1000]"
    )
    assert physical_reason("cpu.coreSpeed", 2e5) != ""
    assert physical_reason("cpuPowerModel.idlePower", 2e6) != ""
    assert physical_reason("cpuPowerModel.idlePower", 100.0) == ""


# -- messages --------------------------------------------------------------------------------------------

T = "2024-01-01T00:00:00Z"
KEY = {"tasks": b'{"id":"t1"}', "fragments": b'{"id":"t1"}', "power": b'{"source":"dc"}'}
GOOD: dict[str, dict[str, Any]] = {
    "tasks": {
        "submission_time": T,
        "duration": 60_000,
        "cpu_count": 8,
        "cpu_capacity": 16000.0,
        "mem_capacity": 1,
    },
    "fragments": {"submission_time": T, "duration": 60_000, "cpu_count": 8, "cpu_usage": 800.5, "index": 3},
    "power": {"timestamp": T, "power_draw": 1200.0, "energy_usage": 36000.0},
}
Kind = Literal["tasks", "fragments", "power"]
HOSTILE: list[tuple[Kind, dict[str, Any], str]] = [
    ("tasks", {"cpu_count": 2**31}, "cpu_count"),  # the Int32 overflow
    ("fragments", {"index": 2**31}, "index"),  # the Int32 overflow
    ("fragments", {"cpu_count": 2**63}, "cpu_count"),
    ("tasks", {"duration": 2**62}, "duration"),
    ("fragments", {"duration": bounds.MAX_DURATION_MS + 1}, "duration"),
    ("tasks", {"submission_time": "9999-12-31T23:59:59Z"}, "submission_time"),
    ("tasks", {"submission_time": "0001-01-01T00:00:00Z"}, "submission_time"),
    ("fragments", {"submission_time": "1969-12-31T23:59:59Z"}, "submission_time"),
    ("fragments", {"submission_time": "2200-01-01T00:00:00Z"}, "submission_time"),
    ("tasks", {"submission_time": 1704067200}, "submission_time"),
    ("tasks", {"submission_time": "1704067200"}, "submission_time"),
    ("tasks", {"submission_time": "2024-01-01T00:00:00"}, "submission_time"),
    ("tasks", {"mem_capacity": 2**41}, "mem_capacity"),
    ("tasks", {"cpu_capacity": 1e300}, "cpu_capacity"),
    ("fragments", {"cpu_usage": 1e300}, "cpu_usage"),
    ("power", {"power_draw": 1e300}, "power_draw"),
    ("power", {"energy_usage": 1e300}, "energy_usage"),
    ("power", {"timestamp": "+002024-01-01T00:00:00Z"}, "timestamp"),
]


@pytest.mark.parametrize(("kind", "change", "field"), HOSTILE)
def test_hostile_records_are_message_errors_naming_the_field(
    kind: Kind, change: dict[str, Any], field: str
) -> None:
    """A record with one value outside its bound is a MessageError naming the field, on the fast path and in
    the model alike."""
    value = orjson.dumps({**GOOD[kind], **change})
    for fn in (decode_row, decode):
        with pytest.raises(MessageError, match=field):
            fn(kind, KEY[kind], value)


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("tasks", b'{"id":"' + b"x" * 257 + b'"}'),
        ("power", b'{"source":"' + b"s" * 257 + b'"}'),
        ("tasks", b'{"id":true}'),
    ],
)
def test_long_or_odd_ids_are_refused(kind: Kind, key: bytes) -> None:
    """Ids longer than 256 characters, or booleans as ids, are refused."""
    with pytest.raises(MessageError):
        decode_row(kind, key, orjson.dumps(GOOD[kind]))


def test_heartbeats_are_iso_strings_only() -> None:
    """``{"heartbeat": 12345}`` (seconds since the epoch to pydantic) is refused, as are numeric strings and
    times outside the bounds; an ISO heartbeat with a zone is accepted."""
    for bad in (
        b'{"heartbeat":12345}',
        b'{"heartbeat":"12345"}',
        b'{"heartbeat":1.5e9}',
        b'{"heartbeat":"9999-01-01T00:00:00Z"}',
    ):
        with pytest.raises(MessageError, match="heartbeat"):
            decode_row("tasks", None, bad)
        with pytest.raises(MessageError, match="heartbeat"):
            decode("power", None, bad)
    hb = decode_row("fragments", None, b'{"heartbeat":"2024-01-01T00:05:00Z","final":true}')
    assert isinstance(hb, Heartbeat)
    assert (hb.time_ms, hb.final) == (1_704_067_500_000, True)


def test_records_at_the_bounds_decode() -> None:
    """The largest accepted values decode to rows with those values."""
    task = {**GOOD["tasks"], "cpu_count": bounds.MAX_HOST_CORES, "duration": bounds.MAX_DURATION_MS}
    row = decode_row("tasks", KEY["tasks"], orjson.dumps(task))
    assert isinstance(row, TaskRow)
    assert (row.cpu_count, row.duration) == (bounds.MAX_HOST_CORES, bounds.MAX_DURATION_MS)
    frag = {
        **GOOD["fragments"],
        "index": bounds.MAX_FRAGMENT_INDEX,
        "submission_time": "2199-12-31T23:59:59Z",
    }
    row2 = decode_row("fragments", KEY["fragments"], orjson.dumps(frag))
    assert isinstance(row2, FragmentRow)
    assert row2.position == bounds.MAX_FRAGMENT_INDEX
    row3 = decode_row(
        "power", KEY["power"], orjson.dumps({**GOOD["power"], "power_draw": bounds.MAX_SITE_POWER_W})
    )
    assert isinstance(row3, PowerRow)


VALUES = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**53, bounds.MAX_DURATION_MS, bounds.MAX_HOST_CORES + 1]),
    st.sampled_from(
        [T, "2199-12-31T23:59:59.999+00:00", "2200-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "x"]
    ),
    st.text(max_size=30),
    st.booleans(),
    st.none(),
)


@settings(max_examples=600, derandomize=True, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    kind=st.sampled_from(["tasks", "fragments", "power"]),
    changes=st.dictionaries(st.sampled_from(["submission_time", "timestamp", "duration", "cpu_count",
                                             "cpu_capacity", "cpu_usage", "mem_capacity", "index",
                                             "power_draw", "energy_usage", "heartbeat", "final", "extra"]),
                            VALUES, max_size=3),
    drop=st.sampled_from([None, "duration", "index", "timestamp"]),
)  # fmt: skip
def test_fast_path_and_model_agree_on_made_up_records(
    kind: Kind, changes: dict[str, Any], drop: str | None
) -> None:
    """Whatever hypothesis makes of a record, decode_row and the pydantic model agree: both refuse it with a
    MessageError, or both accept it with the same values (and only MessageError ever escapes)."""
    doc = {**GOOD[kind], **changes}
    doc.pop(drop or "", None)
    value = json.dumps(doc).encode()  # orjson cannot write integers beyond 64 bits
    try:
        fast: Any = decode_row(kind, KEY[kind], value)
    except MessageError:
        fast = None
    try:
        msg = decode(kind, KEY[kind], value)
    except MessageError:
        msg = None
    assert (fast is None) == (msg is None), (doc, fast, msg)
    if isinstance(fast, Heartbeat):
        assert isinstance(msg, Heartbeat)
        assert (fast.time_ms, fast.final) == (msg.time_ms, msg.final)
    elif fast is not None:
        assert isinstance(msg, TaskMessage | FragmentMessage | PowerMessage)
        assert tuple(fast)[1:] == tuple(
            json.loads(json.dumps([msg.time_ms] + [doc[f] for f in list(GOOD[kind])[1:]]))
        )


@settings(max_examples=300, derandomize=True, deadline=None)
@given(key=st.one_of(st.none(), st.binary(max_size=40)), value=st.one_of(st.none(), st.binary(max_size=200)))
def test_any_bytes_are_a_row_or_a_message_error(key: bytes | None, value: bytes | None) -> None:
    """Arbitrary bytes never raise anything but MessageError from the decoder."""
    kinds: tuple[Kind, ...] = ("tasks", "fragments", "power")
    for kind in kinds:
        with contextlib.suppress(MessageError):
            decode_row(kind, key, value)


def test_iso_ms_renders_four_digit_years_and_refuses_the_rest() -> None:
    """Year 1 renders as 0001-… (not "1-01-01T…"), times before 1970 too; beyond years 1..9999 a ValueError."""
    assert iso_ms(-62_135_596_800_000) == "0001-01-01T00:00:00.000Z"
    assert iso_ms(-1) == "1969-12-31T23:59:59.999Z"
    assert iso_ms(1_704_067_200_123) == "2024-01-01T00:00:00.123Z"
    assert iso_ms(253_402_300_799_999) == "9999-12-31T23:59:59.999Z"
    for ms in (253_402_300_800_000, -62_135_596_800_001, 2**63 - 1):
        with pytest.raises(ValueError, match="outside years"):
            iso_ms(ms)


def test_topology_messages_outside_the_bounds_are_message_errors() -> None:
    """``dc.topology`` and ``sim.topology`` records carry the same bounds as the API (and a bounded version
    and reason); a refusal names the field."""
    host = {
        "count": 4,
        "cpu": {"coreCount": 2**62, "count": 4, "coreSpeed": 2000},
        "memory": {"memorySize": 1},
    }
    topo = {"clusters": [{"hosts": [host]}]}
    with pytest.raises(MessageError, match="coreCount"):
        decode("topology", None, json.dumps({"timestamp": T, "topology": topo}).encode())
    ok = {"clusters": [{"hosts": [{**host, "cpu": {"coreCount": 16, "coreSpeed": 2000}}]}]}
    sim = {"version": 1, "source": "api", "timestamp": T, "reason": "r", "topology": ok}
    assert isinstance(decode("sim_topology", None, json.dumps(sim).encode()), SimTopologyMessage)
    for change, field in (
        ({"version": 2**40}, "version"),
        ({"reason": "r" * 1001}, "reason"),
        ({"timestamp": 0}, "timestamp"),
    ):
        with pytest.raises(MessageError, match=field):
            decode("sim_topology", None, json.dumps({**sim, **change}).encode())
