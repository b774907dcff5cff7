"""A fast path in nats-py's protocol reader for the pull inboxes' deliveries.

nats-py turns every frame into a ``Msg`` dataclass, parses its headers, queues it on
the subscription's ``asyncio.Queue`` and hands it to a task that awaits the
callback: about 6 µs of a consume + ack on the machine we measure on, more than
Thaw's own work (benchmarks/README.md, "JetStream"). Written here because that
measurement says it pays: ``DeliveryParser`` replaces the client's parser (nats-py
2.16 makes one per client and only ever ``reset``s it; the version is pinned in
constraints.txt and tests/test_nats_reader.py replays real server bytes through
both). An ``HMSG``/``MSG`` frame for a sid in ``routes`` is cut from the stream and
handed, synchronously and in wire order, to its route as (subject, reply, raw
headers, payload) bytes; every other frame (other sids, PING, INFO, +OK, -ERR) is
cut whole and fed to a plain nats-py ``Parser``, so nats-py handles it as before.
A control line nats-py would not accept (sizes that are no numbers, negative, a
header block larger than the frame) goes to that parser too, which raises its
protocol error as it always did.

Invariants: frames are handled in the order they arrive; a frame is handled only
once it is complete (a frame split over reads waits for the rest, its pieces kept
in a list until it is whole, so a large message is joined once); a route must not
raise and must not block (it runs inside nats-py's read loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.protocol.parser import MAX_CONTROL_LINE_SIZE, Parser

__all__ = ["DeliveryParser", "Route", "queue_publish", "route", "unroute"]

Route = Callable[[bytes, bytes, bytes, bytes], None]
_CRLF = b"\r\n"
_CONNECTED = Client.CONNECTED


class DeliveryParser(Parser):
    """nats-py's Parser with a synchronous fast path for the sids in ``routes``."""

    def __init__(self, nc: object = None) -> None:
        self.routes: dict[int, Route] = {}
        self._slow = Parser(nc)
        self._pieces: list[bytes] = []  # the start of a frame whose end has not arrived
        self._have = 0  # bytes in _pieces
        self._need = 0  # bytes the frame in _pieces needs in all (0: not known yet)
        super().__init__(nc)

    def reset(self) -> None:
        super().reset()
        self._slow.reset()
        self._pieces, self._have, self._need = [], 0, 0

    async def parse(self, data: bytes = b"") -> None:
        if self._pieces:
            self._pieces.append(data)
            self._have += len(data)
            if self._have < self._need:
                return  # a large frame still arriving: join it once, when it is whole
            data = b"".join(self._pieces)
            self._pieces, self._have, self._need = [], 0, 0
        routes = self.routes
        find = data.find
        pos, size = 0, len(data)
        while pos < size:
            end = find(_CRLF, pos)
            if end < 0:
                if size - pos > MAX_CONTROL_LINE_SIZE:
                    await self._slow.parse(data[pos:])  # nats-py raises its protocol error
                    return
                break
            op = data[pos : pos + 5]
            if op == b"HMSG " or op[:4] == b"MSG ":
                cut = _cut(data, pos, end, op == b"HMSG ")
                if cut is None:  # a control line nats-py would refuse: it says why
                    await self._slow.parse(data[pos:])
                    return
                subject, number, reply, headers_size, total = cut
                start = end + 2
                stop = start + total + 2
                if stop > size:
                    self._need = stop - pos
                    break  # the rest of the frame is still on its way
                route = routes.get(number)
                if route is not None:
                    middle = start + headers_size
                    route(subject, reply, data[start:middle], data[middle : start + total])
                    pos = stop
                    continue
            else:
                stop = end + 2
            frame = data[pos:stop]
            pos = stop
            await self._slow.parse(frame)
        if pos < size:
            rest = data[pos:]
            self._pieces, self._have = [rest], len(rest)


def route(client: Client, subscription: Subscription, to: Route) -> bool:
    """Send ``subscription``'s frames to ``to`` from now on, when ``client`` reads with a
    ``DeliveryParser`` (False: it does not, and nats-py's callback keeps them)."""
    parser = client._ps
    if type(parser) is not DeliveryParser:
        return False
    parser.routes[subscription._id] = to
    return True


def unroute(client: Client, subscription: Subscription) -> None:
    parser = client._ps
    if type(parser) is DeliveryParser:
        parser.routes.pop(subscription._id, None)


def _cut(
    data: bytes, pos: int, end: int, headed: bool
) -> tuple[bytes, int, bytes, int, int] | None:
    """(subject, sid, reply, header bytes, total bytes) of a MSG/HMSG control line."""
    parts = data[pos:end].split()
    try:
        if headed and len(parts) == 6:  # HMSG subject sid reply hdr_len total_len
            _, subject, sid, reply, hsize, tsize = parts
        elif headed and len(parts) == 5:  # HMSG subject sid hdr_len total_len
            _, subject, sid, hsize, tsize = parts
            reply = b""
        elif not headed and len(parts) == 5:  # MSG subject sid reply len
            _, subject, sid, reply, tsize = parts
            hsize = b"0"
        elif not headed and len(parts) == 4:  # MSG subject sid len
            _, subject, sid, tsize = parts
            reply, hsize = b"", b"0"
        else:
            return None
        if not (hsize.isdigit() and tsize.isdigit()):
            return None
        headers_size, total = int(hsize), int(tsize)
        number = int(sid)
    except ValueError:
        return None
    if headers_size > total:
        return None
    return subject, number, reply, headers_size, total


def queue_publish(client: Client, command: bytes) -> bool:
    """Queue an already-encoded ``PUB`` on nats-py's pending buffer (2.16 internals),
    waking its flusher once per batch as ``publish`` does. False, with nothing queued,
    when that is not the plain case (not connected, no flusher running, the buffer
    over its limit): the caller then uses ``client.publish``, which buffers, flushes
    inline or raises as nats-py decides."""
    if client._status != _CONNECTED:
        return False
    flusher = client._flusher_task
    size = client._pending_data_size + len(command)
    if flusher is None or flusher.done() or size > client._max_pending_size:
        return False
    client._pending.append(command)
    client._pending_data_size = size
    queue = client._flush_queue
    if queue is not None and queue.empty():
        queue.put_nowait(asyncio.get_running_loop().create_future())
    return True
