"""The backbone contract: messaging and state that capabilities run against.

Two implementations share it and one conformance suite (``tests/backbone_contract.py``):
``MemoryBackbone`` (in process; for the core, embedding and WASM) and the
JetStream backbone in ``adapters/nats``. The semantics are JetStream's:

- Streams capture subjects (NATS wildcards ``*`` and ``>``); a publish with a
  message id seen within the stream's duplicate window is acknowledged as a
  duplicate with the original sequence and not stored again.
- Durable pull consumers deliver each message until it is acked or termed:
  ``nak(delay)`` redelivers after ``delay`` (at once without one), an expired
  AckWait redelivers (after ``backoff[n]`` when a backoff list is set),
  ``in_progress`` restarts the AckWait timer, and a message delivered
  ``max_deliver`` times is not delivered again. Redeliveries come before new
  messages, in sequence order within one fetch (across fetches JetStream keeps
  the order of the naks). Acks may be counted a moment late by ``consumer_info``
  on JetStream (they are fire-and-forget there). ``fetch`` returns at most
  ``batch`` messages, waits at most ``timeout`` seconds for the first one, and an
  empty list is a normal answer.
- KV buckets keep one value per key with a bucket-wide monotonic revision;
  ``create`` succeeds only when the key has no live value, ``update`` only when
  the key's latest revision equals ``last`` (compare-and-set); values older than
  the bucket's ``ttl`` vanish. Every change is also a message on the bucket's
  stream ``KV_<bucket>`` (subject ``$KV.<bucket>.<key>``, header
  ``KV-Operation: DEL`` on deletes, stream sequence = revision, one message kept
  per key), so a durable consumer on that stream sees key changes (``kv`` triggers).
  ``keys(prefix)`` lists the live keys under a token prefix (``"done.b1"`` lists
  ``done.b1.<more tokens>``, as the filter ``$KV.<bucket>.done.b1.>`` does) and
  ``get_many`` reads many keys at once (missing, deleted and expired ones absent).
- Object stores keep named blobs of any size; every put and delete writes the
  object's JSON info to ``$O.<bucket>.M.<base64url name>`` on the stream
  ``OBJ_<bucket>`` (the layout every NATS client uses), so a durable consumer on
  it sees uploads (``objects`` triggers).

Times are seconds (floats). Definitions are frozen Structs so "create or confirm"
provisioning can compare them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Literal, Protocol, runtime_checkable

import msgspec

from thaw._errors import ConfigError
from thaw._headers import MSG_ID_HEADER
from thaw.backbone._subjects import ack_fields, validate_kv_key

__all__ = [
    "StreamConfig",
    "StreamInfo",
    "ConsumerConfig",
    "ConsumerInfo",
    "PubAck",
    "DeliveredMessage",
    "StoredMessage",
    "Message",
    "KvConfig",
    "KvEntry",
    "KeyValue",
    "MAX_GET_MANY",
    "MAX_KV_PREFIX",
    "kv_prefix",
    "kv_keys_wanted",
    "ObjectStoreConfig",
    "ObjectInfo",
    "ObjectStore",
    "Backbone",
    "UpdatesStreamAges",
]


class StreamConfig(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: tuple[str, ...]
    duplicate_window: float = 120.0
    max_age: float = 0.0  # 0: keep forever
    max_msg_size: int = -1  # -1: unlimited


class StreamInfo(msgspec.Struct, frozen=True, kw_only=True):
    config: StreamConfig
    messages: int
    first_seq: int
    last_seq: int


class ConsumerConfig(msgspec.Struct, frozen=True, kw_only=True):
    durable: str
    filter_subject: str = ""  # "" = every subject of the stream
    ack_wait: float = 30.0
    max_deliver: int = -1  # -1: unlimited
    backoff: tuple[float, ...] = ()
    max_ack_pending: int = 1000
    deliver: str = "all"  # "all": from the stream's first message; "new": only later ones


class ConsumerInfo(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    config: ConsumerConfig
    num_pending: int  # stored messages not yet delivered to this consumer
    num_ack_pending: int  # delivered, waiting for ack/nak/term
    num_redelivered: int  # of the ack-pending ones, how many were delivered more than once


class PubAck(msgspec.Struct, frozen=True, gc=False):
    stream: str
    seq: int
    duplicate: bool = False


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] = {}


class Message(Protocol):
    """One delivery from a durable consumer.

    The backbones' messages also have ``age() -> float | None``: seconds since the
    stream stored the message (its publish), now; None when unknown. JetStream
    (``DeliveredMessage``): the server's timestamp on the ack subject against this
    host's wall clock, so clock skew between server and host shows in it;
    MemoryBackbone: its own clock. Not a member of this protocol, so that other
    Message classes (a dead letter's replay, test doubles) need not have it: the
    stream worker asks for it with ``getattr`` when it records message age and
    completion (``thaw_message_age_seconds``, ``thaw_message_completion_seconds``).
    """

    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def stream(self) -> str: ...
    @property
    def seq(self) -> int:
        """The message's stream sequence (stable across redeliveries)."""
        ...

    @property
    def num_delivered(self) -> int:
        """How many times this message has been delivered, this one included (1-based)."""
        ...

    @property
    def pending(self) -> int:
        """Messages the consumer still holds for a first delivery after this one (its lag).

        JetStream stamps it on the delivery; MemoryBackbone counts it when asked.
        """
        ...

    @property
    def msg_id(self) -> str | None:
        """The publisher's message id (``Nats-Msg-Id``), if any."""
        ...

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self, reason: str = "") -> None: ...
    async def in_progress(self) -> None: ...


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class DeliveredMessage:
    """What a JetStream delivery knows of itself, for the adapters' ``Message`` classes.

    Stream, sequence, delivery count and pending count come from the ``$JS.ACK``
    reply subject; the headers are kept read-only. Subclasses (the NATS adapter's,
    the edge host's) add how to ack, nak, term and send in-progress acks.
    """

    __slots__ = (
        "_data",
        "_headers",
        "_num_delivered",
        "_pending",
        "_reply",
        "_seq",
        "_stamp",
        "_stream",
        "_subject",
    )

    def __init__(
        self, subject: str, reply: str, data: bytes, headers: Mapping[str, str] | None
    ) -> None:
        self._subject = subject
        self._reply = reply
        self._data = data
        self._headers = MappingProxyType(headers) if headers else _NO_HEADERS
        fields = ack_fields(reply)  # one split of the subject for all five
        self._stream, self._num_delivered, self._seq, self._stamp, self._pending = fields

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._stream}#{self._seq} {self._subject!r} "
            f"delivery {self._num_delivered}>"
        )

    @property
    def subject(self) -> str:
        return self._subject

    @property
    def data(self) -> bytes:
        return self._data

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def stream(self) -> str:
        return self._stream

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def num_delivered(self) -> int:
        return self._num_delivered

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def msg_id(self) -> str | None:
        return self._headers.get(MSG_ID_HEADER)

    def age(self) -> float | None:
        """Seconds since the server stored the message (the ack subject's timestamp, ns
        since the epoch), on this host's wall clock; None if the subject has none."""
        stamp = self._stamp
        return time.time() - stamp / 1e9 if stamp > 0 else None


