"""The wire between a ``process`` pool and its forked children (see ``pool``).

A frame is a 4-byte big-endian length and a msgpack body. Parent to child:
``_Call(rid, capability, event)``, ``_Cancel(rid)``, ``_Stop``. Child to parent:
one ``_Ready`` or ``_StartFailed``, then ``_Answer(rid, ...)`` in any order.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import msgspec

from thaw._errors import RuntimeFault
from thaw._event import Event, Ok, Outcome, Reject, Retry
from thaw.backbone._contract import Backbone

BackboneFactory = Callable[[], Backbone | Awaitable[Backbone]]

_LENGTH = struct.Struct(">I")
_MAX_FRAME = 256 * 1024 * 1024  # a sanity bound: a bigger length means a broken stream
_CHUNK = 256 * 1024
_EXIT_INTERNAL = 70  # EX_SOFTWARE: the child's own machinery failed


class InstanceCrashed(RuntimeFault):
    """The instance process died (or was killed) before it answered."""

    code = "instance_crashed"
    http_status = 503
    retryable = True


# -- the wire ----------------------------------------------------------------------


class _Call(msgspec.Struct, frozen=True, tag="call", array_like=True):
    rid: int
    capability: str
    event: Event


class _Cancel(msgspec.Struct, frozen=True, tag="cancel", array_like=True):
    rid: int


class _Stop(msgspec.Struct, frozen=True, tag="stop", array_like=True):
    pass


class _Ready(msgspec.Struct, frozen=True, tag="ready", array_like=True):
    pid: int


class _StartFailed(msgspec.Struct, frozen=True, tag="start_failed", array_like=True):
    reason: str


class _Answer(msgspec.Struct, frozen=True, tag="answer", array_like=True):
    """One Outcome; Ok/Retry/Reject carry no tag, so exactly one field is set."""

    rid: int
    ok: Ok | None = None
    retry: Retry | None = None
    reject: Reject | None = None


_encoder = msgspec.msgpack.Encoder()
_from_child = msgspec.msgpack.Decoder(_Ready | _StartFailed | _Answer)
_to_child = msgspec.msgpack.Decoder(_Call | _Cancel | _Stop)


def _frame(message: msgspec.Struct) -> bytes:
    buffer = bytearray(_LENGTH.size)
    _encoder.encode_into(message, buffer, _LENGTH.size)
    _LENGTH.pack_into(buffer, 0, len(buffer) - _LENGTH.size)
    return bytes(buffer)


def _answer(rid: int, outcome: Outcome) -> _Answer:
    if type(outcome) is Ok:
        return _Answer(rid, ok=outcome)
    if type(outcome) is Retry:
        return _Answer(rid, retry=outcome)
    assert type(outcome) is Reject
    return _Answer(rid, reject=outcome)


_STOP_FRAME = _frame(_Stop())


class _ProtocolError(Exception):
    """The peer sent a frame that cannot be ours: the stream is unusable."""


_LOST = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    msgspec.DecodeError,
    _ProtocolError,
)


class _Channel:
    """Length-prefixed frames over a socket stream; the read buffer survives cancellation."""

    __slots__ = ("_buffer", "stream")

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def receive(self) -> bytes:
        buffer = self._buffer
        while True:
            if len(buffer) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer)
                if size > _MAX_FRAME:
                    raise _ProtocolError(f"a frame of {size} bytes")
                end = _LENGTH.size + size
                if len(buffer) >= end:
                    body = bytes(buffer[_LENGTH.size : end])
                    del buffer[:end]
                    return body
            # Data is appended as soon as receive() returns it: no await in between.
            buffer += await self.stream.receive(_CHUNK)

    async def send(self, frame: bytes) -> None:
        await self.stream.send(frame)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
