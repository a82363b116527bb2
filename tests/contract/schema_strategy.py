"""Hypothesis strategies read off the AsyncAPI document's JSON Schemas (the subset the message models use:
objects with properties, required and additionalProperties, integers and numbers with bounds, strings with a
length or a date-time format, booleans, nulls, type lists, anyOf, enum/const, local $ref).

hypothesis-jsonschema does not work with this hypothesis (its object strategy uses a removed internal), so
the few keywords the document uses are mapped here; every value drawn is checked against the schema with
jsonschema (format checking on) before a test uses it, so the generator cannot drift from the document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft7Validator, FormatChecker


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft7Validator:
    """A validator of ``schema`` whose ``#/components/...`` references resolve in ``doc``."""
    return Draft7Validator({**schema, "components": doc["components"]}, format_checker=FormatChecker())


def _years(pattern: str) -> tuple[int, int]:
    """The year range of the document's time pattern (``^(19[7-9][0-9]|2[01][0-9]{2})-...``)."""
    assert pattern.startswith("^(19[7-9][0-9]|2[01][0-9]{2})-"), pattern
    return 1970, 2199


@st.composite
def _time(draw: st.DrawFn, schema: dict[str, Any]) -> str:
    lo, hi = _years(schema["pattern"])
    t = draw(st.datetimes(min_value=datetime(lo, 1, 1), max_value=datetime(hi, 12, 31, 23, 59, 59)))
    minutes = draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))
    frac = draw(st.sampled_from(["", ".", ".", "."]))
    if frac:
        frac += f"{t.microsecond:06d}"[: draw(st.integers(1, 6))]
    body = t.strftime("%Y-%m-%dT%H:%M:%S") + frac
    if minutes == 0 and draw(st.booleans()):
        return body + "Z"
    sign = "+" if minutes >= 0 else "-"
    return body + f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def utc_ms(text: str) -> int:
    """A generated time in epoch ms (UTC)."""
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def strategy(doc: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of ``schema`` (references resolved in ``doc``)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return strategy(doc, doc["components"]["schemas"][name])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([strategy(doc, s) for s in schema["anyOf"]])
    types = schema.get("type")
    if isinstance(types, list):
        return st.one_of([strategy(doc, {**schema, "type": t}) for t in types])
    if types == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {k: strategy(doc, v) for k, v in props.items() if k in required}
        optional = {k: strategy(doc, v) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(fields, optional=optional)
    if types == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if types == "number":
        return st.one_of(
            st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False),
            st.integers(
                None if "minimum" not in schema else int(schema["minimum"]),
                None if "maximum" not in schema else int(schema["maximum"]),
            ),
        )
    if types == "boolean":
        return st.booleans()
    if types == "null":
        return st.none()
    if types == "string":
        if schema.get("format") == "date-time":
            return _time(schema)
        assert "pattern" not in schema, schema
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 40))
    raise AssertionError(f"schema keyword not mapped: {schema}")
