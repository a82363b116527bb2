"""The stream contract (issue 24 item 1): the AsyncAPI document is served, parses with the AsyncAPI parser,
its examples are accepted by the decoder, docs/streams.md is its rendering, and the decoder agrees with its
schemas: values generated from them are accepted, broken ones rejected with the field named."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from opendt.api.app import serve_api
from opendt.api.asyncapi import asyncapi_document
from opendt.api.streams import STREAMS
from opendt.api.streams_doc import DOC_PATH, render
from opendt.models.bounds import MAX_TIME_MS, MIN_TIME_MS
from opendt.models.fastdecode import decode_row
from opendt.models.messages import Heartbeat, MessageError, decode
from opendt.settings import ApiSettings
from opendt.twin.status import TwinState

from .schema_strategy import strategy, utc_ms, validator

REPO = Path(__file__).resolve().parents[2]
PARSER = REPO / ".cache" / "asyncapi-parser" / "node_modules"
DOC = asyncapi_document()
INPUTS = [s for s in STREAMS if s.action == "receive" and s.kind != "topology"]
TIME_FIELD = {
    "tasks": "submission_time",
    "fragments": "submission_time",
    "power": "timestamp",
    "carbon": "timestamp",
}


def _message(name: str) -> dict[str, Any]:
    msg: dict[str, Any] = DOC["components"]["messages"][name]
    return msg


def _payload(name: str) -> dict[str, Any]:
    ref = _message(name)["payload"]["$ref"]
    schema: dict[str, Any] = DOC["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return schema


@functools.cache
def _validator(name: str) -> Draft7Validator:
    return validator(DOC, _payload(name))


def _decode(kind: str, key: bytes | None, value: bytes) -> Any:
    if kind in ("tasks", "fragments", "power"):
        return decode_row(kind, key, value)  # type: ignore[arg-type]
    return decode(kind, key, value)  # type: ignore[arg-type]


def test_parser_accepts_the_document(tmp_path: Path) -> None:
    """The official AsyncAPI parser (npm @asyncapi/parser, installed by .ci/install-asyncapi-parser) reports
    no error on the document; a document with a broken reference is reported (the check can fail)."""
    node = shutil.which("node")
    if node is None or not (PARSER / "@asyncapi" / "parser").is_dir():
        pytest.skip("no node or @asyncapi/parser (bash .ci/install-asyncapi-parser installs it)")
    script = Path(__file__).with_name("asyncapi_parse.cjs")

    def parse(doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "doc.json"
        path.write_text(json.dumps(doc))
        return subprocess.run(
            [node, str(script), str(path)],
            env={"NODE_PATH": str(PARSER), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    ok = parse(DOC)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = json.loads(json.dumps(DOC))
    broken["channels"]["tasks"]["messages"]["tasks"] = {"$ref": "#/components/messages/nothing"}
    bad = parse(broken)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert '"severity":0' in bad.stdout


def test_every_topic_and_message_is_documented() -> None:
    """Every topic of the twin is a channel, with the twin's direction; the input streams that carry
    heartbeats and batches say so."""
    channels = {c["address"]: c for c in DOC["channels"].values()}
    assert set(channels) == {
        "dc.tasks", "dc.fragments", "dc.power", "dc.carbon", "dc.topology",
        "sim.topology", "sim.results", "dc.deadletter",
    }  # fmt: skip
    actions = {op["channel"]["$ref"].rsplit("/", 1)[-1]: op["action"] for op in DOC["operations"].values()}
    assert actions == {
        "tasks": "receive", "fragments": "receive", "power": "receive", "carbon": "receive",
        "topology": "receive", "sim_topology": "send", "sim_results": "send", "dead_letter": "send",
    }  # fmt: skip
    for kind in ("tasks", "fragments", "power"):
        names = set(DOC["channels"][kind]["messages"])
        assert names == {kind.capitalize(), f"{kind.capitalize()}Batch", "heartbeat"}
        batch = _message(f"{kind.capitalize()}Batch")
        assert batch["contentType"] == "application/x-ndjson"
        assert batch["headers"]["properties"]["content-type"]["const"] == "application/x-ndjson"
    assert "heartbeat" in DOC["channels"]["carbon"]["messages"]
    assert "heartbeat" not in DOC["channels"]["topology"]["messages"]
    # units are in the schemas
    assert "(W)" in _payload("Power")["properties"]["power_draw"]["description"]
    assert "gCO2/kWh" in _payload("Carbon")["properties"]["carbon_intensity"]["description"]


def test_examples_validate_and_decode() -> None:
    """Every example validates against its message's schema and is what the decoder accepts (the key of a
    record example is in its summary); a batch example is a record with its key's field inline."""
    for s in STREAMS:
        name = s.kind.replace("_", " ").title().replace(" ", "")
        msg = _message(name)
        (ex,) = msg["examples"]
        validator(DOC, msg["payload"]).validate(ex["payload"])
        validator(DOC, msg["bindings"]["kafka"]["key"]).validate(s.example_key)
        assert ex["summary"] == f"key {orjson.dumps(s.example_key).decode()}"
        key = s.example_key.encode() if s.kind == "sim_results" else orjson.dumps(s.example_key)
        decoded = decode(s.kind, key, orjson.dumps(ex["payload"]))
        if s.key_field is not None:
            assert getattr(decoded, s.key_field) == s.example_key[s.key_field]
        if s.batch:
            (line,) = _message(f"{name}Batch")["examples"]
            validator(DOC, _message(f"{name}Batch")["payload"]).validate(line["payload"])
            assert line["payload"] == {**s.example_key, **s.example}
    for ex in _message("heartbeat")["examples"]:
        validator(DOC, _message("heartbeat")["payload"]).validate(ex["payload"])
        assert isinstance(decode("tasks", None, orjson.dumps(ex["payload"])), Heartbeat)