class KvConfig(msgspec.Struct, frozen=True, kw_only=True):
    bucket: str
    ttl: float = 0.0  # 0: values never expire
    max_value_size: int = -1


class KvEntry(msgspec.Struct, frozen=True, kw_only=True):
    bucket: str
    key: str
    value: bytes
    revision: int
    operation: Literal["PUT", "DEL", "PURGE"] = "PUT"


MAX_KV_PREFIX = 1024  # characters of a keys(prefix=...) prefix
MAX_GET_MANY = 10_000  # keys in one get_many call


def kv_prefix(prefix: str) -> str:
    """``prefix`` checked as a KV key prefix of whole tokens, without a trailing ``.``.

    A prefix follows the key rules (no wildcards, whitespace, non-ASCII, empty
    tokens); one trailing dot is allowed (``"done."`` is ``"done"``). ``ConfigError``
    says what is wrong.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(
            f"invalid KV key prefix {prefix!r}: a prefix must be a non-empty string "
            "(pass prefix=None to list every key)"
        )
    if len(prefix) > MAX_KV_PREFIX:
        raise ConfigError(
            f"invalid KV key prefix {prefix[:40]!r}...: it has {len(prefix)} characters; "
            f"the limit is {MAX_KV_PREFIX}"
        )
    stripped = prefix[:-1] if prefix.endswith(".") else prefix
    try:
        validate_kv_key(stripped)
    except ConfigError as error:
        raise ConfigError(
            f"invalid KV key prefix {prefix!r}: {error.message.split(': ', 1)[-1]} "
            "(a prefix is whole key tokens, without wildcards)"
        ) from None
    return stripped


def kv_keys_wanted(keys: Iterable[str]) -> list[str]:
    """The distinct keys of a ``get_many`` call, in first-seen order, each checked."""
    if isinstance(keys, str | bytes | bytearray | memoryview):
        raise ConfigError(
            f"get_many takes a collection of keys, not one {type(keys).__name__} ({keys!r:.40}); "
            "for one key use get()"
        )
    try:
        wanted = list(dict.fromkeys(keys))
    except TypeError:
        raise ConfigError(
            f"get_many takes a collection of key strings, got {type(keys).__name__}"
        ) from None
    if len(wanted) > MAX_GET_MANY:
        raise ConfigError(
            f"get_many got {len(wanted)} keys; the limit is {MAX_GET_MANY} per call "
            "(split the list, or list a prefix with keys(prefix=...))"
        )
    for key in wanted:
        validate_kv_key(key)
    return wanted


class KeyValue(Protocol):
    @property
    def bucket(self) -> str: ...

    async def get(self, key: str) -> KvEntry | None:
        """The live value, or None when absent, deleted or expired."""
        ...

    async def put(self, key: str, value: bytes) -> int:
        """Store unconditionally; return the new revision."""
        ...

    async def create(self, key: str, value: bytes) -> int:
        """Store only if the key has no live value; else raise ``KeyExists``."""
        ...

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        """Store only if the key's latest revision is ``last``; else raise ``WrongRevision``."""
        ...

    async def delete(self, key: str, *, last: int | None = None) -> None:
        """Delete (leave a tombstone); with ``last``, only at that revision."""
        ...

    async def keys(self, prefix: str | None = None) -> list[str]:
        """Keys with a live value, sorted; with ``prefix``, only those under it
        (``prefix.`` then one or more tokens; see ``kv_prefix``)."""
        ...

    async def get_many(self, keys: Iterable[str]) -> dict[str, KvEntry]:
        """The live values of ``keys`` (at most ``MAX_GET_MANY``); keys without one
        (absent, deleted, expired) are not in the answer."""
        ...


class ObjectStoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    bucket: str


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the store knows about one object (its data is read with ``get``)."""

    bucket: str
    name: str
    size: int
    digest: str  # "SHA-256=<base64url of the SHA-256 of the data>", as NATS clients write it
    chunks: int = 0  # messages the data is split into (JetStream: 128 KiB each)
    modified: str = ""  # ISO 8601 time of the put, as the writer recorded it
    deleted: bool = False


ObjectInfos = list[ObjectInfo]  # ``list`` is a method name of ObjectStore


class ObjectStore(Protocol):
    """Named blobs in one bucket. Names are any text up to 1024 UTF-8 bytes without
    control characters (spaces, ``/`` and non-ASCII are fine); a bad name raises
    ``ConfigError``, a missing object ``ObjectNotFound``."""

    @property
    def bucket(self) -> str: ...

    async def put(
        self, name: str, data: bytes, *, headers: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Store (or replace) the object; return its info. ``headers`` go into the
        object's info (NATS: its ``headers``), e.g. the writer's ``traceparent``."""
        ...

    async def get(self, name: str) -> bytes: ...

    async def info(self, name: str) -> ObjectInfo: ...

    async def delete(self, name: str) -> None: ...

    async def list(self) -> ObjectInfos:
        """Live objects, sorted by name."""
        ...


class Backbone(Protocol):
    async def add_stream(self, config: StreamConfig) -> StreamInfo:
        """Create the stream, or confirm an identical one; ``DefinitionConflict`` if it differs."""
        ...

    async def stream_info(self, name: str) -> StreamInfo: ...

    async def delete_stream(self, name: str) -> None: ...

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
    ) -> PubAck: ...

    async def get_message(self, stream: str, seq: int) -> StoredMessage: ...

    async def delete_message(self, stream: str, seq: int) -> None:
        """Remove one stored message; ``MessageNotFound`` if it is not there."""
        ...

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> ConsumerInfo:
        """Create the durable consumer, or confirm an identical one."""
        ...

    async def consumer_info(self, stream: str, durable: str) -> ConsumerInfo: ...

    async def fetch(
        self, stream: str, durable: str, *, batch: int = 1, timeout: float = 0.0
    ) -> list[Message]: ...

    async def add_kv(self, config: KvConfig) -> KeyValue:
        """Create the bucket, or confirm an identical one."""
        ...

    async def kv(self, bucket: str) -> KeyValue:
        """An existing bucket; ``BucketNotFound`` otherwise."""
        ...

    async def add_object_store(self, config: ObjectStoreConfig) -> ObjectStore:
        """Create the object store, or confirm an identical one."""
        ...

    async def object_store(self, bucket: str) -> ObjectStore:
        """An existing object store; ``BucketNotFound`` otherwise."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class UpdatesStreamAges(Protocol):
    """A backbone that can change an existing stream's age limit in place (optional:
    MemoryBackbone and JetStream can; provisioning checks with ``isinstance``)."""

    async def update_stream(self, config: StreamConfig) -> StreamInfo:
        """Give the existing stream ``config``'s ``max_age`` (and duplicate window);
        ``DefinitionConflict`` if anything else differs, ``StreamNotFound`` if none."""
        ...
