"""Helpers for the HTTP tests: a server fixture that checks for leaks, a raw client.

Every wait is bounded (``anyio.fail_after``); every socket is closed. After a
server exits, no connection and no request task may be left: ``serving``
asserts it, so each test that uses it is also a leak test.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httptools
import msgspec
import pytest

from thaw import App
from thaw.adapters.http import (
    HttpConfig,
    HttpServer,
    Service,
    open_http_server,
    open_service_server,
)
from thaw.adapters.http.metrics import ServerCounters
from thaw.lowlevel import Invoker

WAIT = 5.0  # the bound on any single wait in these tests


class Reply(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: bytes
    informational: list[int] = []


@asynccontextmanager
async def serving(
    target: App | Service,
    config: HttpConfig | None = None,
    *,
    counters: ServerCounters | None = None,
) -> AsyncIterator[HttpServer]:
    """Serve an app (or a bare Service) on 127.0.0.1:0; on exit, assert nothing leaked.

    ``counters`` (a bare Service only) are handed to the server, for the test to read.
    """
    if isinstance(target, App):
        assert counters is None, "open_http_server counts for its own /metrics"
        opened = open_http_server(Invoker(target), config=config)
    else:
        opened = open_service_server(target, config=config, counters=counters)
    async with opened as server:
        yield server
    stats = server.statistics()
    assert stats.connections == 0, stats
    assert stats.tasks == 0, stats
    assert stats.in_flight == 0, stats


class RawClient:
    """A raw TCP client: write any bytes, parse what comes back with httptools."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buffer = b""

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[RawClient]:
        with anyio.fail_after(WAIT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        try:
            yield client
        finally:
            writer.close()
            with anyio.move_on_after(WAIT):
                try:
                    await writer.wait_closed()
                except OSError:
                    pass

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        with anyio.fail_after(WAIT):
            await self.writer.drain()

    async def send_slowly(self, data: bytes, step: int = 1) -> None:
        for i in range(0, len(data), step):
            await self.send(data[i : i + step])

    def half_close(self) -> None:
        self.writer.write_eof()

    def reset(self) -> None:
        """Vanish: close with RST (SO_LINGER 0), as a crashed client or a dropped network."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def response(self, *, head: bool = False) -> Reply:
        """Read one response (skipping 1xx, which are recorded); fail if the peer closes first."""
        informational: list[int] = []
        while True:
            reply = await self._one(head=head)
            if reply.status >= 200:
                reply.informational = informational
                return reply
            informational.append(reply.status)

    async def _one(self, *, head: bool) -> Reply:
        done: list[Reply] = []
        headers: dict[str, str] = {}
        body: list[bytes] = []

        class Callbacks:
            def on_header(self, name: bytes, value: bytes) -> None:
                headers[name.decode().lower()] = value.decode("latin-1")

            def on_body(self, chunk: bytes) -> None:
                body.append(chunk)

            def on_headers_complete(self) -> None:
                if head:
                    done.append(Reply(parser.get_status_code(), headers, b""))

            def on_message_complete(self) -> None:
                if not done:
                    done.append(Reply(parser.get_status_code(), headers, b"".join(body)))

        parser = httptools.HttpResponseParser(Callbacks())
        data, self._buffer = self._buffer, b""
        with anyio.fail_after(WAIT):
            while True:
                if data:
                    # Feed byte by byte so what follows this response stays buffered.
                    for index in range(len(data)):
                        parser.feed_data(data[index : index + 1])
                        if done:
                            self._buffer = data[index + 1 :]
                            return done[0]
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed before a full response")

    async def closed(self) -> bytes:
        """Read until the server closes (bounded); returns what came before the close."""
        chunks = [self._buffer]
        self._buffer = b""
        with anyio.fail_after(WAIT):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)


def request(
    method: str = "GET",
    target: str = "/",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: test"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body and not any(
        k.lower() in ("content-length", "transfer-encoding") for k in headers or {}
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.anyio
async def test_raw_client_parses_pipelined_responses_separately() -> None:
    app = App("support")

    @app.capability()
    async def unused() -> None:
        return None

    async with serving(app) as server, RawClient.connect(server.port) as client:
        await client.send(request("GET", "/healthz") * 2)
        first, second = await client.response(), await client.response()
        assert (first.status, second.status) == (200, 200)
        assert first.body == b'{"status":"ok"}'
