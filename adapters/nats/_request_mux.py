"""Requests to JetStream on one connection through one wildcard inbox (a request muxer).

Every JetStream API call, stream publish and KV write is a request whose reply the
server sends to the request's reply subject. nats-py's ``Client.request`` is
general (any timeout per call), and pays for it on every call: a random token, a
future with a done-callback, and ``asyncio.wait_for`` (a second future, a timer
and a callback). All the requests here share one timeout (``request_timeout``),
which lets this muxer do less:

- one subscription on ``<inbox>.*`` per connection, made on first use; request
  ``n`` gets the reply subject ``<inbox>.<n>``; a dict maps reply subjects to the
  waiting futures and the subscription's callback resolves them;
- deadlines are the send time plus the one timeout, so they arrive in request
  order: a FIFO of (deadline, reply subject, future) and one loop timer, armed
  for the oldest entry, time them all out (entries already answered are dropped
  from its head as new requests arrive);
- a reply that comes after its request timed out, was cancelled or failed finds
  nothing in the dict and is dropped;
- when the connection drops, every waiting request fails at once with
  ``RequestLost``: the server answers on the connection that carried the request,
  so no reply can come on the next one, and whether the server applied the
  request is unknown, exactly as after a timeout (callers treat both alike).
  Requests sent after the drop wait in nats-py's reconnect buffer and are
  answered once it reconnects;
- ``aclose`` fails every waiting request with ``ConnectionClosedError``;
- a message whose payload and header block exceed the server's ``max_payload``
  raises ``PayloadTooLarge`` before anything is sent: nats-py counts the payload
  only, and nats-server closes the connection of a client that sends more; a
  subject past ``MAX_SUBJECT`` raises ``ConfigError`` for the same reason (the
  server's control line limit);
- replies go from nats-py's reader straight to their futures (``_reader.route``),
  without a ``Msg`` queued for a callback task;
- KV writes, the hot path, may hand over their headers already encoded
  (``header_block``) for a subject built from validated parts: the command is then
  written here, with the checks nats-py's ``publish`` makes after validation
  (closed, draining, reconnect buffer full, payload too large), which saves its
  per-call subject and header validation (nats-py is pinned in constraints.txt).

Errors are nats-py's (``TimeoutError``, ``NoRespondersError``,
``ConnectionClosedError``) plus ``RequestLost``; ``_errors.translate`` turns them
into Thaw errors, as for every other nats-py call. ``PayloadTooLarge`` is Thaw's
own already (the caller sent too much; no retry can help).
"""

from __future__ import annotations

import asyncio
from collections import deque

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol.command import hpub_cmd, pub_cmd

from thaw._errors import ConfigError
from thaw.adapters.nats._reader import route, unroute
from thaw.adapters.nats._wire import parse_headers
from thaw.backbone._rules import check_message_size, header_block_size

__all__ = ["MAX_SUBJECT", "RequestMux", "RequestLost", "header_block", "subject_too_long"]

_STATUS = "Status"
# Longest subject sent: "HPUB <subject> <reply> <sizes>\r\n" must stay under the
# server's max_control_line (4096 by default), with room for a reply inbox and sizes.
MAX_SUBJECT = 3072
_NO_RESPONDERS = "503"


