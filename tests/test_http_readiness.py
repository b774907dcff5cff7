"""``/readyz``: draining, a disconnected backbone (a real nats-server stopped and restarted),
and the caller's own readiness hook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import msgspec
import pytest
from test_http_support import RawClient, request

from thaw import App, http
from thaw.adapters.http import open_http_server
from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone, ServerConfig
from thaw.lowlevel import Invoker, open_host
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio
OUTAGE_LIMIT = 30.0  # bound on waiting for the client to notice the outage / reconnect


def app() -> App:
    made = App("ready")

    @made.capability(http("GET", "/ping"))
    async def ping() -> dict[str, bool]:
        return {"pong": True}

    return made


async def readyz(port: int) -> tuple[int, dict[str, object]]:
    async with RawClient.connect(port) as client:
        await client.send(request("GET", "/readyz"))
        reply = await client.response()
    return reply.status, msgspec.json.decode(reply.body)


async def wait_for_status(port: int, status: int) -> dict[str, object]:
    """Ask again (bounded) until /readyz answers ``status``: the client notices an outage
    or a reconnect on its own schedule, which has no local event to wait on."""
    with anyio.fail_after(OUTAGE_LIMIT):
        while True:
            found, body = await readyz(port)
            if found == status:
                return body
            await anyio.sleep(0.05)


async def test_readyz_is_503_while_the_backbone_is_disconnected(tmp_path: Path) -> None:
    server = EmbeddedServer(ServerConfig(store_dir=str(tmp_path / "store")))
    await anyio.to_thread.run_sync(lambda: server.start(timeout=20.0))
    try:
        backbone = await JetStreamBackbone.connect(server.url)
        try:
            async with open_host(app(), backbone) as host, open_http_server(host) as http_server:
                assert await readyz(http_server.port) == (200, {"status": "ready"})
                await anyio.to_thread.run_sync(server.stop_process)
                body = await wait_for_status(http_server.port, 503)
                assert body["code"] == "not_ready"
                assert "backbone is disconnected" in str(body["detail"])
                await anyio.to_thread.run_sync(lambda: server.start(timeout=20.0))
                assert await wait_for_status(http_server.port, 200) == {"status": "ready"}
        finally:
            await backbone.aclose()
        assert backbone.connected is False
    finally:
        await anyio.to_thread.run_sync(server.stop)


async def test_a_memory_backbone_is_always_connected() -> None:
    async with (
        open_host(app(), MemoryBackbone()) as host,
        open_http_server(host) as http_server,
    ):
        assert await readyz(http_server.port) == (200, {"status": "ready"})


async def test_the_readiness_hook_names_why() -> None:
    reasons = ["the revision is still loading"]
    check: Callable[[], str | None] = lambda: reasons[0] if reasons else None  # noqa: E731
    async with open_http_server(Invoker(app()), readiness=check) as http_server:
        status, body = await readyz(http_server.port)
        assert (status, body["detail"]) == (503, "the revision is still loading")
        reasons.clear()
        assert await readyz(http_server.port) == (200, {"status": "ready"})
