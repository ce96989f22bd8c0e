"""The official Proxmox VE API schema, translated to JSON Schema for checks.

Proxmox writes its schema in its own dialect of JSON Schema draft 3:
properties are required unless ``optional: 1``, booleans may be the
integers 0 and 1, ``additionalProperties`` is allowed unless it is 0,
property names such as ``net[n]`` stand for ``net0``, ``net1``...,
patterns are anchored and written in Perl, and ``format`` names Proxmox
parsers. :func:`translate` turns that into draft 2020-12 for
``jsonschema``; keywords it does not know raise instead of being skipped.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_FILE = "pve-api-schema-9.1.3.json"

#: Keywords that describe but do not constrain.
_ANNOTATIONS = {
    "description",
    "verbose_description",
    "title",
    "typetext",
    "renderer",
    "format_description",
    "default",
    "default_key",
    "links",
    "alias",
    "requires",
    "optional",
    "format",
    "keyAlias",
    "print_width",
}
_SCALARS = {"string", "integer", "number", "null", "array", "object"}


def schema_dir() -> Path:
    """Return ``$JIT_PVE_API_SCHEMA_DIR``, else ``<repo>/../shared/pve-api``,
    where CI and developers keep the official schema."""
    configured = os.environ.get("JIT_PVE_API_SCHEMA_DIR")
    if configured:
        return Path(configured).resolve()
    repo = Path(__file__).resolve().parents[2]
    return (repo / ".." / "shared" / "pve-api").resolve()


def missing_schema() -> str | None:
    """Say why the schema cannot be read, or None when it can."""
    path = schema_dir() / SCHEMA_FILE
    if path.is_file():
        return None
    return (
        f"the official Proxmox API schema is not at {path}: put pve-docs' "
        f"{SCHEMA_FILE} there or name its folder in JIT_PVE_API_SCHEMA_DIR"
    )


@functools.cache
def load_index() -> dict[str, dict[str, Any]]:
    """Return ``{path: {METHOD: info}}`` for every path of the schema."""
    tree = json.loads((schema_dir() / SCHEMA_FILE).read_text())
    index: dict[str, dict[str, Any]] = {}
    stack = list(tree)
    while stack:
        node = stack.pop()
        index[node["path"]] = node.get("info") or {}
        stack.extend(node.get("children") or [])

    return index


def method_info(method: str, path: str) -> dict[str, Any]:
    """Return the schema's description of ``method path`` (a template)."""
    return load_index()[path][method]


@functools.cache
def returns_validator(method: str, path: str) -> jsonschema.Draft202012Validator:
    """Return a validator for what ``method path`` puts inside ``data``."""
    schema = translate(method_info(method, path)["returns"])
    jsonschema.Draft202012Validator.check_schema(schema)

    return jsonschema.Draft202012Validator(schema)


def translate(pve: dict[str, Any]) -> dict[str, Any]:
    """Translate one Proxmox schema into JSON Schema draft 2020-12."""
    out: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    out.update(_translate(pve))

    return out


def _translate(pve: dict[str, Any]) -> dict[str, Any]:
    unknown = set(pve) - _ANNOTATIONS - _KEYWORDS
    if unknown:
        raise NotImplementedError(f"schema keywords not supported: {sorted(unknown)}")
    out: dict[str, Any] = {}
    alternatives = _types(pve.get("type"))
    if alternatives is not None:
        out["anyOf"] = alternatives
    for keyword in ("enum", "minimum", "maximum", "minLength", "maxLength"):
        if keyword in pve:
            out[keyword] = pve[keyword]
    if "pattern" in pve:
        out["pattern"] = _pattern(pve["pattern"])
    if "items" in pve:
        out["items"] = _translate(pve["items"])
    if "properties" in pve or "additionalProperties" in pve:
        out.update(_object(pve))

    return out


def _types(pve_type: Any) -> list[dict[str, Any]] | None:
    """Return the JSON Schema alternatives for a Proxmox ``type``."""
    if pve_type is None or pve_type == "any":
        return None
    names = pve_type if isinstance(pve_type, list) else [pve_type]
    alternatives: list[dict[str, Any]] = []
    for name in names:
        if name == "boolean":
            alternatives += [{"type": "boolean"}, {"type": "integer", "enum": [0, 1]}]
        elif name in _SCALARS:
            alternatives.append({"type": name})
        else:
            raise NotImplementedError(f"schema type not supported: {name!r}")

    return alternatives


def _object(pve: dict[str, Any]) -> dict[str, Any]:
    """Translate properties: required unless optional, ``x[n]`` as a pattern."""
    properties: dict[str, Any] = {}
    patterns: dict[str, Any] = {}
    required: list[str] = []
    for name, sub in (pve.get("properties") or {}).items():
        if name.endswith("[n]"):
            patterns[f"^{re.escape(name[:-3])}[0-9]+$"] = _translate(sub)
            continue
        properties[name] = _translate(sub)
        if not sub.get("optional"):
            required.append(name)
    out: dict[str, Any] = {"properties": properties, "required": required}
    if patterns:
        out["patternProperties"] = patterns
    extra = pve.get("additionalProperties", 1)
    if isinstance(extra, dict):
        out["additionalProperties"] = _translate(extra)
    else:
        out["additionalProperties"] = bool(extra)

    return out


def _pattern(perl: str) -> str:
    """Anchor a Proxmox (Perl) pattern and turn ``(?^:`` into ``(?:``."""
    python = perl.replace("(?^:", "(?:")
    re.compile(python)

    return f"^(?:{python})$"


_KEYWORDS = {
    "type",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "items",
    "properties",
    "additionalProperties",
}
