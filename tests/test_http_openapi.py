"""/openapi.json: an OpenAPI 3.1 document generated from the http capabilities' contracts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_http_support import RawClient, request, serving

from thaw import App, http, stream
from thaw.adapters.http import HttpConfig
from thaw.adapters.http.openapi import openapi_document
from thaw.lowlevel import load_app

ROOT = Path(__file__).resolve().parent.parent


class Item(msgspec.Struct, frozen=True):
    name: str
    price: int


class Saved(msgspec.Struct, frozen=True):
    id: int
    item: Item


def shop() -> App:
    app = App("shop")

    @app.capability(http("POST", "/items"))
    async def create(item: Item) -> Saved:
        """Create an item.

        More text that is not the summary."""
        return Saved(1, item)

    @app.capability(http("GET", "/items/{id:int}"))
    async def read(query: dict[str, int]) -> Saved:
        return Saved(query["id"], Item("x", 1))

    @app.capability(http("DELETE", "/items/{id:int}/tags/{tag}"))
    async def untag(query: dict[str, Any]) -> None:
        return None

    @app.capability(http("POST", "/uploads", enqueue="shop.uploads"), stream("shop.uploads"))
    async def upload(raw: bytes) -> None:
        return None

    return app


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_document_covers_routes_parameters_bodies_and_errors() -> None:
    document = openapi_document(shop(), version="1.2.3")
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {"title": "shop", "version": "1.2.3"}
    paths = document["paths"]
    assert set(paths) == {"/items", "/items/{id}", "/items/{id}/tags/{tag}", "/uploads"}
    create = paths["/items"]["post"]
    assert create["summary"] == "Create an item."
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Item"
    }
    assert create["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Saved"
    }
    assert create["responses"]["4XX"]["content"]["application/problem+json"]
    read = paths["/items/{id}"]["get"]
    assert "requestBody" not in read
    assert read["parameters"] == [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
    ]
    untag = paths["/items/{id}/tags/{tag}"]["delete"]
    assert [p["name"] for p in untag["parameters"]] == ["id", "tag"]
    assert "204" in untag["responses"]
    upload = paths["/uploads"]["post"]
    assert "202" in upload["responses"]
    assert "application/octet-stream" in upload["requestBody"]["content"]
    schemas = document["components"]["schemas"]
    assert {"Item", "Saved", "Problem"} <= set(schemas)
    for ref in refs(document):  # every reference resolves
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_examples_produce_valid_json_documents() -> None:
    for name in ("hello", "payment_webhook"):
        document = openapi_document(load_app(str(ROOT / "examples" / name)))
        assert json.loads(json.dumps(document))["openapi"] == "3.1.0"
        assert document["paths"]


@pytest.mark.anyio
async def test_served_at_openapi_json_and_can_be_turned_off() -> None:
    async with serving(shop()) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/openapi.json"))
        reply = await client.response()
    assert reply.status == 200
    assert json.loads(reply.body)["paths"]["/items"]["post"]["operationId"] == "create"
    async with (
        serving(shop(), HttpConfig(openapi_path="")) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("GET", "/openapi.json"))
        assert (await client.response()).status == 404
