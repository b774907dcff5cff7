"""The HTTP/1.1 connection over real loopback sockets, hostile clients included.

A small ``Service`` stands in for the app so each test controls timing: it echoes
what it got, waits on events, blocks, or streams. Every test runs through
``serving``, which fails if a connection or a request task outlives the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import anyio
import httptools
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_support import WAIT, RawClient, request, serving

from thaw.adapters.http import HttpConfig, Request, Response
from thaw.adapters.http.metrics import ServerCounters

pytestmark = pytest.mark.anyio


class Echo:
    """A Service: echoes the request as JSON; a few paths wait, block or stream."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = 0
        self.handled = 0
        self.changed = asyncio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(WAIT):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    def check(self, request: Request) -> Response | None:
        if request.path == "/missing":
            return Response(404, b"{}", "application/json")
        if request.path == "/small":
            request.max_body = 10
        return None

    async def handle(self, request: Request) -> Response:
        self.handled += 1
        self.changed.set()
        if request.path == "/wait":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                self.changed.set()
                raise
        if request.path == "/stream":
            return Response(200, content_type="text/plain", stream=_chunks())
        if request.path == "/fixed":
            return Response(200, b"0123456789", "text/plain")
        if request.path == "/big":
            return Response(200, b"x" * (32 << 20), "text/plain")
        body = msgspec.json.encode(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "body": request.body.decode("latin-1"),
                "version": request.version,
            }
        )
        return Response(200, body, "application/json")


async def _chunks() -> AsyncIterator[bytes]:
    for part in (b"one ", b"", b"two ", b"three"):
        await asyncio.sleep(0)
        yield part


def echoed(reply: object) -> dict[str, str]:
    return msgspec.json.decode(reply.body)  # type: ignore[attr-defined,no-any-return]


