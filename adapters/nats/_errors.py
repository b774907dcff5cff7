"""Where nats-py and JetStream errors become Thaw errors (the adapter's one translation point).

JetStream API replies carry a stable numeric ``err_code``; the table below maps
the ones Thaw gives meaning to. Everything else becomes a ``BackboneError`` that
keeps the server's description (never a traceback), so the reader sees what the
server said and which operation it was answering.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors

from thaw import ConfigError, ThawError
from thaw.adapters.nats._request_mux import RequestLost
from thaw.adapters.nats._wire import ApiError
from thaw.lowlevel import (
    BackboneError,
    ConsumerNotFound,
    MessageNotFound,
    StreamNotFound,
)

__all__ = [
    "STREAM_NOT_FOUND",
    "CONSUMER_NOT_FOUND",
    "NO_MESSAGE_FOUND",
    "STREAM_NAME_IN_USE",
    "SUBJECTS_OVERLAP",
    "CONSUMER_EXISTS",
    "WRONG_LAST_SEQUENCE",
    "WRONG_LAST_SEQUENCE_CONSTANT",
    "MESSAGE_TOO_LARGE",
    "MESSAGE_DELETE_FAILED",
    "SEQUENCE_NOT_FOUND",
    "JetStreamApiError",
    "api_error",
    "stream_missing",
    "consumer_missing",
    "translate",
    "translated",
]

# JetStream err_code values (nats-server's errors.json); stable across releases.
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
NO_MESSAGE_FOUND = 10037
STREAM_NAME_IN_USE = 10058  # same name, different configuration
SUBJECTS_OVERLAP = 10065
CONSUMER_EXISTS = 10148  # action "create" found a different consumer under the name
WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_SEQUENCE_CONSTANT = 10164
MESSAGE_TOO_LARGE = 10054
MESSAGE_DELETE_FAILED = 10057  # e.g. "no message found" when deleting one
SEQUENCE_NOT_FOUND = 10043
_INVALID_STREAM_CONFIG = 10052
_INVALID_CONSUMER_CONFIG = 10012
_JETSTREAM_NOT_ENABLED = (10039, 10076)


class JetStreamApiError(BackboneError):
    """A JetStream API reply with an error Thaw has no more specific name for."""

    code = "jetstream_api_error"

    def __init__(self, message: str, *, err_code: int, status: int) -> None:
        super().__init__(message)
        self.err_code = err_code
        self.status = status


def api_error(error: ApiError, doing: str) -> ThawError:
    """The Thaw error for a JetStream API error reply to the operation ``doing``."""
    said = f"{doing}: JetStream says {error.description!r} (err_code {error.err_code})"
    if error.err_code == STREAM_NOT_FOUND:
        return StreamNotFound(f"{doing}: the stream does not exist; add it with add_stream")
    if error.err_code == CONSUMER_NOT_FOUND:
        return ConsumerNotFound(
            f"{doing}: the durable consumer does not exist; add it with add_consumer"
        )
    if error.err_code == NO_MESSAGE_FOUND:
        return MessageNotFound(f"{doing}: no stored message matches (expired, deleted or never)")
    if error.err_code in (_INVALID_STREAM_CONFIG, _INVALID_CONSUMER_CONFIG):
        return ConfigError(f"{said}; fix the definition")
    if error.err_code in _JETSTREAM_NOT_ENABLED:
        return BackboneError(f"{said}; start nats-server with JetStream enabled (-js)")
    if error.err_code == MESSAGE_TOO_LARGE:
        return BackboneError(f"{said}; the message (payload and headers) exceeds max_msg_size")
    return JetStreamApiError(said, err_code=error.err_code, status=error.code)


def stream_missing(stream: str) -> StreamNotFound:
    return StreamNotFound(f"stream {stream!r} does not exist; add it with add_stream")


def consumer_missing(stream: str, durable: str) -> ConsumerNotFound:
    return ConsumerNotFound(
        f"consumer {durable!r} does not exist on stream {stream!r}; add it with add_consumer"
    )


def translated(error: nats.errors.Error, doing: str) -> BackboneError:
    """The Thaw error for a connection-level nats-py failure ``error`` while ``doing``."""
    if isinstance(error, nats.errors.ConnectionClosedError):
        return BackboneError(f"{doing}: the NATS connection is closed")
    if isinstance(error, nats.errors.OutboundBufferLimitError):
        return BackboneError(
            f"{doing}: the NATS connection is down and its reconnect buffer is full; "
            "retry once it reconnects"
        )
    if isinstance(error, nats.errors.NoRespondersError):
        return BackboneError(
            f"{doing}: no JetStream server answered; is JetStream enabled on the server?"
        )
    if isinstance(error, nats.errors.TimeoutError):
        return BackboneError(
            f"{doing}: JetStream did not answer in time (server down or overloaded?)"
        )
    if isinstance(error, RequestLost):
        return BackboneError(
            f"{doing}: the NATS connection dropped before JetStream answered, so whether "
            "it was applied is unknown; retry once it reconnects"
        )
    return BackboneError(f"{doing}: {error}")


@contextmanager
def translate(doing: str) -> Iterator[None]:
    """Turn connection-level nats-py failures inside the block into ``BackboneError``."""
    try:
        yield
    except nats.errors.Error as error:
        raise translated(error, doing) from error
