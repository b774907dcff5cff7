"""The OpenAPI 3.1 document for an app's ``http`` triggers, built once at start.

Paths come from the triggers (``{name:int}`` becomes ``{name}`` with an integer
schema), request bodies and 200 responses from the capabilities' msgspec
contracts (``msgspec.json.schema_components``, so shared Structs appear once under
``components/schemas``), errors from RFC 9457 problem details with Thaw's codes.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from thaw import App
from thaw.lowlevel import HttpTrigger

__all__ = ["openapi_document", "openapi_bytes"]

_PARAM = re.compile(r"\{([^{}:]+)(?::[^{}]*)?\}")
_PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "path": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "uuid": {"type": "string", "format": "uuid"},
}
_PROBLEM: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is Thaw's stable error code.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "event_id": {"type": "string"},
    },
    "required": ["type", "title", "status", "code"],
}
_REF = "#/components/schemas/{name}"


def openapi_document(app: App, *, version: str = "0.0.0") -> dict[str, Any]:
    contracts: list[Any] = []
    for spec in app.capabilities.values():
        for contract in (spec.input_type if spec.takes_payload else None, spec.output_type):
            if contract is not None and contract is not bytes and contract not in contracts:
                contracts.append(contract)
    schemas, components = _schemas(contracts)
    paths: dict[str, dict[str, Any]] = {}
    for spec in app.capabilities.values():
        for trigger in spec.triggers:
            if not isinstance(trigger, HttpTrigger):
                continue
            operation: dict[str, Any] = {
                "operationId": spec.name,
                "summary": (spec.description.splitlines() or [spec.name])[0],
                "responses": _responses(spec, schemas, trigger),
            }
            if trigger.params:
                operation["parameters"] = [
                    {"name": name, "in": "path", "required": True, "schema": _PARAM_SCHEMAS[kind]}
                    for name, kind in trigger.params
                ]
            if spec.takes_payload and trigger.method not in ("GET", "HEAD", "DELETE"):
                operation["requestBody"] = _body(spec.input_type, schemas)
            path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", trigger.path)
            paths.setdefault(path, {})[trigger.method.lower()] = operation
    components["Problem"] = _PROBLEM
    return {
        "openapi": "3.1.0",
        "info": {"title": app.name, "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }


def openapi_bytes(app: App, *, version: str = "0.0.0") -> bytes:
    return msgspec.json.encode(openapi_document(app, version=version))


def _schemas(contracts: list[Any]) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    usable = []
    for contract in contracts:
        try:
            msgspec.json.schema(contract)
        except (TypeError, ValueError):
            continue  # a contract JSON Schema cannot express is left out, not fatal
        usable.append(contract)
    if not usable:
        return {}, {}
    found, components = msgspec.json.schema_components(usable, ref_template=_REF)
    return {id(c): s for c, s in zip(usable, found, strict=True)}, dict(components)


def _body(contract: Any, schemas: dict[int, dict[str, Any]]) -> dict[str, Any]:
    if contract is bytes:
        content: dict[str, Any] = {"application/octet-stream": {"schema": {}}}
    else:
        content = {"application/json": {"schema": schemas.get(id(contract), {})}}
    return {"required": True, "content": content}


def _responses(spec: Any, schemas: dict[int, dict[str, Any]], trigger: HttpTrigger) -> Any:
    problem = {"application/problem+json": {"schema": {"$ref": _REF.format(name="Problem")}}}
    responses: dict[str, Any] = {}
    if trigger.enqueue:
        responses["202"] = {"description": "accepted; poll the status URL"}
    elif spec.output_type is None:
        responses["204"] = {"description": "done, nothing to return"}
    else:
        schema = {} if spec.output_type is bytes else schemas.get(id(spec.output_type), {})
        content = {"application/json": {"schema": schema}}
        responses["200"] = {"description": "the result", "content": content}
    responses["4XX"] = {"description": "the request was refused", "content": problem}
    responses["5XX"] = {"description": "the call failed; retry later", "content": problem}
    return responses