def header_block(headers: dict[str, str]) -> bytes:
    """``headers`` as a NATS header block; names and values must be plain ASCII tokens."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


def subject_too_long(subject: str) -> ConfigError:
    """The error for a subject that would not fit a NATS control line (see MAX_SUBJECT)."""
    return ConfigError(
        f"subject {subject[:48]!r}... is {len(subject)} characters; NATS takes at most "
        f"{MAX_SUBJECT} here (a server closes the connection whose command line exceeds "
        "its max_control_line, 4096 bytes by default): use shorter subjects or keys"
    )


class RequestLost(nats.errors.Error):
    """The connection dropped while the request waited, so its reply cannot arrive."""

    def __str__(self) -> str:
        return "the NATS connection dropped before the reply came (the outcome is unknown)"


class RequestMux:
    """Requests with one shared timeout over one wildcard reply subscription."""

    __slots__ = (
        "_client",
        "_closed",
        "_deadlines",
        "_loop",
        "_next",
        "_prefix",
        "_subscribing",
        "_subscription",
        "_timeout",
        "_timer",
        "_waiting",
    )

    def __init__(self, client: Client, *, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._prefix = ""  # "<inbox>." once subscribed
        self._subscription: Subscription | None = None
        self._subscribing: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next = 0
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._deadlines: deque[tuple[float, str, asyncio.Future[Msg]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def waiting(self) -> int:
        """Requests sent and not yet answered, failed or timed out."""
        return len(self._waiting)

    async def request(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
        *,
        prepared: bytes | None = None,
    ) -> Msg:
        """Publish ``payload`` to ``subject`` and return the reply (see the module docstring).

        ``prepared``, instead of ``headers``: a header block from ``header_block`` (b""
        for none), for a ``subject`` the caller built from validated parts only.
        """
        if len(subject) > MAX_SUBJECT:
            raise subject_too_long(subject)
        extra = len(prepared) if prepared is not None else header_block_size(headers)
        limit = self._client.max_payload  # from the server's INFO
        if len(payload) + extra > limit:
            check_message_size(subject, len(payload), extra, limit)
        if self._subscription is None:
            await self._subscribe()
        loop = self._loop
        assert loop is not None
        self._next += 1
        reply = self._prefix + str(self._next)
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[reply] = future
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].done():  # answered ones, oldest first
            deadlines.popleft()
        deadlines.append((loop.time() + self._timeout, reply, future))
        if self._timer is None:
            self._timer = loop.call_at(deadlines[0][0], self._expire)
        try:
            if prepared is None:
                await self._client.publish(subject, payload, reply=reply, headers=headers)
            else:
                await self._publish_prepared(subject, reply, payload, prepared)
            message = await future
        except BaseException:
            self._waiting.pop(reply, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # seen: asyncio must not log it as never retrieved
            raise
        headers_in = message.headers
        if headers_in and headers_in.get(_STATUS) == _NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return message

    async def _publish_prepared(
        self, subject: str, reply: str, payload: bytes, block: bytes
    ) -> None:
        """nats-py 2.16's ``Client.publish`` after its subject and header validation."""
        client = self._client
        if client.is_closed:
            raise nats.errors.ConnectionClosedError
        if client.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        size = len(payload)
        if not client.is_connected and (
            client._max_pending_size <= 0
            or size + client._pending_data_size > client._max_pending_size
        ):
            raise nats.errors.OutboundBufferLimitError
        if size > client._max_payload:
            raise nats.errors.MaxPayloadError
        if block:
            command = hpub_cmd(subject, reply, block, payload)
        else:
            command = pub_cmd(subject, reply, payload)
        stats = client.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += size
        await client._send_command(command)
        flush_queue = client._flush_queue
        if flush_queue is not None and flush_queue.empty():
            await client._flush_pending()

    async def _subscribe(self) -> None:
        if self._closed:
            raise nats.errors.ConnectionClosedError
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        async with self._subscribing:
            if self._subscription is not None:
                return
            inbox = self._client.new_inbox()
            self._loop = asyncio.get_running_loop()
            self._prefix = inbox + "."
            self._subscription = await self._client.subscribe(inbox + ".*", cb=self._reply)
            # Replies skip nats-py's queue and callback task (thaw.adapters.nats._reader).
            route(self._client, self._subscription, self._routed)

    async def _reply(self, message: Msg) -> None:
        future = self._waiting.pop(message.subject, None)
        if future is not None and not future.done():
            future.set_result(message)

    def _routed(self, subject: bytes, reply: bytes, raw: bytes, data: bytes) -> None:
        """``_reply`` for the reader's fast path: one frame, synchronously."""
        name = subject.decode()
        future = self._waiting.pop(name, None)
        if future is not None and not future.done():
            headers = (parse_headers(raw) or None) if raw else None
            future.set_result(Msg(self._client, name, reply.decode(), data, headers))

    def _expire(self) -> None:
        """The timer: time out what is past its deadline, re-arm for the oldest left."""
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        deadlines = self._deadlines
        while deadlines:
            deadline, reply, future = deadlines[0]
            if not future.done():
                if deadline > now:
                    self._timer = loop.call_at(deadline, self._expire)
                    return
                self._waiting.pop(reply, None)
                future.set_exception(nats.errors.TimeoutError())
            deadlines.popleft()

    def _fail_all(self, error: type[nats.errors.Error]) -> None:
        waiting, self._waiting = self._waiting, {}
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for future in waiting.values():
            if not future.done():
                future.set_exception(error())

    def connection_lost(self) -> None:
        """The connection dropped: fail every waiting request (no reply can come now)."""
        self._fail_all(RequestLost)

    async def aclose(self) -> None:
        """Fail every waiting request and drop the reply subscription."""
        self._closed = True
        self._fail_all(nats.errors.ConnectionClosedError)
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            unroute(self._client, subscription)
        if subscription is not None and not self._client.is_closed:
            try:
                await subscription.unsubscribe()
            except nats.errors.Error:
                pass  # reconnecting or draining: the connection goes away anyway
