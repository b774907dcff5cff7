"""JetStreamSession: what every part of the JetStream backbone shares about its connection.

One session per backbone: the nats-py client, the options it was made with,
the request muxer that carries JetStream API calls, publishes and KV writes,
the puller that sends pull requests, whether the backbone is still open, and
whether its connection is gone for good (``lost``: closed, not by ``aclose``).
The management requests (``_management``), the KV buckets (``_kv``) and the
object stores (``_objects``) take the session; ``backbone`` composes them with
it. Nothing here imports those modules, so the package has no import circle.

Invariants: ``client``, ``options``, ``request_timeout``, ``requests`` and
``puller`` are set once and never rebound (the hot paths read them as plain
attributes); ``closed`` only ever goes from False to True, in ``aclose``, which
fails what waits before the connection is drained; ``lost`` only ever goes
from None to a reason, once, when the client closes without ``aclose`` (nats-py
gave up: an authorization violation), and then every operation raises
``BackboneError`` saying so and the ``when_lost`` listeners run; every JetStream API call
(``api``) is bounded by ``request_timeout`` and its nats-py failures are
translated in ``_errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client

from thaw.adapters.nats._errors import translated
from thaw.adapters.nats._pull import Puller
from thaw.adapters.nats._request_mux import RequestMux
from thaw.adapters.nats._wire import API, decode
from thaw.adapters.nats.connection import JetStreamOptions
from thaw.lowlevel import BackboneError

__all__ = ["JetStreamSession"]

log = logging.getLogger("thaw.nats")
_T = TypeVar("_T", bound=msgspec.Struct)


class JetStreamSession:
    """One nats-py connection as the JetStream backbone's parts share it."""

    __slots__ = (
        "_closed",
        "_lost",
        "_lost_listeners",
        "_owns_client",
        "client",
        "options",
        "puller",
        "request_timeout",
        "requests",
    )

    def __init__(self, client: Client, *, options: JetStreamOptions, owns_client: bool) -> None:
        self.client = client
        self.options = options
        self.request_timeout = options.request_timeout
        self.requests = RequestMux(client, timeout=options.request_timeout)
        self.puller = Puller(client, margin=options.request_timeout)
        self._owns_client = owns_client
        self._closed = False
        self._lost: str | None = None
        self._lost_listeners: list[Callable[[], None]] = []

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lost(self) -> str | None:
        """Why the connection is gone for good (it closed without ``aclose``), or None."""
        return self._lost

    def when_lost(self, listener: Callable[[], None]) -> None:
        """Run ``listener`` once the connection is lost for good (now, if it is)."""
        if self._lost is not None:
            listener()
        else:
            self._lost_listeners.append(listener)

    def connection_closed(self, reason: str) -> None:
        """The client closed: unless ``aclose`` did it, the backbone cannot go on."""
        if self._closed or self._lost is not None:
            return
        self._lost = f"the NATS connection was closed for good ({reason})"
        log.error("%s; this process cannot serve without it: restart it", self._lost)
        self.connection_lost()
        listeners, self._lost_listeners = self._lost_listeners, []
        for listener in listeners:
            listener()

    @property
    def connected(self) -> bool:
        """Open and connected to a server right now."""
        return not self._closed and self.client.is_connected

    def check_open(self, doing: str) -> None:
        if self._lost is not None:  # the cause, even once aclose has run since
            raise BackboneError(f"{doing}: {self._lost}; restart the process")
        if self._closed:
            raise BackboneError(f"{doing}: the JetStreamBackbone is closed; connect a new one")

    def connection_lost(self) -> None:
        """The client lost its server: fail what waits on replies that cannot come."""
        self.puller.connection_lost()
        self.requests.connection_lost()

    async def api(self, subject: str, body: bytes, kind: type[_T], doing: str) -> _T:
        """One JetStream API request (``$JS.API.<subject>``), its reply decoded as ``kind``."""
        self.check_open(doing)
        try:
            reply = await self.requests.request(f"{API}.{subject}", body)
        except nats.errors.Error as error:
            raise translated(error, doing) from error
        try:
            return decode(kind, reply.data)
        except msgspec.DecodeError as error:
            raise BackboneError(f"{doing}: JetStream sent a reply Thaw cannot read") from error

    async def aclose(self) -> None:
        """Fail waiting fetches, then drain and close the connection if this session owns it."""
        if self._closed:
            return
        self._closed = True
        await self.puller.aclose()
        await self.requests.aclose()
        if not self._owns_client or self.client.is_closed:
            return
        try:
            await self.client.drain()
        except nats.errors.Error as error:  # reconnecting or already draining
            log.debug("NATS drain failed (%s); closing", error)
            await self.client.close()
