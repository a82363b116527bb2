"""/openapi.json: a valid OpenAPI 3.1 document covering every JSON route; the running daemon's answers follow it;
schemathesis, driven by it against the running daemon, finds no 5xx and no answer outside the document."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from opendt.api.app import create_app
from opendt.api.openapi import openapi_document
from opendt.settings import ApiSettings, Settings
from opendt.twin.status import TwinState

from .conftest import DEMO, running_twin

TOKEN = "oa-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNDOCUMENTED = ("/", "/docs", "/openapi.json", "/asyncapi.json", "/static", "/grafana")
"""Not JSON operations of ours (pages, the documents themselves) or specified elsewhere (the Grafana protocol)."""


def test_document_is_valid_and_covers_every_route() -> None:
    """The document validates as OpenAPI 3.1, and documents exactly the JSON routes the app serves."""
    doc = openapi_document(token=True)
    validate(doc)
    app = create_app(TwinState(), ApiSettings(token=TOKEN))
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
        and r.method != "HEAD"
        and not any(
            r.resource.canonical == p or r.resource.canonical.startswith(p + "/") for p in UNDOCUMENTED
        )
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in ("put", "post"):
                assert op["security"] == [{"bearer": []}], path
                assert "401" in op["responses"], path


def _validator(doc: dict[str, Any], method: str, path: str, status: int) -> Draft202012Validator:
    resp = doc["paths"][path][method]["responses"][str(status)]
    schema = resp["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": doc["components"]})


@pytest.fixture
async def twin(daemon_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    settings = daemon_settings(DEMO).model_copy(
        update={"api": ApiSettings(port=0, token=TOKEN, whatif_max_range_s=86400)}
    )
    async with running_twin(settings) as (url, _):
        yield url


async def test_answers_follow_the_document(twin: str) -> None:
    """Every operation, in its success and its error answers, on the running daemon: status documented and
    body valid against the document's schema for that status."""
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{twin}/openapi.json") as r:
            doc = await r.json()
        async with s.get(f"{twin}/docs") as r:
            assert r.status == 200
            assert "/openapi.json" in await r.text()
        async with s.get(f"{twin}/api/topology") as r:
            physical = (await r.json())["physical"]
        calls: list[tuple[str, str, dict[str, Any], Any, dict[str, str]]] = [
            ("get", "/health", {}, None, {}),
            ("get", "/api/status", {}, None, {}),
            ("get", "/api/power", {"step_s": "600"}, None, {}),
            ("get", "/api/power", {"start": "2024-03-04T06:00:00Z", "end": "1709560800000"}, None, {}),
            ("get", "/api/power", {"start": "yesterday"}, None, {}),
            ("get", "/api/power", {"step_s": "0"}, None, {}),
            ("get", "/api/carbon", {"step_s": "3600"}, None, {}),
            ("get", "/api/windows", {"limit": "5"}, None, {}),
            ("get", "/api/windows", {"limit": "x"}, None, {}),
            ("get", "/api/topology", {}, None, {}),
            ("get", "/api/calibration", {}, None, {}),
            (
                "post",
                "/api/whatif",
                {},
                {
                    "start": "2024-03-04T06:00:00Z",
                    "end": "2024-03-04T07:00:00Z",
                    "patch": {"cpu.coreSpeed": 2000},
                },
                AUTH,
            ),
            ("post", "/api/whatif", {}, {"start": 0, "end": 1, "patch": {"cpu.coreSpeed": 2000}}, AUTH),
            ("post", "/api/whatif", {}, {"start": 0}, {}),
            ("put", "/api/topology", {}, {"topology": physical, "reason": "doc test"}, AUTH),
            ("put", "/api/topology", {}, {"clusters": "no"}, AUTH),
            ("post", "/api/topology/reset", {}, None, AUTH),
        ]
        for method, path, params, body, headers in calls:
            async with s.request(method, f"{twin}{path}", params=params, json=body, headers=headers) as r:
                assert str(r.status) in doc["paths"][path][method]["responses"], (path, params, r.status)
                payload = await r.json()
                errors = list(_validator(doc, method, path, r.status).iter_errors(payload))
                assert not errors, (path, params, r.status, [e.message for e in errors[:3]])


async def test_schemathesis_finds_no_server_errors(twin: str, tmp_path: Path) -> None:
    """schemathesis (examples, coverage and fuzzing phases) against the live daemon: no 5xx, every status and
    body and content type as documented."""
    st = Path(sys.executable).with_name("st")
    # One worker: with two, schemathesis's threads call hypothesis's ast.parse concurrently, which CPython
    # 3.11.7 does not survive ("AST constructor recursion depth mismatch", a SystemError seen in CI).
    proc = await asyncio.create_subprocess_exec(
        str(st), "run", f"{twin}/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--max-examples", "25", "--seed", "7", "--workers", "1",
        "--phases", "examples,coverage,fuzzing",
        "-H", f"Authorization: Bearer {TOKEN}",
        "--request-timeout", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
        cwd=tmp_path,
    )  # fmt: skip
    async with asyncio.timeout(600):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    assert proc.returncode == 0, text[-6000:]
    async with aiohttp.ClientSession() as s, s.get(f"{twin}/health") as r:
        assert r.status == 200
