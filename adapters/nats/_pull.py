"""Pull requests to JetStream consumers, and the messages they deliver.

JetStream answers a pull request by sending each message, under its *original*
subject, to the subscription behind the request's reply inbox; a status message
(``404`` no messages, ``408`` expired, ``409`` refused) ends a request that did
not fill its batch. A shared inbox therefore cannot tell which request a message
answers, and concurrent fetches on one inbox steal each other's messages and
end-of-request statuses. So:

- every in-flight pull request has an inbox (subscription) of its own;
- an inbox returns to the pool only once the server has finished its request
  (batch filled, or a terminal status), so nothing late can land on a reused one;
  an inbox whose request may still be live (local deadline passed, fetch
  cancelled, backbone closed) is unsubscribed instead;
- every request is ``no_wait`` with ``expires``: the server delivers what it has
  (up to the batch) and ends the request at once, or waits up to ``expires`` for
  the first message; the fetch waits on the server's answer, and the local
  deadline (``expires`` plus a margin) only guards against a lost connection;
- a delivery that arrives with nobody waiting, and messages a cancelled fetch
  had already received, are nak'ed so they are redelivered now, not after AckWait;
- when the connection drops, every waiting pull ends at once (the server forgot
  it), so fetches return and retry after the reconnect instead of stalling.
"""

from __future__ import annotations

import logging

import anyio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from thaw.adapters.nats._errors import translate
from thaw.adapters.nats._reader import queue_publish, route, unroute
from thaw.adapters.nats._wire import API, nanoseconds, parse_header_block, parse_headers
from thaw.lowlevel import BackboneError, DeliveredMessage

__all__ = ["Puller", "PullResult", "JetStreamMessage", "CLOSED", "LOST", "pending_after"]

log = logging.getLogger("thaw.nats")

CLOSED = "closed"  # the pseudo status of a request aborted by Puller.aclose
LOST = "lost"  # ... and of one the connection dropped (the server forgot it)
_HEARTBEAT = "100"
# A "now" fetch still needs an expiry: JetStream silently drops a no_wait pull that
# meets max_ack_pending unless it can expire. The expiry also gives the consumer's
# delivery loop time to run: with 1 ms a fresh consumer under load sometimes
# delivered nothing it had.
_MIN_EXPIRES = 0.02
_MAX_IDLE_INBOXES = 64
_TOP_UPS = 3  # follow-up pulls when JetStream ends a pull early but still holds messages


class PullResult:
    __slots__ = ("description", "done", "limit", "messages", "status")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.messages: list[JetStreamMessage] = []
        self.status = ""  # "" while open or when the batch filled; else the server's status
        self.description = ""
        self.done = anyio.Event()

    def receive(self, message: JetStreamMessage) -> None:
        self.messages.append(message)
        if len(self.messages) >= self.limit:
            self.done.set()

    def end(self, status: str, description: str) -> None:
        if status == _HEARTBEAT:
            return
        self.status = status
        self.description = description
        self.done.set()

    def abort(self, status: str) -> None:
        if not self.done.is_set():
            self.status = status
            self.done.set()


