"""The connection's eager dispatch over real sockets: handlers run in the read callback.

A handler that answers without suspending is answered before the read
callback returns, with no task; one that suspends goes on as a task. These
tests mix both on one connection and check what the connection guarantees
either way: answers in request order, in-flight counts, the drain waiting for
suspended handlers, a lost client cancelling them, handler failures answered
500, the invoker's deadlines, and a context of its own for each request.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_support import WAIT, RawClient, request, serving

from thaw import App, http
from thaw.adapters.http import HttpConfig, Request, Response

pytestmark = pytest.mark.anyio

var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="")


class Mixed:
    """A Service: ``/now/<n>`` answers at once; ``/wait/<n>`` waits for its own gate."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.waiting: set[str] = set()
        self.changed = asyncio.Event()
        self.cancelled: list[str] = []
        self.eager: list[bool] = []  # per request: was it started with no task of its own?
        self.seen_vars: list[str] = []

    def gate(self, path: str) -> asyncio.Event:
        return self.gates.setdefault(path, asyncio.Event())

    async def wait_for(self, condition: object) -> None:
        with anyio.fail_after(WAIT):
            while not condition():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()

    def check(self, request: Request) -> Response | None:
        return None

    async def handle(self, request: Request) -> Response:
        path = request.path
        self.seen_vars.append(var.get())
        var.set(path)  # must not be seen by any later request
        task = asyncio.current_task()
        self.eager.append(type(task).__name__ == "EagerTask")
        if path.startswith("/fail-now"):
            raise RuntimeError("failed before suspending")
        if path.startswith("/wait") or path.startswith("/fail-later"):
            self.waiting.add(path)
            self.changed.set()
            try:
                await self.gate(path).wait()
            except asyncio.CancelledError:
                self.cancelled.append(path)
                self.changed.set()
                raise
            finally:
                self.waiting.discard(path)
                self.changed.set()
            assert asyncio.current_task() is task  # the same task before and after
            assert var.get() == path  # its context went on with it
            if path.startswith("/fail-later"):
                raise RuntimeError("failed after suspending")
        return Response(200, path.encode(), "text/plain")


async def test_pipelined_requests_that_suspend_or_not_are_answered_in_order() -> None:
    service = Mixed()
    paths = ["/now/1", "/wait/2", "/now/3", "/wait/4", "/now/5", "/now/6"]
    async with serving(service) as server, RawClient.connect(server.port) as client:
        await client.send(b"".join(request("GET", p) for p in paths))
        await service.wait_for(lambda: service.waiting == {"/wait/2", "/wait/4"})
        # Everything was read and started; the ones that did not suspend are done, but
        # wait behind /wait/2 for their turn.
        assert server.statistics().in_flight == 2
        assert server.statistics().tasks == 2
        service.gate("/wait/4").set()  # the later one first: order still holds
        await service.wait_for(lambda: service.waiting == {"/wait/2"})
        service.gate("/wait/2").set()
        replies = [await client.response() for _ in paths]
        assert [r.body.decode() for r in replies] == paths
        assert all(r.status == 200 for r in replies)
    assert service.eager == [True] * len(paths)


async def test_a_request_answered_without_suspending_leaves_no_task() -> None:
    service = Mixed()
    async with serving(service) as server, RawClient.connect(server.port) as client:
        for n in range(3):
            await client.send(request("GET", f"/now/{n}"))
            assert (await client.response()).body == f"/now/{n}".encode()
            stats = server.statistics()
            assert (stats.tasks, stats.in_flight, stats.requests) == (0, 0, n + 1)


async def test_each_request_gets_a_context_of_its_own() -> None:
    service = Mixed()
    async with serving(service) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/now/a") + request("GET", "/wait/b"))
        await service.wait_for(lambda: service.waiting == {"/wait/b"})
        service.gate("/wait/b").set()
        await client.send(request("GET", "/now/c"))
        for _ in range(3):
            assert (await client.response()).status == 200
    assert service.seen_vars == ["", "", ""]


