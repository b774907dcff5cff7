"""The edge's own checks, run *inside Pyodide* next to the core's test files.

The edge host copies this file to ``tests/test_in_pyodide.py`` in Pyodide's file
system (so ``tests/conftest.py`` applies) and runs it with the core subset; see
``adapters/edge/_pyodide_pytest.py``. Under CPython it is not collected.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import anyio
import msgspec
import pytest

from thaw import App, Context, http, stream
from thaw.adapters.edge._guest import EdgeResponse, open_edge
from thaw.lowlevel import MemoryBackbone, load_app
from thaw.snapshots._format import (
    Manifest,
    SnapshotError,
    SnapshotPayload,
    encode_snapshot,
)
from thaw.snapshots._revision import load_revision

pytestmark = pytest.mark.anyio


async def test_the_loop_runs_a_callback_whose_time_has_just_passed() -> None:
    # asyncio's semantics, which anyio's cancel scopes rely on (adapters/edge/_webloop.py).
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    loop.call_at(loop.time() - 0.001, fired.set)
    loop.call_later(-1, fired.set)
    with anyio.fail_after(5):
        await fired.wait()


def test_this_is_cpython_on_webassembly_with_compiled_msgspec() -> None:
    assert sys.platform == "emscripten"
    assert sys.version_info >= (3, 14)
    assert msgspec.json.decode(b'{"a":[1,2]}') == {"a": [1, 2]}
    assert msgspec.__file__ is not None and "site-packages" in msgspec.__file__


def test_a_snapshot_built_by_another_python_is_refused_naming_both() -> None:
    # The host passes one built by its native CPython; standalone, make a foreign one.
    path = os.environ.get("THAW_EDGE_FOREIGN_SNAPSHOT", "")
    with pytest.raises(SnapshotError) as caught:
        load_revision(path if path else _foreign_snapshot())
    message = str(caught.value)
    assert "was built for Python" in message
    assert f"this is Python {sys.version.split()[0]}" in message
    assert "Rebuild it with this Python" in message
    assert "foreign_app" not in sys.modules  # refused before anything ran


async def test_hello_answers_through_the_edge_service() -> None:
    hello = load_app(os.path.join(os.getcwd(), "examples", "hello"))
    async with open_edge(hello) as edge:
        ok = await edge.handle(
            "POST", "/greet", [("content-type", "application/json")], b'{"name": "Ada"}'
        )
        assert ok == EdgeResponse(
            200, [("content-type", "application/json")], b'{"message":"Hello, Ada!","attempt":1}'
        )
        bad = await edge.handle("POST", "/greet", [], b'{"name": 42}')
        assert bad.status == 422
        assert "$.name" in msgspec.json.decode(bad.body)["detail"]
        missing = await edge.handle("GET", "/nowhere", [], b"")
        assert missing.status == 404


async def test_an_http_capability_feeds_a_stream_capability_on_the_memory_backbone() -> None:
    seen: list[str] = []
    fulfilled = anyio.Event()

    def record(order: str) -> None:
        seen.append(order)
        fulfilled.set()

    async with open_edge(_pipeline(record), backbone=MemoryBackbone()) as edge:
        answer = await edge.handle("POST", "/orders", [("idempotency-key", "o-1")], b'"A-7"')
        assert answer.status == 200
        with anyio.fail_after(5):  # the stream worker runs in the edge host's task group
            await fulfilled.wait()
    assert seen == ["A-7"]


def _pipeline(record: Callable[[str], None]) -> App:
    app = App("edgepipe")

    @app.capability(http("POST", "/orders"))
    async def place(order: str, ctx: Context) -> dict[str, str]:
        await ctx.publish("orders.placed", order)
        return {"order": order}

    @app.capability(stream("orders.placed"))
    async def fulfil(order: str) -> None:
        record(order)

    return app


def _foreign_snapshot() -> bytes:
    manifest = Manifest(
        app="foreign",
        entry_module="foreign_app",
        app_attribute="app",
        python="3.11.7",
        implementation="cpython-311",
        magic="a70d0d0a",
    )
    payload = SnapshotPayload(revision="0" * 32, manifest=manifest, modules=[])
    return encode_snapshot(payload)