async def wait_past(seconds: float) -> None:
    """Let this loop's clock pass ``seconds`` from now, to show that nothing fires.

    The server runs on this same loop and asyncio runs due timers in the order
    they are due, so any timer of the server's due before then has run by the
    time this returns, however slow the machine: not a margin, an ordering.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.call_at(loop.time() + seconds, done.set_result, None)
    await done


# -- keep-alive, pipelining, framing --------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        for n in range(3):
            await client.send(request("POST", f"/n/{n}?x=1", b"hi"))
            reply = await client.response()
            assert reply.status == 200
            assert echoed(reply) == {
                "method": "POST",
                "path": f"/n/{n}",
                "query": "x=1",
                "body": "hi",
                "version": "1.1",
            }
            assert "connection" not in reply.headers
            assert "date" in reply.headers
        assert server.statistics().accepted == 1


async def test_pipelined_answers_keep_request_order_even_when_the_first_is_slow() -> None:
    service = Echo()
    async with serving(service) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/wait") + request("GET", "/a") + request("GET", "/b"))
        with anyio.fail_after(WAIT):
            await service.started.wait()
        await service.wait_for(lambda: service.handled == 3)  # the later two finish first ...
        service.release.set()  # ... and still wait for their turn
        paths = [echoed(await client.response())["path"] for _ in range(3)]
        assert paths == ["/wait", "/a", "/b"]


async def test_a_request_sent_one_byte_at_a_time() -> None:
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send_slowly(request("PUT", "/slow?q=%20", b"abc"))
        reply = await client.response()
        assert echoed(reply)["body"] == "abc"
        assert echoed(reply)["query"] == "q=%20"


async def test_chunked_request_body_is_decoded_and_trailers_ignored() -> None:
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
    raw = request("POST", "/c", body, {"Transfer-Encoding": "chunked"})
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send_slowly(raw, step=3)
        assert echoed(await client.response())["body"] == "Wikipedia"


async def test_head_answers_headers_without_a_body() -> None:
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send(request("HEAD", "/fixed") + request("GET", "/fixed"))
        head = await client.response(head=True)
        get = await client.response()
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == get.headers["content-length"] == "10"
        assert get.body == b"0123456789"


async def test_connection_close_is_honoured() -> None:
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/x", headers={"Connection": "close"}) + request())
        reply = await client.response()
        assert reply.headers["connection"] == "close"
        assert await client.closed() == b""  # the pipelined request after it is never read


async def test_http10_closes_unless_keep_alive_is_asked() -> None:
    async with serving(Echo()) as server:
        async with RawClient.connect(server.port) as client:
            await client.send(b"GET /a HTTP/1.0\r\n\r\n")
            reply = await client.response()
            assert reply.headers["connection"] == "close"
            assert await client.closed() == b""
        async with RawClient.connect(server.port) as client:
            keep = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            await client.send(keep + keep)
            first, second = await client.response(), await client.response()
            assert first.headers["connection"] == second.headers["connection"] == "keep-alive"


async def test_streamed_answer_is_chunked_on_11_and_close_delimited_on_10() -> None:
    async with serving(Echo()) as server:
        async with RawClient.connect(server.port) as client:
            await client.send(request("GET", "/stream") + request("GET", "/after"))
            reply = await client.response()
            assert reply.headers["transfer-encoding"] == "chunked"
            assert reply.body == b"one two three"
            assert echoed(await client.response())["path"] == "/after"
        async with RawClient.connect(server.port) as client:
            await client.send(b"GET /stream HTTP/1.0\r\n\r\n")
            raw = await client.closed()
            assert raw.endswith(b"\r\n\r\none two three")
            assert b"transfer-encoding" not in raw


async def test_expect_100_continue_then_the_body() -> None:
    head = b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send(head)
        interim = await client._one(head=False)
        assert interim.status == 100
        await client.send(b"hello")
        assert echoed(await client.response())["body"] == "hello"


async def test_expect_100_continue_behind_a_slow_answer_waits_its_turn() -> None:
    service = Echo()
    head = b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    # body_timeout is the time the client gets to send its body once the 100 is out, too.
    config = HttpConfig(body_timeout=1.0)
    async with serving(service, config) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/wait") + head)
        with anyio.fail_after(WAIT):
            await service.started.wait()
        # Past any body deadline counted from the head: no 408 while the client waits on us.
        await wait_past(config.body_timeout * 1.5)
        service.release.set()
        assert echoed(await client.response())["path"] == "/wait"
        assert (await client._one(head=False)).status == 100
        await client.send(b"ok")
        assert echoed(await client.response())["body"] == "ok"


async def test_expect_100_continue_refused_early_without_reading_the_body() -> None:
    async with serving(Echo()) as server:
        async with RawClient.connect(server.port) as client:
            await client.send(
                b"POST /missing HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            reply = await client.response()
            assert (reply.status, reply.informational) == (404, [])
            assert reply.headers["connection"] == "close"
        async with RawClient.connect(server.port) as client:
            await client.send(
                b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: teapot\r\n\r\n"
            )
            assert (await client.response()).status == 417


async def test_a_refused_request_with_a_body_keeps_the_connection() -> None:
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send(request("POST", "/missing", b"x" * 100) + request("GET", "/next"))
        assert (await client.response()).status == 404
        assert echoed(await client.response())["path"] == "/next"


# -- limits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request("GET", "/", headers={f"X-{n}": "v" for n in range(20)}), 431),
        (request("GET", "/", headers={"X-Big": "v" * 3000}), 431),
        (request("GET", "/" + "a" * 2000), 414),
        (request("POST", "/", b"x" * 2000), 413),
    ],
    ids=["header-count", "header-size", "target-length", "content-length"],
)
async def test_limits_answer_clearly_and_close(raw: bytes, status: int) -> None:
    config = HttpConfig(max_headers=10, max_header_bytes=2048, max_target=1024, max_body=1000)
    async with serving(Echo(), config) as server, RawClient.connect(server.port) as client:
        await client.send(raw)
        reply = await client.response()
        assert reply.status == status
        assert reply.headers["connection"] == "close"
        assert reply.headers["content-type"] == "application/problem+json"
        assert msgspec.json.decode(reply.body)["status"] == status
        assert await client.closed() == b""


async def test_a_header_that_never_ends_is_cut_at_the_limit() -> None:
    config = HttpConfig(max_header_bytes=4096)
    async with serving(Echo(), config) as server, RawClient.connect(server.port) as client:
        await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        for _ in range(20):
            client.writer.write(b"v" * 1024)
        reply = await client.response()
        assert reply.status == 431


async def test_chunked_body_over_the_limit_is_stopped_while_streaming() -> None:
    chunk = b"200\r\n" + b"x" * 512 + b"\r\n"
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send(request("POST", "/small", b"", {"Transfer-Encoding": "chunked"}))
        await client.send(chunk)
        reply = await client.response()
        assert reply.status == 413
        assert "larger than 10 bytes" in msgspec.json.decode(reply.body)["detail"]


async def test_route_body_limit_applies_to_content_length_up_front() -> None:
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send(request("POST", "/small", b"x" * 11))
        assert (await client.response()).status == 413


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
@pytest.mark.parametrize(
    ("target", "declared"), [("/e", 1001), ("/small", 11)], ids=["server-limit", "route-limit"]
)
async def test_an_oversized_content_length_is_refused_from_the_head_alone(
    target: str, declared: int, expect: bool
) -> None:
    # Only the head is sent: the 413 must come from Content-Length itself, with no
    # 100 Continue, and the connection closes (the body may be on its way: never read).
    headers = {"Content-Length": str(declared)}
    if expect:
        headers["Expect"] = "100-continue"
    counters = ServerCounters()
    async with (
        serving(Echo(), HttpConfig(max_body=1000), counters=counters) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("POST", target, headers=headers))
        reply = await client.response()
        assert (reply.status, reply.informational) == (413, [])
        assert reply.headers["connection"] == "close"
        assert msgspec.json.decode(reply.body)["code"] == "payload_too_large"
        assert await client.closed() == b""
    assert counters.refusals == {413: 1}
    assert counters.responses[4] == 1


async def test_in_flight_limit_answers_503_with_retry_after() -> None:
    service = Echo()
    async with (
        serving(service, HttpConfig(max_in_flight=1)) as server,
        RawClient.connect(server.port) as first,
        RawClient.connect(server.port) as other,
    ):
        await first.send(request("GET", "/wait"))
        with anyio.fail_after(WAIT):
            await service.started.wait()
        await other.send(request("GET", "/x"))
        reply = await other.response()
        assert reply.status == 503
        assert reply.headers["retry-after"] == "1"
        service.release.set()
        assert (await first.response()).status == 200
        await other.send(request("GET", "/again"))  # the refused connection stays usable
        assert (await other.response()).status == 200


async def test_a_pipelined_burst_past_the_limit_gets_503_and_close() -> None:
    async with (
        serving(Echo(), HttpConfig(max_pipeline=2)) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("GET", "/1") + request("GET", "/2") + request("GET", "/3"))
        assert [(await client.response()).status for _ in range(3)] == [200, 200, 503]
        assert await client.closed() == b""


async def test_connection_limit() -> None:
    async with (
        serving(Echo(), HttpConfig(max_connections=1)) as server,
        RawClient.connect(server.port) as first,
    ):
        await first.send(request("GET", "/1"))
        assert (await first.response()).status == 200
        async with RawClient.connect(server.port) as second:
            assert (await second.response()).status == 503


# -- smuggling shapes and broken framing --------------------------------------------

SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    "two-cl": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "same-cl-twice": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
    b"Content-Length: 1\r\n\r\na",
    "cl-list": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 1\r\n\r\na",
    "cl-sign": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +1\r\n\r\na",
    "te-gzip-chunked": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"0\r\n\r\n",
    "te-twice": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-identity": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n",
    "te-on-1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space-before-colon": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: t\n\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "chunk-without-crlf": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabcX0\r\n\r\n",
    "chunk-overflow": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"fffffffffffffffffff\r\n",
    "lower-case-method": b"get / HTTP/1.1\r\nHost: t\r\n\r\n",
    "http-0.9": b"GET /\r\n\r\n",
    "http-2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(SMUGGLING.values()), ids=list(SMUGGLING))
async def test_smuggling_shapes_and_bad_framing_get_400_and_close(raw: bytes) -> None:
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        # A valid request first: it must still be answered, in order, before the refusal.
        await client.send(request("GET", "/first") + raw + request("GET", "/smuggled"))
        assert echoed(await client.response())["path"] == "/first"
        reply = await client.response()
        assert reply.status in (400, 505), reply
        assert reply.headers["connection"] == "close"
        problem = msgspec.json.decode(reply.body)
        assert problem["code"] in {"http_malformed", "http_smuggling", "host_invalid"} | {
            "http_version_unsupported"
        }
        assert b"/smuggled" not in await client.closed()


async def test_upgrade_is_answered_then_the_connection_closes_unparsed() -> None:
    raw = (
        b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send(raw)
        reply = await client.response()
        assert echoed(reply)["path"] == "/up"
        assert reply.headers["connection"] == "close"
        assert b"smuggled" not in await client.closed()


async def test_a_request_cut_short_by_eof_gets_400() -> None:
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send(b"POST /t HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        client.half_close()
        reply = await client.response()
        assert reply.status == 400
        assert "middle of a request" in msgspec.json.decode(reply.body)["detail"]


async def test_half_close_after_a_full_request_still_gets_the_answer() -> None:
    async with serving(Echo()) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/a") + request("GET", "/b"))
        client.half_close()
        assert [echoed(await client.response())["path"] for _ in range(2)] == ["/a", "/b"]
        assert await client.closed() == b""


# -- slow and idle clients ------------------------------------------------------------


async def test_slowloris_head_gets_408_however_steady_the_trickle() -> None:
    async with (
        serving(Echo(), HttpConfig(header_timeout=0.3)) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        with anyio.fail_after(WAIT):
            for _ in range(100):  # progress every 50 ms does not extend the head deadline
                try:
                    await client.send(b"X-A: b\r\n")
                except ConnectionError:
                    break
                await asyncio.sleep(0.05)
                if client.reader.at_eof() or client.reader._buffer:  # type: ignore[attr-defined]
                    break
        reply = await client.response()
        assert reply.status == 408
        assert reply.headers["connection"] == "close"


async def test_a_stalled_body_gets_408() -> None:
    async with (
        serving(Echo(), HttpConfig(body_timeout=0.2)) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
        assert (await client.response()).status == 408


async def test_idle_keep_alive_connection_is_closed_silently() -> None:
    async with (
        serving(Echo(), HttpConfig(keepalive_timeout=0.2)) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("GET", "/a"))
        assert (await client.response()).status == 200
        assert await client.closed() == b""  # no 408 on an idle connection


async def test_a_client_that_never_reads_its_answers_is_disconnected() -> None:
    async with (
        serving(Echo(), HttpConfig(send_timeout=0.2)) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("GET", "/big"))  # 32 MiB: more than the socket buffers hold
        with anyio.fail_after(WAIT):
            await server.wait_idle()  # the server gave up on the stalled write and closed


async def test_client_gone_cancels_its_request_task() -> None:
    service = Echo()
    async with (
        serving(service) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("GET", "/wait"))
        with anyio.fail_after(WAIT):
            await service.started.wait()
        client.reset()
        await service.wait_for(lambda: service.cancelled == 1)
        assert server.statistics().in_flight == 0


# -- drain ----------------------------------------------------------------------------


async def test_drain_finishes_in_flight_requests_and_refuses_new_work() -> None:
    service = Echo()
    async with (
        serving(service, HttpConfig(drain_timeout=WAIT)) as server,
        RawClient.connect(server.port) as busy,
        RawClient.connect(server.port) as idle,
    ):
        await idle.send(request("GET", "/i"))
        assert (await idle.response()).status == 200
        await busy.send(request("GET", "/wait"))
        with anyio.fail_after(WAIT):
            await service.started.wait()
        async with anyio.create_task_group() as group:
            group.start_soon(server.drain)
            assert await idle.closed() == b""  # idle connections close at once
            service.release.set()
            reply = await busy.response()
            assert reply.status == 200
            assert reply.headers["connection"] == "close"
        assert server.draining


async def test_drain_deadline_cancels_what_does_not_finish() -> None:
    service = Echo()
    async with (
        serving(service, HttpConfig(drain_timeout=0.2)) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("GET", "/wait"))
        with anyio.fail_after(WAIT):
            await service.started.wait()
        with anyio.fail_after(WAIT):
            await server.drain()
        assert service.cancelled == 1
        await client.closed()


# -- hostile bytes ----------------------------------------------------------------------

VALID = [
    request("GET", "/a"),
    request("POST", "/b", b"{}"),
    request("POST", "/c", b"3\r\nabc\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}),
    request("PUT", "/d?x=1", b"x" * 70),
]
TOKENS = [
    b"\r\n",
    b"\n",
    b" ",
    b":",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"0\r\n\r\n",
    b"GET / HTTP/1.1\r\n",
    b"\x00",
    b"\xff",
]


def _mutations() -> st.SearchStrategy[bytes]:
    spliced = st.tuples(st.sampled_from(VALID), st.integers(0, 200), st.sampled_from(TOKENS)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
    )
    cut = st.tuples(st.sampled_from(VALID), st.integers(0, 200)).map(lambda t: t[0][: t[1]])
    joined = st.lists(st.sampled_from(VALID + TOKENS), max_size=6).map(b"".join)
    return st.one_of(st.binary(max_size=300), spliced, cut, joined)


async def _answers_or_closes(data: bytes, step: int) -> None:
    config = HttpConfig(
        max_headers=8,
        max_header_bytes=512,
        max_body=64,
        keepalive_timeout=0.05,
        header_timeout=0.05,
        body_timeout=0.05,
        receive_timeout=1.0,
        linger_timeout=0.05,
        drain_timeout=1.0,
    )
    async with (
        serving(Echo(), config) as server,
        RawClient.connect(server.port) as client,
    ):
        try:
            await client.send_slowly(data, step=step)
        except ConnectionError:
            pass  # we wrote after the server closed: allowed
        raw = await client.closed()  # must not hang: timeouts close the connection
        with anyio.fail_after(WAIT):
            await server.wait_idle()  # nothing left behind once the client is gone
        assert server.statistics().in_flight == 0
    if raw:
        statuses = _parse_responses(raw)
        assert statuses, raw[:200]
        assert all(s in (100, 200, 400, 404, 408, 413, 414, 417, 431, 505) for s in statuses)


def _parse_responses(raw: bytes) -> list[int]:
    """Statuses of the complete responses in ``raw``; fails on anything malformed."""
    statuses: list[int] = []

    class Callbacks:
        def on_message_complete(self) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(raw)
    return statuses


@settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_mutations(), step=st.sampled_from([1, 7, 4096]))
def test_arbitrary_bytes_get_an_answer_or_a_clean_close(data: bytes, step: int) -> None:
    anyio.run(_answers_or_closes, data, step)
