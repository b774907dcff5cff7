"""Path and query parameters reach ``ctx`` when the payload is bytes (or absent), across
an enqueue hop too; a route's own ``max_body`` raises or lowers its body limit up to
the server's cap; hostile bodies and spoofed parameter headers change nothing."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest
from test_http_support import RawClient, request, serving

from thaw import App, ConfigError, Context, Idempotency, stream
from thaw import http as http_trigger
from thaw.adapters.http import HttpConfig, open_http_server
from thaw.host._host import open_host
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


def images_app() -> App:
    app = App("images")

    @app.capability(http_trigger("PUT", "/images/{name}", max_body=2 * MiB))
    async def upload(body: bytes, ctx: Context) -> dict[str, Any]:
        return {"name": ctx.params["name"], "size": len(body), "query": dict(ctx.query)}

    @app.capability(http_trigger("GET", "/items/{id:int}"))
    async def item(ctx: Context) -> dict[str, Any]:
        return {"params": dict(ctx.params), "query": dict(ctx.query)}

    @app.capability(http_trigger("POST", "/notes"))  # no max_body: the server's 1 MiB
    async def note(body: bytes) -> int:
        return len(body)

    return app


async def exchange(port: int, data: bytes) -> Any:
    async with RawClient.connect(port) as client:
        await client.send(data)
        return await client.response()


async def test_path_and_query_parameters_reach_ctx_with_a_bytes_payload() -> None:
    async with serving(images_app()) as server:
        reply = await exchange(
            server.port, request("PUT", "/images/cat%20one.jpg?tag=a&tag=b&x=", b"\x89PNG")
        )
        assert reply.status == 200, reply.body
        assert msgspec.json.decode(reply.body) == {
            "name": "cat one.jpg",
            "size": 4,
            "query": {"tag": "a", "x": ""},
        }
        reply = await exchange(server.port, request("GET", "/items/7?full=1"))
        assert msgspec.json.decode(reply.body) == {"params": {"id": "7"}, "query": {"full": "1"}}


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("a%26b%3Dc", "a&b=c"),  # the header's own separators, escaped in the path
        ("%C3%A9t%C3%A9.png", "\u00e9t\u00e9.png"),
        ("a+b", "a+b"),  # a plus in a path is a plus, not a space
        ("%25", "%"),
    ],
)
async def test_odd_characters_in_a_path_parameter_arrive_as_sent(raw: str, name: str) -> None:
    async with serving(images_app()) as server:
        reply = await exchange(server.port, request("PUT", f"/images/{raw}?q=%26x", b"z"))
        assert reply.status == 200, reply.body
        body = msgspec.json.decode(reply.body)
        assert (body["name"], body["query"]) == (name, {"q": "&x"})


async def test_a_client_cannot_spoof_the_parameter_headers() -> None:
    async with serving(images_app()) as server:
        spoofed = {"thaw-path": "name=evil", "thaw-query": "admin=1"}
        reply = await exchange(server.port, request("GET", "/items/3", headers=spoofed))
        assert msgspec.json.decode(reply.body) == {"params": {"id": "3"}, "query": {}}


async def test_a_route_declares_a_larger_body_limit_than_the_server_default() -> None:
    async with serving(images_app()) as server:
        big = b"x" * (MiB + MiB // 2)  # 1.5 MiB: over the server's 1 MiB, under the route's 2
        reply = await exchange(server.port, request("PUT", "/images/big.jpg", big))
        assert (reply.status, msgspec.json.decode(reply.body)["size"]) == (200, len(big))
        over = await exchange(server.port, request("PUT", "/images/big.jpg", b"x" * (2 * MiB + 1)))
        assert over.status == 413
        other = await exchange(server.port, request("POST", "/notes", big))
        assert other.status == 413  # the other routes keep the server's limit


async def test_hostile_bodies_over_a_route_limit_are_refused() -> None:
    async with serving(images_app()) as server:
        huge = request("PUT", "/images/a.jpg", headers={"Content-Length": str(10**15)})
        assert (await exchange(server.port, huge)).status == 413
        chunk = b"%x\r\n%s\r\n" % (MiB, b"y" * MiB)
        chunked = request(
            "PUT", "/images/a.jpg", chunk * 3 + b"0\r\n\r\n", {"Transfer-Encoding": "chunked"}
        )
        assert (await exchange(server.port, chunked)).status == 413


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "1MiB", 2**31])
def test_a_bad_route_max_body_is_a_clear_error(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_body"):
        http_trigger("PUT", "/x", max_body=value)


async def test_a_route_above_the_server_cap_does_not_start() -> None:
    app = App("capped")

    @app.capability(http_trigger("PUT", "/big", max_body=32 * MiB))
    async def big(body: bytes) -> int:
        return len(body)

    with pytest.raises(ConfigError, match=r"PUT /big.*max_body_cap"):
        async with serving(app, HttpConfig(max_body_cap=16 * MiB)):
            pass


async def test_parameters_survive_the_enqueue_hop_to_the_stream() -> None:
    app = App("queued")
    seen: list[tuple[str, dict[str, str], int]] = []
    done = anyio.Event()

    @app.capability(http_trigger("PUT", "/files/{name}", enqueue="files.in"))
    async def accept(body: bytes) -> None:
        return None

    @app.capability(stream("files.in"), idempotency=Idempotency())
    async def store(body: bytes, ctx: Context) -> None:
        seen.append((ctx.params["name"], dict(ctx.query), len(body)))
        done.set()

    async with (
        open_host(app, MemoryBackbone()) as host,
        open_http_server(host) as server,
    ):
        reply = await exchange(server.port, request("PUT", "/files/report.csv?v=2", b"a,b\n"))
        assert reply.status == 202, reply.body
        with anyio.fail_after(10):
            await done.wait()
    assert seen == [("report.csv", {"v": "2"}, 4)]
