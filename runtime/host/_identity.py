"""Which id an event gets: the identity idempotency and status look-ups key on.

A stream delivery's id is, first match wins:

1. Thaw's own ``Thaw-Event-Id`` header, only when ``Thaw-Event-Signature`` holds
   the HMAC-SHA256 of that id, the message's subject and a digest of its payload,
   under the event-id key of the backbone the host runs on. Thaw signs it where it
   re-publishes a message under its original identity (a dead-letter replay), so
   the idempotency layer recognises the replay of work that had completed. Anyone
   else who sets the header (or copies a signed one onto another payload or
   subject) is ignored: a foreign publisher can never make a message pass for
   another one and be skipped as its duplicate.
2. the publisher's ``Nats-Msg-Id`` (JetStream's own dedup identity);
3. ``<stream>.<seq>``.

The key is 32 random bytes in the KV bucket ``thaw_keys`` (key ``event-id``),
created by whichever process needs it first with create-if-absent, so every host
and ``thaw dlq replay`` on one backbone agree on it without configuration. The
host reads it at start and hands it to its stream workers in ``EVENT_KEY``, a
context variable its worker tasks inherit (the worker calls
``stream_event_id(message)`` and need not know about keys); with no key in the
context, no header is honoured. Whoever can read ``thaw_keys`` can sign: grant it
to hosts and operators only, like the idempotency buckets.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from contextvars import ContextVar

from thaw._errors import BucketNotFound, ConfigError, KeyExists
from thaw._headers import EVENT_ID_HEADER, EVENT_SIGNATURE_HEADER
from thaw.backbone._contract import Backbone, KvConfig, Message

__all__ = [
    "EVENT_KEY",
    "KEYS_BUCKET",
    "load_event_key",
    "sign_event_id",
    "signed_event_headers",
    "stream_event_id",
]

KEYS_BUCKET = "thaw_keys"
_EVENT_KEY_NAME = "event-id"
_KEY_BYTES = 32
_DOMAIN = b"thaw-event-id/1\n"

# The event-id key of the host whose task is running (empty: honour no header).
EVENT_KEY: ContextVar[bytes] = ContextVar("thaw_event_key", default=b"")


def sign_event_id(key: bytes, event_id: str, subject: str, data: bytes) -> str:
    """The ``Thaw-Event-Signature`` of ``event_id`` on a message (hex HMAC-SHA256)."""
    identity = event_id.encode("utf-8", "surrogatepass")
    where = subject.encode("utf-8", "surrogatepass")
    # Length-prefixed, so no (id, subject) pair can be spelled as another one.
    signed = b"%s%d:%s%d:%s%s" % (
        _DOMAIN,
        len(identity),
        identity,
        len(where),
        where,
        hashlib.sha256(data).digest(),
    )
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def signed_event_headers(key: bytes, event_id: str, subject: str, data: bytes) -> dict[str, str]:
    """The headers that give a message published to ``subject`` the id ``event_id``."""
    return {
        EVENT_ID_HEADER: event_id,
        EVENT_SIGNATURE_HEADER: sign_event_id(key, event_id, subject, data),
    }


def stream_event_id(message: Message) -> str:
    """The event id of one stream delivery (see the module docstring for the order)."""
    headers = message.headers
    claimed = headers.get(EVENT_ID_HEADER)
    if claimed:
        key = EVENT_KEY.get()
        signature = headers.get(EVENT_SIGNATURE_HEADER, "")
        if key and signature:
            expected = sign_event_id(key, claimed, message.subject, message.data).encode()
            # As bytes: compare_digest refuses str with non-ASCII characters (any header).
            if hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass")):
                return claimed
    return message.msg_id or f"{message.stream}.{message.seq}"


async def load_event_key(backbone: Backbone) -> bytes:
    """The backbone's event-id key, created (bucket and key) if nobody has yet."""
    try:
        bucket = await backbone.kv(KEYS_BUCKET)
    except BucketNotFound:
        bucket = await backbone.add_kv(KvConfig(bucket=KEYS_BUCKET))
    entry = await bucket.get(_EVENT_KEY_NAME)
    if entry is None:
        try:  # the first one to create it wins; everyone reads the winner's
            await bucket.create(_EVENT_KEY_NAME, secrets.token_bytes(_KEY_BYTES))
        except KeyExists:
            pass
        entry = await bucket.get(_EVENT_KEY_NAME)
    if entry is None or len(entry.value) < _KEY_BYTES:
        raise ConfigError(
            f"the event-id key in KV bucket {KEYS_BUCKET!r} is missing or too short "
            f"(want {_KEY_BYTES} bytes); delete the key so that a new one is created"
        )
    return entry.value
