"""Connecting to NATS: the options Thaw exposes, credentials, TLS, and reconnect behaviour.

The first connection is bounded (``connect_attempts`` per server, each within
``connect_timeout``) so a wrong URL fails fast with a clear error; once connected,
the client reconnects forever, replaying its subscriptions, so consumers resume by
themselves after a server restart. A protocol error the server answers by closing
the connection (``-ERR 'Maximum Payload Violation'``, a control line too long)
is a reconnect too, not the end nats-py makes of it; only an authorization
violation closes the client for good, and ``on_closed`` says so (with the reason)
so the backbone can report itself dead. Secrets never reach logs, reprs or errors.

``wait_subscribed`` is the one way the adapter knows the server has a connection's
subscriptions (nats-py's ``flush`` alone does not promise it; see there).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.transport import TcpTransport
from nats.protocol.parser import AUTHORIZATION_VIOLATION, PERMISSIONS_ERR

from thaw.adapters.nats._reader import DeliveryParser
from thaw.lowlevel import BackboneError

__all__ = ["JetStreamOptions", "connect_client", "redact", "wait_subscribed"]

log = logging.getLogger("thaw.nats")
_REFUSALS_TO_GIVE_UP = 2  # authorization violations per server before the client closes
_SECRETS = ("password", "token")
_CLOSE_WAIT = 0.5  # seconds a closed socket may take to say so


class JetStreamOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach NATS, and what this backbone asks of the streams it creates."""

    name: str = "thaw"  # the connection name shown by nats-server monitoring
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None  # a .creds file (JWT + nkey seed)
    nkeys_seed_file: str | None = None
    tls_ca_file: str | None = None  # setting any tls_* file turns TLS on
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None  # the name to verify, when the URL's host differs
    inbox_prefix: str = "_INBOX"  # reply subjects: what the permissions must allow
    connect_timeout: float = 2.0
    connect_attempts: int = 3  # per server, for the first connection only
    reconnect_wait: float = 0.25  # after the first connection, reconnects never stop
    reconnect_buffer: int = 8 * 1024 * 1024  # bytes of publishes held while reconnecting
    request_timeout: float = 5.0  # each JetStream API call and publish ack
    replicas: int = 1  # replicas for the streams and buckets this backbone creates

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{field}={'***' if field in _SECRETS else repr(value)}"
            for field in self.__struct_fields__
            if (value := getattr(self, field)) is not None
        )
        return f"JetStreamOptions({fields})"


