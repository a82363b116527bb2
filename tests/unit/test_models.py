"""Topology and message models: OpenDC defaults, strictness, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opendt.models.fastdecode import decode_row
from opendt.models.messages import (
    FragmentMessage,
    FragmentRow,
    Heartbeat,
    MessageError,
    PowerMessage,
    SimTopologyMessage,
    TaskMessage,
    decode,
    encode_heartbeat,
    encode_key,
    encode_sim_topology,
    encode_topology_message,
    iso_ms,
    to_ms,
)
from opendt.models.topology import TopologyError, load_topology, parse_topology
from opendt.settings import REPO_ROOT

HOST = {"cpu": {"coreCount": 8, "coreSpeed": 2000}, "memory": {"memorySize": 1000}}


def test_surf_topology_round_trips() -> None:
    """SURF's topology.json (data/surf) parses and dumps back to the same document."""
    path = REPO_ROOT / "data" / "surf" / "topology.json"
    topo = load_topology(path)
    assert topo.to_json_dict() == json.loads(path.read_text())
    assert topo.host_count == 277
    pm = topo.clusters[0].hosts[0].cpuPowerModel
    assert (pm.modelType, pm.idlePower, pm.maxPower, pm.calibrationFactor) == ("mse", 25.0, 174.0, 4.0)


def test_opendc_defaults() -> None:
    """Missing fields take OpenDC's defaults (OPENDC_SEMANTICS §2)."""
    topo = parse_topology({"clusters": [{"hosts": [HOST]}]})
    c = topo.clusters[0]
    h = c.hosts[0]
    assert c.name == "Cluster"
    assert c.powerSource.name == "PowerSource"
    assert c.powerSource.carbonTracePath is None
    assert h.name == "Host"
    assert h.count == 1
    assert h.cpu.count == 1
    assert (h.cpuPowerModel.modelType, h.cpuPowerModel.idlePower, h.cpuPowerModel.maxPower) == (
        "linear",
        200,
        400,
    )
    assert h.cpuPowerModel.calibrationFactor == 1.0
    assert h.cpuPowerModel.dvfs is True
    assert h.cpuDistributionPolicy.type == "MAX_MIN_FAIRNESS"
    assert topo.to_json_dict() == {"clusters": [{"hosts": [HOST]}]}


def test_units_in_strings() -> None:
    """Quantities accept strings with units and are stored in OpenDC's unit (MHz, MiB, W)."""
    host = {
        "cpu": {"coreCount": 4, "coreSpeed": "2.1 GHz"},
        "memory": {"memorySize": "128 GiB"},
        "cpuPowerModel": {"modelType": "linear", "idlePower": "100 W", "maxPower": "0.2 kW"},
    }
    h = parse_topology({"clusters": [{"hosts": [host]}]}).clusters[0].hosts[0]
    assert h.cpu.coreSpeed == pytest.approx(2100)
    assert h.memory.memorySize == 131072
    assert h.cpuPowerModel.maxPower == pytest.approx(200)


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"clusters": [{"hosts": [{**HOST, "colour": "red"}]}]}, "colour: unknown key"),
        ({"clusters": [{"hosts": [{**HOST, "cpu": {"coreCount": 0, "coreSpeed": 1}}]}]}, "cpu.coreCount"),
        ({"clusters": []}, "clusters"),
        (
            {
                "clusters": [
                    {
                        "hosts": [
                            {**HOST, "cpuPowerModel": {"modelType": "quantum", "idlePower": 1, "maxPower": 2}}
                        ]
                    }
                ]
            },
            "modelType",
        ),
        (
            {
                "clusters": [
                    {
                        "hosts": [
                            {**HOST, "cpuPowerModel": {"modelType": "linear", "idlePower": 5, "maxPower": 2}}
                        ]
                    }
                ]
            },
            "maxPower",
        ),
        (
            {
                "clusters": [
                    {
                        "hosts": [
                            {
                                **HOST,
                                "cpuPowerModel": {"modelType": "asymptotic", "idlePower": 1, "maxPower": 2},
                            }
                        ]
                    }
                ]
            },
            "asymUtil",
        ),
        ({"clusters": [{"hosts": [{**HOST, "cpu": {"coreCount": 4, "coreSpeed": "3 parsecs"}}]}]}, "unit"),
    ],
)
def test_invalid_topologies_name_the_field(doc: dict[str, object], needle: str) -> None:
    """Invalid topologies are rejected with a one-line message naming the field."""
    with pytest.raises(TopologyError, match=needle) as ei:
        parse_topology(doc)
    assert "\n" not in str(ei.value)


def test_malformed_topology_file(tmp_path: Path) -> None:
    """A file that is not JSON names the file and line."""
    p = tmp_path / "topology.json"
    p.write_text('{"clusters": [')
    with pytest.raises(TopologyError, match=r"not valid JSON.*line 1"):
        load_topology(p)
    with pytest.raises(TopologyError, match="not found"):
        load_topology(tmp_path / "missing.json")


def test_iso_times() -> None:
    """Times are ISO-8601 UTC with Z and millisecond precision; round trip to epoch ms."""
    assert iso_ms(1665093600000) == "2022-10-06T22:00:00.000Z"
    assert iso_ms(1665093600123) == "2022-10-06T22:00:00.123Z"
    msg = decode(
        "power",
        encode_key("source", "dc"),
        b'{"timestamp":"2022-10-06T22:00:00.123Z","power_draw":1,"energy_usage":2}',
    )
    assert isinstance(msg, PowerMessage)
    assert msg.time_ms == 1665093600123
    assert msg.source == "dc"


