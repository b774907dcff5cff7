"""Sample payloads built from a capability's input contract (JSON Schema).

Used by ``thaw bench coldstart`` to invoke capabilities of any app without the
user writing payloads: the smallest value that satisfies the schema (required
fields only, first enum member, minimum of a range). The result is checked by
decoding it with the contract; when that fails the caller falls back to ``{}``
and reports the outcome it got, so nothing is hidden.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["sample_payload"]

_MAX_DEPTH = 12


def sample_payload(contract: Any) -> bytes:
    """A JSON payload that decodes into ``contract``, or ``b"{}"`` if none could be built."""
    if contract is None:
        return b""
    if contract is bytes:
        return b"{}"
    try:
        schema = msgspec.json.schema(contract)
        value = _sample(schema, schema.get("$defs", {}), 0)
        data = msgspec.json.encode(value)
        msgspec.json.decode(data, type=contract)
    except (TypeError, ValueError, RecursionError, msgspec.MsgspecError):
        return b"{}"
    return data


def _sample(schema: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError("schema nests too deeply")
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _sample(defs[name], defs, depth + 1)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return _sample(options[0], defs, depth + 1)
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            name: _sample(properties[name], defs, depth + 1)
            for name in schema.get("required", [])
            if name in properties
        }
    if kind == "array":
        count = schema.get("minItems", 0)
        return [_sample(schema.get("items", {}), defs, depth + 1) for _ in range(count)]
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return max(int(low), 0) if "maximum" not in schema else int(low)
    if kind == "number":
        return float(schema.get("minimum", 0.0))
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return {}


def _string(schema: dict[str, Any]) -> str:
    formats = {
        "date-time": "2026-01-01T00:00:00Z",
        "date": "2026-01-01",
        "time": "00:00:00Z",
        "uuid": "00000000-0000-4000-8000-000000000000",
        "duration": "P0D",
        "email": "someone@example.com",
        "uri": "https://example.com/",
    }
    value = formats.get(schema.get("format", ""), "x" * max(int(schema.get("minLength", 1)), 1))
    if "maxLength" in schema:
        value = value[: int(schema["maxLength"])]
    return value