def redact(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _tls_context(options: JetStreamOptions) -> ssl.SSLContext | None:
    if not (options.tls_ca_file or options.tls_cert_file or options.tls_key_file):
        return None
    context = ssl.create_default_context(cafile=options.tls_ca_file)
    if options.tls_cert_file:
        context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    return context


class _TcpTransport(TcpTransport):
    """nats-py's TCP transport, whose close is bounded: after a failed TLS handshake
    nats-py 2.16 waits for good on the socket ``start_tls`` gave up (a certificate the
    CA does not vouch for hung the first connection instead of failing it)."""

    async def wait_closed(self) -> None:
        with anyio.move_on_after(_CLOSE_WAIT):
            await super().wait_closed()  # type: ignore[no-untyped-call]


class _Client(Client):
    """nats-py's client, reconnecting after a protocol error the server closed it for.

    nats-py 2.16 (pinned in constraints.txt) closes for good on every ``-ERR`` but a
    stale connection, so one bad command (an oversized message, a subject past the
    server's control line) left the host without a connection while it kept running.
    The server has dropped the connection by then: reconnecting, with every
    subscription replayed, is what a dropped connection gets anyway. Authorization
    violations (credentials revoked) still close: retrying them cannot succeed.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ps = DeliveryParser(self)  # the pull inboxes' fast path (thaw.adapters.nats._reader)

    async def _connect_to_server(self, s: Any) -> None:
        await super()._connect_to_server(s)
        if type(self._transport) is TcpTransport:  # nats-py makes it here; it adds no state
            self._transport.__class__ = _TcpTransport

    async def _process_err(self, err_msg: str) -> None:
        fatal = AUTHORIZATION_VIOLATION in err_msg or PERMISSIONS_ERR in err_msg
        if fatal or self.is_connecting or not self.options["allow_reconnect"]:
            await super()._process_err(err_msg)
            return
        error = nats.errors.Error(f"nats: {err_msg.strip(chr(39))}; reconnecting")
        self._err = error
        await self._error_cb(error)
        await self._process_op_err(error)


async def _close_refused(client: Client) -> None:
    """Close the socket of a reconnect attempt the server refused: nats-py 2.16 replaces
    it with the next attempt's without closing it (one leaked socket per attempt)."""
    transport = client._transport
    if transport is None:
        return
    try:
        transport.close()  # type: ignore[no-untyped-call]  # nats-py leaves these untyped
        await transport.wait_closed()  # type: ignore[no-untyped-call]
    except OSError:
        pass  # the server has closed it already


def _connection_callbacks(
    client: Client,
    shown: str,
    on_disconnect: Callable[[], None] | None,
    on_closed: Callable[[str], None] | None,
    seen: list[Exception],
) -> dict[str, Any]:
    """Log connection trouble once per event, briefly (nats-py's default logs tracebacks)."""

    def closing() -> bool:
        # Closing on purpose is not news, nor is a server that goes away meanwhile.
        return bool(client.is_closed or client.is_draining)

    refusals = [0]  # authorization violations in a row since the last good connection
    refused: list[str] = []  # why the client gave up reconnecting, once it has

    async def error_cb(error: Exception) -> None:
        # Before the first connection, connect_client's error says it all, once.
        quiet = closing() or client.is_connecting
        if client.is_connecting:
            seen[:] = [error]  # the reason connect_client gives if no attempt succeeds
        level = logging.DEBUG if quiet else logging.WARNING
        log.log(level, "NATS connection to %s: %s", shown, error or type(error).__name__)
        if (
            AUTHORIZATION_VIOLATION in str(error).lower()
            and client.options.get("max_reconnect_attempts") == -1
        ):  # reconnecting after the first connection
            refusals[0] += 1
            await _close_refused(client)
            # Every server refused the credentials twice (the Go client's rule): nats-py
            # would retry forever, a host that is up but can never serve again. Let its
            # reconnect loop drop those servers, which closes the client (on_closed).
            if refusals[0] >= _REFUSALS_TO_GIVE_UP * max(1, len(client.servers)):
                client.options["max_reconnect_attempts"] = 1
                refused[:] = [f"every server refused the credentials: {error}"]

    async def disconnected_cb() -> None:
        if on_disconnect is not None:
            on_disconnect()
        if not closing():
            log.warning("NATS connection to %s lost; reconnecting", shown)

    async def reconnected_cb() -> None:
        refusals[0] = 0
        log.info("NATS connection to %s re-established", shown)

    async def closed_cb() -> None:
        # Also runs after a close Thaw asked for; on_closed tells the two apart.
        if on_closed is not None:
            reason = refused[0] if refused else str(client.last_error or "")
            on_closed(reason or "the connection was closed")

    return {
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "closed_cb": closed_cb,
    }


async def connect_client(
    servers: str | Sequence[str],
    options: JetStreamOptions,
    *,
    on_disconnect: Callable[[], None] | None = None,
    on_closed: Callable[[str], None] | None = None,
) -> Client:
    """A connected nats-py client for ``servers`` (``nats://host:port`` URLs).

    ``on_disconnect`` runs whenever the connection drops (then it reconnects);
    ``on_closed`` once the client is closed, with the last error's text.
    """
    urls = [servers] if isinstance(servers, str) else list(servers)
    shown = ", ".join(redact(url) for url in urls)
    kwargs: dict[str, Any] = {
        "servers": urls,
        "name": options.name,
        "connect_timeout": options.connect_timeout,
        "reconnect_time_wait": options.reconnect_wait,
        "max_reconnect_attempts": options.connect_attempts,
        "pending_size": options.reconnect_buffer,
        "drain_timeout": options.request_timeout,
        "inbox_prefix": options.inbox_prefix,
    }
    renamed = {
        "creds_file": "user_credentials",
        "nkeys_seed_file": "nkeys_seed",
        "tls_server_name": "tls_hostname",
    }
    for field in ("user", "password", "token", "creds_file", "nkeys_seed_file", "tls_server_name"):
        value = getattr(options, field)
        if value is not None:
            kwargs[renamed.get(field, field)] = value
    tls = _tls_context(options)
    if tls is not None:
        kwargs["tls"] = tls
    client = _Client()
    seen: list[Exception] = []
    kwargs.update(_connection_callbacks(client, shown, on_disconnect, on_closed, seen))
    # Each attempt is bounded by nats-py; the whole first connection is too, and so is
    # the cleanup after it, whatever nats-py waits for (see _TcpTransport).
    attempt = 2 * options.connect_timeout + options.reconnect_wait  # TCP, then TLS
    budget = len(urls) * (options.connect_attempts + 1) * attempt
    try:
        with anyio.fail_after(budget):
            await client.connect(**kwargs)
    except (OSError, nats.errors.Error, TimeoutError) as error:
        why = _why(seen[-1] if seen else error)
        with anyio.move_on_after(options.connect_timeout):
            await client.close()
        raise BackboneError(f"could not connect to NATS at {shown}: {why}") from error
    # The first connection was bounded; from now on the client rides out restarts.
    client.options["max_reconnect_attempts"] = -1
    return client


def _why(cause: BaseException) -> str:
    """One line saying why the first connection failed (nats-py ends with "no servers
    available" whatever happened: the last attempt's error is the reason)."""
    text = " ".join(str(cause).split()) or type(cause).__name__
    if AUTHORIZATION_VIOLATION.lower() in text.lower():
        return (
            "the server refused the credentials (authorization violation); check the user, "
            "password, token, nkey seed or .creds file (docs/security.md)"
        )
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed: {text} (check --nats-tls-ca, --nats-tls-cert, --nats-tls-key)"
    return text


async def wait_subscribed(client: Client, *, timeout: float = 10.0) -> None:
    """Return once the server has every subscription made on ``client`` so far.

    nats-py 2.16's ``flush`` writes its PING straight to the socket, while the SUB
    that ``subscribe`` queued may still wait in the client's pending buffer for the
    flusher task: the PONG can then come back before the server knows the
    subscription, and a request sent right after gets "no responders". So the
    pending buffer goes out first: a future queued to the flusher is resolved only
    once the flusher has written everything pending when it took the future (it
    writes all of it on each wake), which includes every SUB queued before. The PING
    that ``flush`` writes after that follows them on the wire, and the server answers
    a connection's commands in order, so its PONG means it has them.

    Raises nats-py's ``FlushTimeoutError`` after ``timeout`` seconds (a connection
    that is down), ``ConnectionClosedError`` on a closed client.
    """
    if client.is_closed:
        raise nats.errors.ConnectionClosedError
    try:
        with anyio.fail_after(timeout):
            queue = _flusher_queue(client)
            if queue is not None:
                written: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                await queue.put(written)
                await written
            await client.flush()  # with no flusher running, nats-py writes what is pending
    except TimeoutError:
        raise nats.errors.FlushTimeoutError from None


def _flusher_queue(client: Client) -> asyncio.Queue[asyncio.Future[Any]] | None:
    """nats-py's flusher queue while its flusher task runs (2.16 internals; pinned in
    constraints.txt); None while disconnected or without a flusher."""
    flusher = client._flusher_task
    if not client.is_connected or flusher is None or flusher.done():
        return None
    return client._flush_queue