def test_decode_each_stream() -> None:
    """Task, fragment, heartbeat and topology messages decode to their models."""
    t = decode(
        "tasks",
        b'{"id": "42"}',
        b'{"submission_time":"2022-10-06T22:00:00Z","duration":5,"cpu_count":16,"cpu_capacity":33600,"mem_capacity":100000}',
    )
    assert isinstance(t, TaskMessage)
    assert t.id == "42"
    f = decode(
        "fragments",
        b'{"id": 42}',
        b'{"submission_time":"2022-10-06T22:00:30Z","duration":30000,"cpu_count":16,"cpu_usage":1953.0,"index":1}',
    )
    assert isinstance(f, FragmentMessage)
    assert (f.id, f.index, f.time_ms) == ("42", 1, 1665093630000)
    hb = decode("fragments", None, encode_heartbeat(1665093600000, final=True))
    assert isinstance(hb, Heartbeat)
    assert hb.final
    assert hb.time_ms == 1665093600000
    topo = parse_topology({"clusters": [{"hosts": [HOST]}]})
    tm = decode("topology", b'"datacenter"', encode_topology_message(5, topo))
    assert tm.topology == topo  # type: ignore[union-attr]
    st = decode("sim_topology", b'"datacenter"', encode_sim_topology(3, "api", 7, "manual", topo))
    assert isinstance(st, SimTopologyMessage)
    assert (st.version, st.source, to_ms(st.timestamp)) == (3, "api", 7)


@pytest.mark.parametrize(
    ("kind", "key", "value", "needle"),
    [
        ("fragments", b'{"id":"1"}', b"not json", "not JSON"),
        ("fragments", b'{"id":"1"}', b"[1,2]", "JSON object"),
        (
            "fragments",
            None,
            b'{"submission_time":"2022-10-06T22:00:00Z","duration":1,"cpu_count":1,"cpu_usage":1,"index":0}',
            "missing key",
        ),
        (
            "fragments",
            b'{"id":"1"}',
            b'{"submission_time":"2022-10-06T22:00:00Z","duration":-1,"cpu_count":1,"cpu_usage":1,"index":0}',
            "duration",
        ),
        (
            "fragments",
            b'{"id":"1"}',
            b'{"submission_time":"2022-10-06T22:00:00","duration":1,"cpu_count":1,"cpu_usage":1,"index":0}',
            "submission_time",
        ),
        (
            "fragments",
            b'{"id":"1"}',
            b'{"submission_time":"2022-10-06T22:00:00Z","duration":1,"cpu_count":1,"cpu_usage":"x","index":0}',
            "cpu_usage",
        ),
        (
            "tasks",
            b'{"id":"1"}',
            b'{"submission_time":"2022-10-06T22:00:00Z","duration":1,"cpu_count":1,"cpu_capacity":1,"mem_capacity":1,"x":1}',
            "unknown key",
        ),
        ("power", b'{"source":"a"}', None, "tombstone"),
        (
            "sim_topology",
            b'"datacenter"',
            b'{"heartbeat":"2022-10-06T22:00:00Z"}',
            "heartbeats are not expected",
        ),
    ],
)
def test_malformed_messages_raise_message_error(
    kind: str, key: bytes | None, value: bytes | None, needle: str
) -> None:
    """Malformed messages raise MessageError with a one-line reason."""
    with pytest.raises(MessageError, match=needle):
        decode(kind, key, value)  # type: ignore[arg-type]


GOOD_FRAGMENT = b'{"submission_time":"2022-10-06T22:00:30.000Z","duration":30000,"cpu_count":16,"cpu_usage":1953.0,"index":1}'


def test_decode_row_fast_path_agrees_with_the_models() -> None:
    """The fast row decoder returns what the pydantic models decode, for every stream and heartbeats."""
    assert decode_row("fragments", b'{"id":"42"}', GOOD_FRAGMENT) == (
        "42",
        1665093630000,
        30000,
        16,
        1953.0,
        1,
    )
    row = decode_row("fragments", b'{"id":42}', GOOD_FRAGMENT)
    assert isinstance(row, FragmentRow)
    assert row.id == "42"
    task = b'{"submission_time":"2022-10-06T22:00:00+00:00","duration":5,"cpu_count":16,"cpu_capacity":33600,"mem_capacity":100000}'
    assert decode_row("tasks", b'{"id":"a"}', task) == ("a", 1665093600000, 5, 16, 33600.0, 100000)
    power = b'{"timestamp":"2022-10-06T22:00:30Z","power_draw":22008,"energy_usage":660240.5}'
    assert decode_row("power", b'{"source":"dc"}', power) == ("dc", 1665093630000, 22008.0, 660240.5)
    hb = decode_row("power", None, encode_heartbeat(1665093600000, final=True))
    assert isinstance(hb, Heartbeat)
    assert (hb.time_ms, hb.final) == (1665093600000, True)


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        (b'{"id":"1"}', b"not json", "not JSON"),
        (None, GOOD_FRAGMENT, "missing key"),
        (b'{"id":"1"}', GOOD_FRAGMENT.replace(b"30000,", b"-1,"), "duration"),
        (b'{"id":"1"}', GOOD_FRAGMENT.replace(b".000Z", b""), "submission_time"),
        (b'{"id":"1"}', GOOD_FRAGMENT.replace(b'"index":1', b'"index":1,"x":2'), "unknown key"),
        (b'{"id":"1"}', GOOD_FRAGMENT.replace(b'"cpu_count":16', b'"cpu_count":true'), "cpu_count"),
        (b'{"id":"1"}', b'{"heartbeat":"2022-10-06T22:00:00Z","final":"yes"}', "final"),
    ],
)
def test_decode_row_rejects_what_the_models_reject(key: bytes | None, value: bytes, needle: str) -> None:
    """Bad fragments fail the fast path with the models' message."""
    with pytest.raises(MessageError, match=needle):
        decode_row("fragments", key, value)
