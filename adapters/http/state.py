"""ServerState: what every connection of one server shares.

The server owns it; connections register themselves and their tasks here, so
the server can drain (stop reading, wait for in-flight answers) and, past the
deadline, cancel what is left and wait for it to finish.

Imports run one way: the connection (``protocol.py``) knows this state; the
state knows connections only as ``Drainable`` (what draining asks of them) and
the service only as ``_wire.Service``. The counters are the server's: whoever
serves ``/metrics`` for it builds them and hands them in.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import msgspec

from thaw.adapters.http._wire import DateLine, Service
from thaw.adapters.http.access_log import AccessLog, open_access_log
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.http.metrics import ServerCounters

__all__ = ["Drainable", "ServerState", "ServerStatistics"]


class Drainable(Protocol):
    """What the server asks of an open connection when it shuts down."""

    def begin_drain(self) -> None:
        """Read no new requests; close once the answers already read are out."""

    def abort(self) -> None:
        """Past the drain deadline: drop the connection now."""


class ServerStatistics(msgspec.Struct, frozen=True):
    connections: int
    accepted: int
    requests: int
    in_flight: int
    tasks: int
    refused: int
    draining: bool


class ServerState:
    def __init__(
        self,
        service: Service,
        config: HttpConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        counters: ServerCounters,
    ) -> None:
        self.service = service
        self.config = config
        self.loop = loop
        self.connections: set[Drainable] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.requests = 0
        self.accepted = 0
        self.refused = 0
        self.counters = counters
        self.draining = False
        self.date = DateLine()
        self.access_log: AccessLog | None = (
            open_access_log(config.access_log_stream) if config.access_log else None
        )
        self._idle: asyncio.Future[None] | None = None

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            connections=len(self.connections),
            accepted=self.accepted,
            requests=self.requests,
            in_flight=self.in_flight,
            tasks=len(self.tasks),
            refused=self.refused,
            draining=self.draining,
        )

    def notify(self) -> None:
        """A connection or task ended: wake ``wait_idle`` once nothing is left."""
        waiter = self._idle
        if waiter is not None and not self.connections and not self.tasks and not waiter.done():
            waiter.set_result(None)

    async def wait_idle(self) -> None:
        """Return once every connection is closed and every request task has ended."""
        while self.connections or self.tasks:
            self._idle = self.loop.create_future()
            try:
                await self._idle
            finally:
                self._idle = None