async def test_served_at_asyncapi_json() -> None:
    """GET /asyncapi.json on the API answers the document."""
    async with (
        serve_api(TwinState(), ApiSettings(port=0)) as url,
        aiohttp.ClientSession() as s,
        s.get(f"{url}/asyncapi.json") as r,
    ):
        assert r.status == 200
        assert r.content_type == "application/json"
        assert await r.json() == json.loads(json.dumps(DOC))


def test_streams_md_is_up_to_date() -> None:
    """docs/streams.md is the rendering of the document (regenerate: python -m opendt.api.streams_doc)."""
    assert DOC_PATH.read_text(encoding="utf-8") == render(), "run: python -m opendt.api.streams_doc"


# --- the decoder against the schemas ---------------------------------------------------------------------


def _drawn(kind: str, heartbeat: bool) -> st.SearchStrategy[tuple[bytes | None, dict[str, Any], str]]:
    """``(key bytes, value, the value's time field)`` from the document's schemas of stream ``kind``."""
    if heartbeat:
        value = strategy(DOC, _payload("heartbeat"))
        return value.map(lambda v: (None, v, "heartbeat"))
    name = kind.capitalize()
    key = strategy(DOC, _message(name)["bindings"]["kafka"]["key"])
    value = strategy(DOC, _payload(name))
    return st.tuples(key.map(lambda k: orjson.dumps(k)), value, st.just(TIME_FIELD[kind]))


STREAM = st.sampled_from([(s.kind, hb) for s in INPUTS for hb in (False, True)])
RELAXED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RELAXED
@given(data=st.data(), which=STREAM)
def test_generated_messages_are_accepted(data: st.DataObject, which: tuple[str, bool]) -> None:
    """A key and value drawn from the document's schemas (checked valid with jsonschema) decode, with the
    same values; the only ones refused are those whose time, with its zone, falls outside [1970, 2200) UTC
    (the schema's year pattern cannot see the offset), and the refusal names the time field."""
    kind, heartbeat = which
    key, value, when = data.draw(_drawn(kind, heartbeat))
    name = "heartbeat" if heartbeat else kind.capitalize()
    _validator(name).validate(value)
    if not MIN_TIME_MS <= utc_ms(value[when]) < MAX_TIME_MS:
        # only the zone's offset may carry a time out: the time as written is inside the bounds
        assert MIN_TIME_MS <= utc_ms(value[when][:19] + "Z") < MAX_TIME_MS, value[when]
        with pytest.raises(MessageError, match=when):
            _decode(kind, key, orjson.dumps(value))
        return
    got = _decode(kind, key, orjson.dumps(value))
    if heartbeat:
        assert isinstance(got, Heartbeat)
        assert got.time_ms == utc_ms(value["heartbeat"])
        assert got.final == value.get("final", False)
        return
    if kind != "carbon":
        assert key is not None
        ident = orjson.loads(key)["id" if kind != "power" else "source"]
        assert got[0] == str(ident)
    fields = got._asdict() if kind != "carbon" else got.model_dump()
    fields["index"] = fields.pop("position", None)
    # a number field is a float: an integer above 2**53 is taken as the nearest float, as every JSON reader does
    sent = {k: float(v) if isinstance(fields[k], float) else v for k, v in value.items() if k != when}
    assert sent == {k: fields[k] for k in value if k != when}


def _break(data: st.DataObject, schema: dict[str, Any], value: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A copy of ``value`` broken in one field the schema constrains; returns the field and the copy. (Without
    its ``heartbeat`` field a heartbeat is not one: it is then judged as a record.)"""
    props = schema["properties"]
    field = data.draw(st.sampled_from(sorted(props)))
    prop = props[field]
    broken = dict(value)
    how = data.draw(st.sampled_from(["missing", "type", "bound", "zone", "unknown"]))
    if how == "unknown":
        field = "unexpected_field"
        broken[field] = 1
    elif how == "missing" and field in schema.get("required", []) and field != "heartbeat":
        del broken[field]
    elif prop.get("format") == "date-time":
        broken[field] = broken.get(field, "2024-01-01T00:00:00Z")
        broken[field] = broken[field][:19] if how == "zone" else 1_704_067_200
    elif "maximum" in prop and how == "bound":
        broken[field] = prop["maximum"] * 2 + 1
    elif prop.get("type") == "boolean":
        broken[field] = "yes"
    else:
        broken[field] = "not a number"
    return field, broken


@RELAXED
@given(data=st.data(), which=STREAM)
def test_broken_messages_are_rejected_naming_the_field(data: st.DataObject, which: tuple[str, bool]) -> None:
    """A valid drawn value broken in one field (missing, wrong type, out of bounds, a time without zone, an
    unknown field) is invalid for the schema, and the decoder refuses it with a reason naming that field."""
    kind, heartbeat = which
    key, value, _ = data.draw(_drawn(kind, heartbeat))
    name = "heartbeat" if heartbeat else kind.capitalize()
    schema = _payload(name)
    field, broken = _break(data, schema, value)
    assert not _validator(name).is_valid(broken)
    with pytest.raises(MessageError) as e:
        _decode(kind, key, orjson.dumps(broken))
    assert field in str(e.value)
