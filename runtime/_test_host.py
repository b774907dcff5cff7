"""TestHost: a whole app served in process, driven from a test, on either backbone.

``TestHost(app)`` (exported from ``thaw.testing``) is what ``TestClient`` is to a
FastAPI app and ``TestNatsBroker`` to a FastStream one: entering it provisions
everything the app declares (streams, consumers, KV and object buckets, the
dead-letter stream) through ``open_host``, by default on a fresh MemoryBackbone whose
time is a FakeClock, so schedules, retries, AckWait and TTLs move only when the test
says so. ``TestHost(app, backbone=...)`` runs the same app on a given backbone (a
JetStreamBackbone on a real nats-server, say) and its clock, real time by default.

HTTP: ``th.http.post("/path", json=...)`` goes through ``thaw serve``'s own request
handling (routing, 404/405, path and query parameters, webhook signatures, body
limits, 202 enqueue, problem details), which lives in ``thaw.adapters.http`` beside
the parser it shares with the socket server. The core never imports adapters, so the
first request finds that piece through the ``thaw.servers`` entry point
``http-in-process`` (as ``thaw serve`` finds the backbones and the subject services)
and drives it in process: no socket, no thread. Copying that logic here would let the
test host drift from the server; without the adapter installed, ``th.http`` says so.
On a backbone other than the MemoryBackbone the app's ``subject`` triggers are served
the same way ``thaw serve`` serves them (entry point ``subjects``).

Invariants: nothing here opens a socket or starts a thread (it runs in Pyodide), and on
a FakeClock nothing waits for wall time. ``settle`` means "no work left that can run
now". On a FakeClock that is read from the loop: it returns once every task is blocked
(trio's ``wait_all_tasks_blocked``, never waiting for a time), so what is left waits for
the clock or for input. On a real clock other processes (a nats-server) hold the work,
so it is read from the backbone: no invocation running and every consumer of the app
with nothing pending or awaiting its ack, in one look during which no stream of those
consumers grew (bounded by ``settle_timeout``; a retry waiting out its backoff is work
left). ``advance`` moves a FakeClock from one due sleeper to the next and settles after
each, so a retry due in 2 s after a tick due in 1 s runs in that order; on a real clock
it lets the time pass, then settles. Leaving is instant on a FakeClock: workers parked
in a fetch are interrupted (see ``open_host``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Protocol

import anyio
import msgspec

from thaw._clock import Clock, FakeClock, SystemClock
from thaw._errors import DeadlineExceeded, MessageNotFound, NoResponders
from thaw._event import Event, Outcome, Retry
from thaw.backbone._contract import Backbone, KeyValue, ObjectStore, PubAck, StoredMessage
from thaw.backbone._registry import load_server
from thaw.backbone._subjects import subject_matches
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.decisions._delivery import DEAD_LETTER_STREAM, dead_letter_subject
from thaw.decisions._reply import Requester, outcome_of_reply
from thaw.declarations._app import App
from thaw.declarations._triggers import HttpTrigger, SubjectTrigger
from thaw.host._host import Host, open_host

__all__ = ["TestHost"]

# 2026-01-01T00:00:00Z: a fixed wall time, so schedule ticks in a test are reproducible.
DEFAULT_WALL_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
HTTP_ENTRY_POINT = "http-in-process"  # thaw.servers: thaw.adapters.http.in_process
LIVE_FETCH_TIMEOUT = 0.2  # real clock: how long a parked fetch may hold up leaving
SETTLE_POLL = 0.01  # real clock: seconds between looks at the consumers
_encode = msgspec.json.Encoder().encode
_ids = itertools.count(1)


def make_event(data: Any = b"", *, id: str | None = None, **fields: Any) -> Event:
    """An Event for tests; non-bytes ``data`` is JSON-encoded, ``id`` defaults to a counter."""
    payload = data if isinstance(data, bytes) else _encode(data)
    return Event(id=id or f"test-{next(_ids)}", data=payload, **fields)


class HttpResponse(Protocol):
    """What ``th.http`` answers (``thaw.adapters.http.in_process.InProcessResponse``)."""

    status: int
    headers: Mapping[str, str]  # names compared without case
    body: bytes

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class TestHost:
    """An app served in process (``async with``): a MemoryBackbone and a FakeClock unless
    given a ``backbone`` (and its ``clock``; real time by default)."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        app: App,
        *,
        backbone: Backbone | None = None,
        clock: Clock | None = None,
        wall_start: float = DEFAULT_WALL_START,
        max_body: int | None = None,
        settle_timeout: float = 30.0,
    ) -> None:
        self.app = app
        if backbone is None:
            clock = clock or FakeClock()
            backbone = MemoryBackbone(clock=clock)
        elif clock is None:
            clock = backbone.clock if isinstance(backbone, MemoryBackbone) else SystemClock()
        self.clock: Clock = clock
        self.backbone: Backbone = backbone
        self._fake = isinstance(clock, FakeClock)
        self._wall_offset: float = wall_start - clock.now()
        self._max_body = max_body
        self._settle_timeout = settle_timeout
        self._stack: AsyncExitStack | None = None
        self._host: Host | None = None
        self.http = _Http(self)

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> TestHost:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._host = host = await stack.enter_async_context(
                open_host(
                    self.app,
                    self.backbone,
                    clock=self.clock,
                    wall_clock=self.wall_time,
                    fetch_timeout=1.0 if self._fake else LIVE_FETCH_TIMEOUT,
                )
            )
            subjects = None if self._memory else load_server("subjects")
            if subjects is not None and _declares(self.app, SubjectTrigger):
                await stack.enter_async_context(subjects(host))  # as thaw serve does
        except BaseException:
            self._host = None
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        await self.settle()  # the workers are parked in their first fetch
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack, self._host = self._stack, None, None
        self.http = _Http(self)
        if stack is None:
            return None
        return await stack.__aexit__(exc_type, exc, tb)

    @property
    def host(self) -> Host:
        if self._host is None:
            raise RuntimeError("TestHost is not running: use it as `async with TestHost(app)`")
        return self._host

    @property
    def _memory(self) -> bool:
        return isinstance(self.backbone, MemoryBackbone)

    def wall_time(self) -> float:
        """Seconds since the epoch as this host sees them (a FakeClock moves them)."""
        if not self._fake:
            return time.time()
        return float(self.clock.now() + self._wall_offset)

    # -- driving --------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        data: Any = b"",
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
    ) -> PubAck:
        """Publish to a subject (non-bytes ``data`` as JSON); stream triggers then run.
        ``msg_id`` (``Nats-Msg-Id``) makes the stream drop a repeat within its window."""
        payload = data if isinstance(data, bytes) else _encode(data)
        return await self.backbone.publish(subject, payload, headers=headers, msg_id=msg_id)

    async def invoke(self, capability: str, data: Any = b"", **fields: Any) -> Outcome:
        """Invoke one capability directly, through the host (as a request would)."""
        event: Event = make_event(data, **fields)
        return await self.host.invoke(capability, event)

    async def request(
        self,
        subject: str,
        data: Any = b"",
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Outcome:
        """Request/reply to a ``subject`` trigger, as ``ctx.request`` does: its Outcome
        (``Retry`` with ``no_responders`` or ``deadline_exceeded`` when nobody answers)."""
        backbone = self.backbone
        if not isinstance(backbone, Requester):
            raise RuntimeError(f"{type(backbone).__name__} carries no request/reply")
        payload = data if isinstance(data, bytes) else _encode(data)
        try:
            reply = await backbone.request(subject, payload, headers=headers, timeout=timeout)
        except (DeadlineExceeded, NoResponders) as exc:
            return Retry(0.0, exc.message, exc.code)
        return outcome_of_reply(reply.data, reply.headers)

    async def settle(self) -> None:
        """Return once no work is left that can run now (see the module's opening)."""
        if self._fake:
            await _wait_all_tasks_blocked()
            return
        busy = "nothing yet"
        try:
            with anyio.fail_after(self._settle_timeout):
                while True:
                    busy = await self._busy()
                    if not busy:
                        return
                    await anyio.sleep(SETTLE_POLL)  # the work is in another process
        except TimeoutError:
            raise TimeoutError(
                f"TestHost.settle: work still left after {self._settle_timeout:g} s: {busy}"
            ) from None

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the clock, waking sleepers in time order, then settle."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        clock = self.clock
        if not isinstance(clock, FakeClock):
            await anyio.sleep(seconds)  # real time passes for real
            await self.settle()
            return
        target = clock.now() + seconds
        await self.settle()
        while True:
            due = _next_wake(clock)
            step_to = target if due is None or due > target else due
            clock.advance(max(step_to - clock.now(), 0.0))
            await self.settle()
            if step_to >= target:
                return

    async def _busy(self) -> str:
        """What still works (empty: nothing), read from the host and its consumers."""
        host = self.host
        consumers = host.plan.consumers
        streams = sorted({consumer.stream for consumer in consumers})
        before = [(await self.backbone.stream_info(name)).last_seq for name in streams]
        for consumer in consumers:
            info = await self.backbone.consumer_info(consumer.stream, consumer.config.durable)
            if info.num_pending or info.num_ack_pending:
                return (
                    f"consumer {consumer.stream}/{consumer.config.durable} of "
                    f"{consumer.capability!r}: {info.num_pending} pending, "
                    f"{info.num_ack_pending} awaiting an ack"
                )
        running = sum(host.invoker.statistics().in_flight.values())  # HTTP, invoke()
        if running:
            return f"{running} invocation(s) running"
        after = [(await self.backbone.stream_info(name)).last_seq for name in streams]
        # A message stored while we looked may belong to a consumer already looked at.
        return "" if before == after else "messages arrived while looking"

    # -- looking --------------------------------------------------------------------

    async def published(self, subject_pattern: str = ">") -> list[StoredMessage]:
        """Messages the app's streams hold whose subject matches (wildcards allowed)."""
        found: list[StoredMessage] = []
        for config in self.host.plan.streams:
            if config.name != DEAD_LETTER_STREAM:
                found.extend(await self._messages(config.name, subject_pattern))
        return found

    async def dead_letters(self) -> list[StoredMessage]:
        """What of this app gave up or was malformed: its dead-letter messages."""
        return await self._messages(DEAD_LETTER_STREAM, dead_letter_subject(self.app.name, "*"))

    async def kv(self, bucket: str) -> KeyValue:
        return await self.backbone.kv(bucket)

    async def objects(self, bucket: str) -> ObjectStore:
        return await self.backbone.object_store(bucket)

    async def _messages(self, stream: str, pattern: str) -> list[StoredMessage]:
        info = await self.backbone.stream_info(stream)
        found = []
        for seq in range(info.first_seq, info.last_seq + 1):
            if info.messages == 0:
                break
            try:
                message = await self.backbone.get_message(stream, seq)
            except MessageNotFound:  # deleted or aged out
                continue
            if subject_matches(pattern, message.subject):
                found.append(message)
        return found


class _Http:
    """``TestHost.http``: requests to the app's routes, as a client sends them.

    Methods take ``json=`` (encoded, with its content-type) or ``content=`` (bytes or
    str), ``params=`` (added to the query) and ``headers=``; they return the answer
    (``status``, ``headers``, ``body``, ``text``, ``json()``) and never raise for one.
    """

    def __init__(self, test_host: TestHost) -> None:
        self._test_host = test_host
        self._client: Any = None
        self._opening = anyio.Lock()  # two first requests at once open one client

    async def get(self, path: str, **options: Any) -> HttpResponse:
        return await self.request("GET", path, **options)

    async def head(self, path: str, **options: Any) -> HttpResponse:
        return await self.request("HEAD", path, **options)

    async def options(self, path: str, **options: Any) -> HttpResponse:
        return await self.request("OPTIONS", path, **options)

    async def post(self, path: str, **options: Any) -> HttpResponse:
        return await self.request("POST", path, **options)

    async def put(self, path: str, **options: Any) -> HttpResponse:
        return await self.request("PUT", path, **options)

    async def patch(self, path: str, **options: Any) -> HttpResponse:
        return await self.request("PATCH", path, **options)

    async def delete(self, path: str, **options: Any) -> HttpResponse:
        return await self.request("DELETE", path, **options)

    async def request(self, method: str, path: str, **options: Any) -> HttpResponse:
        client = self._client
        if client is None:
            async with self._opening:
                client = self._client or await self._open()
        response: HttpResponse = await client.request(method, path, **options)
        return response

    async def _open(self) -> Any:
        """The adapter's client, on first use (its errors are the server's at start)."""
        test_host = self._test_host
        host, stack = test_host.host, test_host._stack
        assert stack is not None
        if not _declares(test_host.app, HttpTrigger):
            raise RuntimeError(f"app {test_host.app.name!r} declares no http triggers")
        factory = load_server(HTTP_ENTRY_POINT)
        if factory is None:
            raise RuntimeError(
                "TestHost.http needs thaw's HTTP adapter (the thaw.servers entry point "
                f"{HTTP_ENTRY_POINT!r}): install the 'fast' extra, or reinstall thaw "
                "(pip install -e .) if it predates that entry point"
            )
        self._client = await stack.enter_async_context(
            factory(host, max_body=test_host._max_body, wall_clock=test_host.wall_time)
        )
        return self._client


def _declares(app: App, kind: type) -> bool:
    return any(isinstance(t, kind) for spec in app.capabilities.values() for t in spec.triggers)


def _next_wake(clock: FakeClock) -> float | None:
    """The earliest time a task waits for on ``clock`` (the heap is FakeClock's own)."""
    times = [when for when, _, wake in clock._sleepers if not wake.is_set()]
    return min(times) if times else None


async def _wait_all_tasks_blocked() -> None:
    """Yield to the loop until every other task waits on something (trio's primitive)."""
    try:
        this = asyncio.current_task()
    except RuntimeError:
        this = None
    if this is None:  # trio: its own wait_all_tasks_blocked, through anyio
        await anyio.wait_all_tasks_blocked()
        return
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(0)
        # Callbacks ready to run (a wakeup, anyio delivering a cancellation) mean not yet.
        if getattr(loop, "_ready", None):
            continue
        for task in asyncio.all_tasks():
            if task is this:
                continue
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or waiter.done():
                break  # this task can still run: give it the loop
        else:
            return