async def test_drain_waits_for_a_suspended_handler_behind_answered_ones() -> None:
    service = Mixed()
    async with (
        serving(service, HttpConfig(drain_timeout=WAIT)) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("GET", "/now/1") + request("GET", "/wait/2"))
        assert (await client.response()).body == b"/now/1"
        await service.wait_for(lambda: service.waiting == {"/wait/2"})
        assert server.statistics().tasks == 1  # what the drain has to wait for
        async with anyio.create_task_group() as group:
            group.start_soon(server.drain)
            service.gate("/wait/2").set()
            reply = await client.response()
            assert reply.body == b"/wait/2"
            assert reply.headers["connection"] == "close"
        assert await client.closed() == b""
        assert service.cancelled == []


async def test_drain_deadline_cancels_a_suspended_handler() -> None:
    service = Mixed()
    async with (
        serving(service, HttpConfig(drain_timeout=0.05)) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.send(request("GET", "/wait/1"))
        await service.wait_for(lambda: service.waiting == {"/wait/1"})
        with anyio.fail_after(WAIT):
            await server.drain()
        assert service.cancelled == ["/wait/1"]
        await client.closed()


async def test_a_lost_client_cancels_its_suspended_handlers() -> None:
    service = Mixed()
    async with serving(service) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/now/1") + request("GET", "/wait/2"))
        assert (await client.response()).status == 200
        await service.wait_for(lambda: service.waiting == {"/wait/2"})
        client.reset()
        await service.wait_for(lambda: service.cancelled == ["/wait/2"])
        with anyio.fail_after(WAIT):
            await server.wait_idle()
        assert server.statistics().in_flight == 0


async def test_handler_failures_before_and_after_suspending_are_answered_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = Mixed()
    caplog.set_level(logging.ERROR, "thaw.http")
    async with serving(service) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/fail-now") + request("GET", "/fail-later"))
        await service.wait_for(lambda: service.waiting == {"/fail-later"})
        service.gate("/fail-later").set()
        first, second = await client.response(), await client.response()
        assert (first.status, second.status) == (500, 500)
        assert msgspec.json.decode(first.body)["code"] == "internal_error"
        assert b"suspending" not in first.body + second.body  # the reason stays in the log
        await client.send(request("GET", "/now/after"))  # the connection is still usable
        assert (await client.response()).body == b"/now/after"
        assert server.statistics().in_flight == 0
    failures = [r for r in caplog.records if r.message.startswith("HTTP handler failed")]
    assert len(failures) == 2


async def test_a_capability_deadline_holds_for_an_eagerly_started_request() -> None:
    app = App("eager")

    @app.capability(http("GET", "/stuck"), timeout=0.05)
    async def stuck() -> dict[str, bool]:
        await asyncio.Event().wait()
        return {"ok": True}

    @app.capability(http("GET", "/quick"))
    async def quick() -> dict[str, bool]:
        return {"ok": True}

    async with serving(app) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/stuck") + request("GET", "/quick"))
        late, fine = await client.response(), await client.response()
        assert late.status == 504
        assert msgspec.json.decode(late.body)["code"] == "deadline_exceeded"
        assert (fine.status, fine.body) == (200, b'{"ok":true}')
        assert server.statistics().tasks == 0


# -- any mix, any way the bytes are cut -------------------------------------------------


async def _mixed_in_order(kinds: list[bool], release: list[int], step: int) -> None:
    service = Mixed()
    paths = [f"/wait/{n}" if waits else f"/now/{n}" for n, waits in enumerate(kinds)]
    waiting = {p for p in paths if p.startswith("/wait")}
    async with serving(service) as server, RawClient.connect(server.port) as client:
        await client.send_slowly(b"".join(request("GET", p) for p in paths), step=step)
        await service.wait_for(lambda: service.waiting == waiting)
        for index in release:  # release the waiting ones in a drawn order
            service.gate(sorted(waiting)[index % len(waiting)] if waiting else "").set()
        for path in waiting:
            service.gate(path).set()
        replies = [await client.response() for _ in paths]
        assert [r.body.decode() for r in replies] == paths


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.booleans(), min_size=1, max_size=8),
    release=st.lists(st.integers(0, 7), max_size=8),
    step=st.sampled_from([1, 13, 4096]),
)
def test_any_mix_of_pipelined_requests_is_answered_in_order(
    kinds: list[bool], release: list[int], step: int
) -> None:
    anyio.run(_mixed_in_order, kinds, release, step, backend_options={"use_uvloop": True})