class _Inbox:
    __slots__ = ("client", "request", "subject", "subscription", "timeout")

    def __init__(self, client: Client, subject: str, timeout: float) -> None:
        self.client = client
        self.subject = subject
        self.timeout = timeout
        self.request: PullResult | None = None
        self.subscription: Subscription | None = None

    def deliver(self, subject: bytes, reply: bytes, raw_headers: bytes, data: bytes) -> None:
        """The parser's route (``DeliveryParser``): one frame, synchronously, in order."""
        request = self.request
        if reply:
            try:
                headers = parse_headers(raw_headers) if raw_headers else None
                message = JetStreamMessage(
                    self.client, subject.decode(), reply, data, headers, timeout=self.timeout
                )
            except (ValueError, IndexError):  # not a JetStream delivery: never raise in the reader
                log.warning("ignored a message on pull inbox %s with reply %r", self.subject, reply)
                return
            if request is not None and not request.done.is_set():
                request.receive(message)
            else:  # a request this inbox no longer waits for still delivered: give it back
                if not queue_publish(self.client, b"PUB %s 4\r\n-NAK\r\n" % reply):
                    log.debug("could not nak %s now; AckWait redelivers it", reply)
            return
        if request is not None and not request.done.is_set():
            _, status, description = parse_header_block(raw_headers)
            request.end(status, description)

    async def on_message(self, message: Msg) -> None:
        """nats-py's callback, for a client without ``DeliveryParser``."""
        request = self.request
        if request is not None and not request.done.is_set():
            if message.reply:
                request.receive(
                    JetStreamMessage(
                        self.client,
                        message.subject,
                        message.reply.encode(),
                        message.data,
                        message.headers,
                        timeout=self.timeout,
                    )
                )
            else:
                headers = message.headers or {}
                request.end(headers.get("Status", ""), headers.get("Description", ""))
        elif message.reply:
            # A request this inbox no longer waits for still delivered: give it back now.
            await _nak_quietly(self.client, message.reply)


async def _nak_quietly(client: Client, reply: str) -> None:
    try:
        await client.publish(reply, b"-NAK")
    except Exception as error:  # the connection is gone; AckWait will redeliver
        log.debug("could not nak %s: %s", reply, error)


class Puller:
    """Sends pull requests for any consumer on one connection; see the module docstring."""

    def __init__(self, client: Client, *, margin: float) -> None:
        self._client = client
        self._margin = margin  # also the timeout of a delivery's confirmed nak and term
        self._idle: list[_Inbox] = []
        self._active: set[PullResult] = set()
        self._closed = False

    async def _take_inbox(self) -> _Inbox:
        if self._idle:
            return self._idle.pop()
        inbox = _Inbox(self._client, self._client.new_inbox(), self._margin)
        inbox.subscription = subscription = await self._client.subscribe(
            inbox.subject, cb=inbox.on_message
        )
        route(self._client, subscription, inbox.deliver)  # skips nats-py's Msg and queue
        return inbox

    async def _drop_inbox(self, inbox: _Inbox) -> None:
        subscription = inbox.subscription
        inbox.subscription = None
        if subscription is not None:
            unroute(self._client, subscription)
        if subscription is None or self._client.is_closed:
            return
        try:
            await subscription.unsubscribe()
        except Exception as error:  # closing or reconnecting: the server forgets it anyway
            log.debug("could not unsubscribe pull inbox %s: %s", inbox.subject, error)

    async def pull(self, stream: str, consumer: str, *, batch: int, timeout: float) -> PullResult:
        """Ask for up to ``batch`` messages, waiting at most ``timeout`` for the first."""
        if self._closed:
            raise BackboneError("the JetStreamBackbone is closed; connect a new one")
        doing = f"fetch from consumer {consumer!r} on stream {stream!r}"
        expires = max(timeout, _MIN_EXPIRES)
        body = b'{"batch":%d,"expires":%d,"no_wait":true}' % (batch, nanoseconds(expires))
        request = PullResult(batch)
        finished = False
        with translate(doing):
            inbox = await self._take_inbox()
        inbox.request = request
        self._active.add(request)
        try:
            with translate(doing):
                await self._client.publish(
                    f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}", body, reply=inbox.subject
                )
            with anyio.move_on_after(expires + self._margin):
                await request.done.wait()
            finished = True
            return request
        finally:
            self._active.discard(request)
            inbox.request = None
            answered = request.done.is_set() and request.status not in (CLOSED, LOST)
            if finished and answered and len(self._idle) < _MAX_IDLE_INBOXES:
                self._idle.append(inbox)
            else:
                with anyio.CancelScope(shield=True):
                    await self._drop_inbox(inbox)
                    if not finished:  # cancelled or failed: nobody will see these
                        for message in request.messages:
                            await _nak_quietly(self._client, message._reply)

    async def fetch(
        self, stream: str, consumer: str, *, batch: int, timeout: float
    ) -> tuple[list[JetStreamMessage], str, str]:
        """Pull up to ``batch`` messages: (messages, last status, its description).

        JetStream can end a no_wait pull early while it still holds messages (its
        pending count lags behind); the last delivery's metadata says so, and a
        follow-up pull, which does not wait, takes the rest.
        """
        pulled = await self.pull(stream, consumer, batch=batch, timeout=timeout)
        received = pulled.messages
        for _ in range(_TOP_UPS):
            if pulled.status not in ("404", "408") or not pulled.messages:
                break
            if len(received) >= batch or pending_after(received[-1]) == 0:
                break
            pulled = await self.pull(stream, consumer, batch=batch - len(received), timeout=0.0)
            received += pulled.messages
        return received, pulled.status, pulled.description

    def connection_lost(self) -> None:
        """End the waiting pulls: a dropped connection takes their requests with it.

        The server drops a pull request once its reply subject has no subscriber, and a
        reconnect (to the same or a restarted server) does not bring it back; waiting
        on would stall each fetch until its full timeout. They end now, empty or with
        what had arrived, and the caller simply fetches again.
        """
        for request in list(self._active):
            request.abort(LOST)

    async def aclose(self) -> None:
        """Fail the waiting pulls and forget the idle inboxes (the connection closes next)."""
        self._closed = True
        for request in list(self._active):
            request.abort(CLOSED)
        idle, self._idle = self._idle, []
        for inbox in idle:
            await self._drop_inbox(inbox)


