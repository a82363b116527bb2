"""Diagnostics of a configuration that cannot be used: which key is wrong, where its value came from (the
YAML file or an ``OPENDT_<SECTION>__<KEY>`` variable), and the closest known key for a typo. Functions take
the root settings model (:class:`opendt.settings.Settings`), so this module imports nothing of it."""

from __future__ import annotations

import difflib
import os
from typing import Any

from pydantic import BaseModel, ValidationError


def _section_model(ann: Any) -> type[BaseModel] | None:
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def setting_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of the settings (``api.port``, ``kafka.topics.tasks``, …), sections included."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        out.append(key)
        sub = _section_model(field.annotation)
        if sub is not None:
            out.extend(setting_keys(sub, f"{key}."))
    return out


def env_name(key: str) -> str:
    """The environment variable of a dotted key: ``api.port`` → ``OPENDT_API__PORT``."""
    return "OPENDT_" + "__".join(key.split(".")).upper()


def suggest_key(root: type[BaseModel], key: str) -> str | None:
    """The closest known dotted key to a mistyped one (``api.prot`` → ``api.port``), or None."""
    keys = setting_keys(root)
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = [k for k in keys if (k.rsplit(".", 1)[0] if "." in k else "") == parent]
    for pool in (siblings, keys):
        match = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        if match:
            return match[0]
    return None


NOT_SETTINGS = frozenset({"OPENDT_API_TOKEN"})
"""``OPENDT_*`` variables that are not settings and are left alone: compose's ``OPENDT_API_TOKEN`` (which
compose passes on as ``OPENDT_API__TOKEN``), often exported in the operator's shell."""


def unknown_env_keys(root: type[BaseModel], environ: dict[str, str]) -> list[str]:
    """``OPENDT_*`` variables that name no setting (pydantic-settings ignores those silently), except
    :data:`NOT_SETTINGS`."""
    bad = []
    for name in environ:
        if not name.startswith("OPENDT_") or name in NOT_SETTINGS:
            continue
        parts = name[len("OPENDT_") :].lower().split("__")
        model: type[BaseModel] = root
        for i, part in enumerate(parts):
            field = model.model_fields.get(part)
            if field is None:
                bad.append(name)
                break
            sub = _section_model(field.annotation)
            if i < len(parts) - 1:
                if sub is None:
                    bad.append(name)
                    break
                model = sub
    return bad


def unknown_env_message(root: type[BaseModel], names: list[str]) -> str:
    parts = []
    for name in sorted(names):
        key = ".".join(name[len("OPENDT_") :].lower().split("__"))
        close = suggest_key(root, key)
        hint = f" (did you mean {env_name(close)}, i.e. {close}?)" if close else ""
        parts.append(f"{name}{hint}")
    return "unknown configuration variable " + "; ".join(parts) + " (see opendt config show for the keys)"


def _field_key(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[str, str]:
    """The dotted setting key of an error location, and what is left of the location past it (a union's
    branch name such as ``float`` or ``literal['max']``, a list index)."""
    model: type[BaseModel] | None = root
    parts: list[str] = []
    for i, p in enumerate(loc):
        if model is None or not isinstance(p, str) or p not in model.model_fields:
            rest = [str(x) for x in loc[i:]]
            if isinstance(p, int):  # a list item: keep the index, it names the entry
                parts.append(f"[{p}]")
                rest = rest[1:]
                return ".".join(parts).replace(".[", "["), ".".join(rest)
            return ".".join(parts), ".".join(rest)
        parts.append(p)
        model = _section_model(model.model_fields[p].annotation)
    return ".".join(parts), ""


def _source_of(key: str, file: str, environ: dict[str, str]) -> str:
    """Where a bad value came from: the environment variable that sets it (or its section), else the file."""
    parts = key.split("[")[0].split(".")
    for n in range(len(parts), 0, -1):
        name = env_name(".".join(parts[:n]))
        if name in environ:
            return f"environment variable {name}"
    return file


def format_validation_error(
    root: type[BaseModel], err: ValidationError, source: str, environ: dict[str, str] | None = None
) -> str:
    """One line per bad key: the key, where its value came from (the file or the environment variable), the
    value and what is wrong, with the closest known key for an unknown one."""
    env = dict(os.environ) if environ is None else environ
    grouped: dict[str, list[dict[str, Any]]] = {}
    for e in err.errors():
        key, _ = _field_key(root, tuple(e["loc"]))
        grouped.setdefault(key, []).append(dict(e))
    lines = ["invalid configuration:"]
    for key, errors in grouped.items():
        where = _source_of(key, source, env)
        first = errors[0]
        if first["type"] == "extra_forbidden":
            full = ".".join(str(p) for p in first["loc"])
            close = suggest_key(root, full)
            hint = f" (did you mean {close}?)" if close else ""
            lines.append(f"  {full}: unknown key in {where}{hint}")
            continue
        msgs = []
        for err_detail in errors:
            m = str(err_detail["msg"])
            m = m[0].lower() + m[1:] if m else m
            m = m.removeprefix("value error, ")
            if m not in msgs:
                msgs.append(m)
        value = first.get("input")
        shown = "" if isinstance(value, dict) or first["type"] == "missing" else f" = {value!r}"
        lines.append(f"  {key or '(top level)'}{shown} (from {where}): {', or '.join(msgs)}")
    return "\n".join(lines)
