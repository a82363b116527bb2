"""``docs/streams.md``: the AsyncAPI document (:mod:`opendt.api.asyncapi`) rendered as Markdown.

The file is generated: ``python -m opendt.api.streams_doc`` rewrites it, and a test fails when the committed
file differs from what the document renders.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from opendt.api.asyncapi import asyncapi_document

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "streams.md"


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return f"object `{name}`"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    t = schema.get("type", "any")
    if isinstance(t, list):
        t = " or ".join(t)
    if t == "array" and "items" in schema:
        return f"array of {_type(schema['items'])}"
    if schema.get("format") == "date-time":
        return "time"
    return str(t)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _bounds(schema: dict[str, Any]) -> str:
    parts = []
    if "const" in schema:
        parts.append(f"= `{orjson.dumps(schema['const']).decode()}`")
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None and hi is not None:
        parts.append(f"{_num(lo)} … {_num(hi)}")
    elif lo is not None:
        parts.append(f"≥ {_num(lo)}")
    if "maxLength" in schema:
        parts.append(f"≤ {schema['maxLength']} chars")
    if "default" in schema:
        parts.append(f"default `{orjson.dumps(schema['default']).decode()}`")
    return "; ".join(parts)


def _fields(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    lines = ["| field | type | required | bounds | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, prop in schema.get("properties", {}).items():
        desc = str(prop.get("description", "")).replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| `{name}` | {_type(prop)} | {'yes' if name in required else 'no'} | {_bounds(prop)} | {desc} |"
        )
    return lines


def _resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def _message(doc: dict[str, Any], msg: dict[str, Any]) -> list[str]:
    out = [f"#### {msg['title']} (`{msg['name']}`)", ""]
    if "description" in msg:
        out += [msg["description"], ""]
    out += [f"Content type: `{msg.get('contentType', 'application/json')}`."]
    key = msg.get("bindings", {}).get("kafka", {}).get("key")
    if key is not None:
        out += [f"Key: {_type(key)}. {key.get('description', '')}".rstrip()]
    headers = msg.get("headers")
    if headers:
        hs = ", ".join(
            f"`{n}`{' (required)' if n in headers.get('required', []) else ''}"
            + (f": {_bounds(p) or p.get('description', '')}" if _bounds(p) or p.get("description") else "")
            for n, p in headers.get("properties", {}).items()
        )
        out += [f"Headers: {hs}."]
    out.append("")
    payload = msg["payload"]
    if "$ref" in payload:
        name = payload["$ref"].rsplit("/", 1)[-1]
        schema = _resolve(doc, payload["$ref"])
        out += [f"Value: `{name}`" + (f": {schema['description']}" if "description" in schema else ""), ""]
        out += [*_fields(schema), ""]
    else:
        out += [f"Value: {payload.get('description', 'any')}", ""]
    for ex in msg.get("examples", []):
        title = f"Example `{ex['name']}`" + (f" ({ex['summary']})" if "summary" in ex else "")
        out += [f"{title}:", "", "```json"]
        if "headers" in ex:
            out.append("// headers " + orjson.dumps(ex["headers"]).decode())
        out += [orjson.dumps(ex["payload"]).decode(), "```", ""]
    return out


def render(doc: dict[str, Any] | None = None) -> str:
    """The Markdown page of ``doc`` (default: the twin's AsyncAPI document)."""
    d = doc if doc is not None else asyncapi_document()
    out = [
        "<!-- Generated from opendt/api/asyncapi.py by `python -m opendt.api.streams_doc`; do not edit. -->",
        "",
        f"# {d['info']['title']} (AsyncAPI {d['asyncapi']}, served at `GET /asyncapi.json`)",
        "",
        d["info"]["description"].rstrip(),
        "",
        "## Topics",
        "",
        "| topic | the twin | messages |",
        "| --- | --- | --- |",
    ]
    actions = {op["channel"]["$ref"].rsplit("/", 1)[-1]: op["action"] for op in d["operations"].values()}
    for cid, ch in d["channels"].items():
        who = "reads" if actions[cid] == "receive" else "writes"
        msgs = ", ".join(f"`{_resolve(d, m['$ref'])['name']}`" for m in ch["messages"].values())
        out.append(f"| `{ch['address']}` | {who} | {msgs} |")
    out.append("")
    for cid, ch in d["channels"].items():
        who = "read" if actions[cid] == "receive" else "written"
        out += [f"## `{ch['address']}` ({who} by the twin)", "", ch.get("summary", "") + ".", ""]
        for m in ch["messages"].values():
            out += _message(d, _resolve(d, m["$ref"]))
    out += ["## Shared schemas", ""]
    for name in ("ResultPoint", "Topology", "Cluster", "Host"):
        schema = d["components"]["schemas"][name]
        out += [f"### `{name}`", "", *_fields(schema), ""]
    out += ["## Security", ""]
    for name, scheme in d["components"]["securitySchemes"].items():
        out.append(f"- `{name}` ({scheme['type']}): {scheme.get('description', '')}")
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {DOC_PATH}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