def pending_after(message: JetStreamMessage) -> int:
    """How many new messages the consumer still held when it delivered ``message``."""
    return message.pending


class JetStreamMessage(DeliveredMessage):
    """One delivery from a durable pull consumer (satisfies the ``Message`` protocol).

    ``ack`` and ``in_progress`` are fire-and-forget publishes to the delivery's
    ``$JS.ACK`` subject, as in every NATS client: they are the hot path, and a lost
    ack only means a redelivery, which idempotency absorbs. ``nak`` and ``term``
    wait for the server to confirm (an ack with a reply subject), so a retry or a
    dead-letter decision is in force before the call returns and the next fetch
    sees it. JetStream ignores acks for a message no longer pending, so acking
    twice, or nak'ing after an ack, is harmless.
    """

    __slots__ = ("_client", "_reply_bytes", "_timeout")

    def __init__(
        self,
        client: Client,
        subject: str,
        reply: bytes,
        data: bytes,
        headers: dict[str, str] | None,
        *,
        timeout: float,
    ) -> None:
        super().__init__(subject, reply.decode(), data, headers)
        self._client = client
        self._reply_bytes = reply
        self._timeout = timeout

    async def _send(self, payload: bytes, doing: str) -> None:
        with translate(f"{doing} {self._stream}#{self._seq}"):
            await self._client.publish(self._reply, payload)

    async def _confirm(self, payload: bytes, doing: str) -> None:
        with translate(f"{doing} {self._stream}#{self._seq}"):
            await self._client.request(self._reply, payload, timeout=self._timeout)

    async def ack(self) -> None:
        # The hot path: a plain publish, translated only when it fails (``translate`` as a
        # context manager costs more than the publish itself).
        if queue_publish(self._client, b"PUB %s 4\r\n+ACK\r\n" % self._reply_bytes):
            return  # the reply subject came from the server: no validation needed
        try:
            await self._client.publish(self._reply, b"+ACK")
        except Exception as error:
            with translate(f"ack {self._stream}#{self._seq}"):
                raise error

    async def nak(self, delay: float | None = None) -> None:
        if delay is not None and delay > 0:
            await self._confirm(b'-NAK {"delay":%d}' % nanoseconds(delay), "nak")
        else:
            await self._confirm(b"-NAK", "nak")

    async def term(self, reason: str = "") -> None:
        await self._confirm(b"+TERM " + reason.encode() if reason else b"+TERM", "term")

    async def in_progress(self) -> None:
        await self._send(b"+WPI", "in-progress ack")
