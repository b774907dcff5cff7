"""Stream and consumer management requests: look up, create or confirm streams and consumers.

"Create or confirm" never updates: an existing definition is returned for the
caller to compare (``update_stream``/``update_consumer`` change one in place when
the caller has decided a change is allowed), and a create that loses a race to
another creator (name in use, consumer exists) reads the winner's definition
instead of failing. Each
function takes the ``JetStreamSession`` for its ``api`` method (one bounded
request each).
"""

from __future__ import annotations

from thaw.adapters.nats._errors import (
    CONSUMER_EXISTS,
    CONSUMER_NOT_FOUND,
    STREAM_NAME_IN_USE,
    STREAM_NOT_FOUND,
    SUBJECTS_OVERLAP,
    api_error,
    stream_missing,
)
from thaw.adapters.nats._wire import (
    ConsumerConfigWire,
    ConsumerCreateRequest,
    ConsumerInfoReply,
    StreamConfigWire,
    StreamInfoReply,
    StreamNamesReply,
    encode,
)
from thaw.adapters.nats.session import JetStreamSession
from thaw.lowlevel import DefinitionConflict

__all__ = [
    "stream_reply",
    "streams_capturing",
    "ensure_stream",
    "consumer_reply",
    "ensure_consumer",
    "update_consumer",
    "update_stream",
]


async def stream_reply(session: JetStreamSession, name: str, doing: str) -> StreamInfoReply | None:
    """The stream's info, or None when there is no such stream."""
    reply = await session.api(f"STREAM.INFO.{name}", b"", StreamInfoReply, doing)
    if reply.error is not None:
        if reply.error.err_code == STREAM_NOT_FOUND:
            return None
        raise api_error(reply.error, doing)
    return reply


async def streams_capturing(session: JetStreamSession, subject: str, doing: str) -> list[str]:
    """Names of the streams whose subjects overlap ``subject``."""
    body = encode({"subject": subject})
    names = await session.api("STREAM.NAMES", body, StreamNamesReply, doing)
    return names.streams or []


async def _overlap(
    session: JetStreamSession, wire: StreamConfigWire, doing: str
) -> DefinitionConflict:
    for subject in wire.subjects:
        for other in await streams_capturing(session, subject, doing):
            if other != wire.name:
                return DefinitionConflict(
                    f"stream {wire.name!r} subject {subject!r} overlaps a subject of "
                    f"stream {other!r}; a subject can belong to one stream only"
                )
    return DefinitionConflict(
        f"stream {wire.name!r}: its subjects overlap another stream's; a subject can "
        "belong to one stream only"
    )


async def ensure_stream(
    session: JetStreamSession, wire: StreamConfigWire, doing: str
) -> tuple[StreamInfoReply, bool]:
    """Create the stream, or find the existing one: (its info, whether this call created it)."""
    existing = await stream_reply(session, wire.name, doing)
    if existing is not None:
        return existing, False
    body = encode(wire)
    created = await session.api(f"STREAM.CREATE.{wire.name}", body, StreamInfoReply, doing)
    if created.error is None:
        return created, True
    if created.error.err_code == SUBJECTS_OVERLAP:
        raise await _overlap(session, wire, doing)
    if created.error.err_code == STREAM_NAME_IN_USE:  # created by someone else meanwhile
        existing = await stream_reply(session, wire.name, doing)
        if existing is not None:
            return existing, False
    raise api_error(created.error, doing)


async def consumer_reply(
    session: JetStreamSession, stream: str, durable: str, doing: str
) -> ConsumerInfoReply | None:
    """The consumer's info, or None when the stream has no such consumer."""
    subject = f"CONSUMER.INFO.{stream}.{durable}"
    reply = await session.api(subject, b"", ConsumerInfoReply, doing)
    if reply.error is not None:
        if reply.error.err_code == CONSUMER_NOT_FOUND:
            return None
        if reply.error.err_code == STREAM_NOT_FOUND:
            raise stream_missing(stream)
        raise api_error(reply.error, doing)
    return reply


async def ensure_consumer(
    session: JetStreamSession, stream: str, wire: ConsumerConfigWire, doing: str
) -> tuple[ConsumerInfoReply, bool]:
    """Create the durable consumer, or find the existing one (action "create" never updates)."""
    durable = wire.durable_name
    existing = await consumer_reply(session, stream, durable, doing)
    if existing is not None:
        return existing, False
    body = encode(ConsumerCreateRequest(stream_name=stream, config=wire, action="create"))
    subject = f"CONSUMER.CREATE.{stream}.{durable}"
    created = await session.api(subject, body, ConsumerInfoReply, doing)
    if created.error is None:
        return created, True
    if created.error.err_code == CONSUMER_EXISTS:
        existing = await consumer_reply(session, stream, durable, doing)
        if existing is not None:
            return existing, False
    raise api_error(created.error, doing)


async def update_consumer(
    session: JetStreamSession, stream: str, wire: ConsumerConfigWire, doing: str
) -> ConsumerInfoReply:
    """Change an existing durable consumer in place (only fields JetStream lets change)."""
    body = encode(ConsumerCreateRequest(stream_name=stream, config=wire, action="update"))
    subject = f"CONSUMER.CREATE.{stream}.{wire.durable_name}"
    updated = await session.api(subject, body, ConsumerInfoReply, doing)
    if updated.error is not None:
        raise api_error(updated.error, doing)
    return updated


async def update_stream(
    session: JetStreamSession, wire: StreamConfigWire, doing: str
) -> StreamInfoReply:
    """Change an existing stream in place (provisioning uses it for its age limit only)."""
    reply = await session.api(f"STREAM.UPDATE.{wire.name}", encode(wire), StreamInfoReply, doing)
    if reply.error is not None:
        if reply.error.err_code == STREAM_NOT_FOUND:
            raise stream_missing(wire.name)
        raise api_error(reply.error, doing)
    return reply
