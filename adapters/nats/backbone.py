"""JetStreamBackbone: the backbone contract on a real NATS JetStream server or cluster.

It passes the same conformance suite as MemoryBackbone (``tests/backbone_contract.py``).
Provisioning is "create, or confirm an identical definition": an existing stream,
consumer or bucket is compared field by field with the requested one and a
difference raises ``DefinitionConflict`` naming the fields; nothing is ever
updated silently. Definitions are checked with the runtime's own rules before a
request leaves, so bad ones fail with the same ``ConfigError`` as in memory.

The backbone composes the package's parts around one ``JetStreamSession``
(``session``: the connection, its options, the request muxer, the puller and the
open/closed state): management requests (``_management``), KV buckets (``_kv``)
and object stores (``_objects``) take the session, never the backbone, and no
module imports this one back.

Invariants: one nats-py connection per backbone, which reconnects forever once it
has connected (consumers resume by themselves after a server restart); every
JetStream API call is bounded by ``request_timeout``; every nats-py failure is
translated in ``_errors``. nats-py runs on asyncio, so this backbone needs anyio's
asyncio backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from thaw import ConfigError, DeadlineExceeded
from thaw.adapters.nats._errors import (
    MESSAGE_DELETE_FAILED,
    NO_MESSAGE_FOUND,
    SEQUENCE_NOT_FOUND,
    STREAM_NOT_FOUND,
    api_error,
    consumer_missing,
    stream_missing,
    translate,
)
from thaw.adapters.nats._kv import JetStreamKeyValue
from thaw.adapters.nats._management import (
    consumer_reply,
    ensure_consumer,
    ensure_stream,
    stream_reply,
    streams_capturing,
    update_consumer,
    update_stream,
)
from thaw.adapters.nats._objects import JetStreamObjectStore, add_object_store, open_object_store
from thaw.adapters.nats._pull import CLOSED, LOST, JetStreamMessage, Puller
from thaw.adapters.nats._request_mux import MAX_SUBJECT, RequestMux, subject_too_long
from thaw.adapters.nats._wire import (
    ConsumerInfoReply,
    MsgGetReply,
    PubAckReply,
    StreamInfoReply,
    SuccessReply,
    consumer_config_of,
    consumer_wire,
    decode,
    effective_consumer_config,
    effective_stream_config,
    encode,
    kv_config_of,
    kv_stream_name,
    kv_stream_wire,
    parse_headers,
    stream_config_of,
    stream_wire,
)
from thaw.adapters.nats.connection import JetStreamOptions, connect_client, redact
from thaw.adapters.nats.session import JetStreamSession
from thaw.backbone._rules import check_message_size, header_block_size
from thaw.lowlevel import (
    MSG_ID_HEADER,
    BackboneError,
    BucketNotFound,
    ConsumerConfig,
    ConsumerInfo,
    KvConfig,
    MessageNotFound,
    NoResponders,
    NoStreamForSubject,
    ObjectStoreConfig,
    PubAck,
    Reply,
    StoredMessage,
    StreamConfig,
    StreamInfo,
    consumer_update_allowed,
    definition_conflict,
    validate_consumer_config,
    validate_fetch,
    validate_kv_config,
    validate_name,
    validate_stream_config,
    validate_subject,
)

if TYPE_CHECKING:
    from thaw.lowlevel import Backbone, KeyValue, Message, ObjectStore, Requester

__all__ = ["JetStreamBackbone", "open_jetstream_backbone"]

_T = TypeVar("_T", bound=msgspec.Struct)
_MIN_DUPLICATE_WINDOW = 0.1  # JetStream refuses shorter windows
_RETRY_FIRST = 0.05  # seconds before re-sending a publish no stream answered
_RETRY_MAX = 0.5
_TRANSIENT = frozenset({"Leadership Change", "Server Shutdown"})  # 409 statuses to retry
_MESSAGE_MISSING = (NO_MESSAGE_FOUND, MESSAGE_DELETE_FAILED, SEQUENCE_NOT_FOUND)


def _redeliveries_by_seq(message: Message) -> tuple[bool, int]:
    first = message.num_delivered == 1
    return first, 0 if first else message.seq


class JetStreamBackbone:
    """Streams, durable pull consumers and KV buckets on NATS JetStream."""

    def __init__(
        self,
        client: Client,
        *,
        options: JetStreamOptions | None = None,
        owns_client: bool = False,
    ) -> None:
        """Wrap a connected nats-py client; ``connect`` is the usual way in."""
        options = options if options is not None else JetStreamOptions()
        self._session = JetStreamSession(client, options=options, owns_client=owns_client)

    @classmethod
    async def connect(
        cls, servers: str | Sequence[str], *, options: JetStreamOptions | None = None
    ) -> JetStreamBackbone:
        """Connect to ``servers`` (``nats://host:port`` URLs); call ``aclose`` when done."""
        options = options if options is not None else JetStreamOptions()
        made: list[JetStreamSession] = []  # the backbone's session, once it exists

        def on_disconnect() -> None:
            for session in made:
                session.connection_lost()

        def on_closed(reason: str) -> None:
            for session in made:
                session.connection_closed(reason)

        client = await connect_client(
            servers, options, on_disconnect=on_disconnect, on_closed=on_closed
        )
        backbone = cls(client, options=options, owns_client=True)
        made.append(backbone._session)
        if client.is_closed:  # closed between the handshake and now
            backbone._session.connection_closed(str(client.last_error or "closed"))
        return backbone

    def __repr__(self) -> str:
        state = "closed" if self._session.closed else "open"
        url = self._session.client.connected_url
        where = redact(url.geturl()) if url is not None else "disconnected"
        return f"<JetStreamBackbone {state} {where}>"

    # -- for adapters needing raw NATS, and tests (all of it is the session's) ----------

    @property
    def session(self) -> JetStreamSession:
        """The connection state this backbone's parts share."""
        return self._session

    @property
    def client(self) -> Client:
        """The nats-py connection (core NATS request/reply, services, object store)."""
        return self._session.client

    @property
    def options(self) -> JetStreamOptions:
        return self._session.options

    @property
    def request_timeout(self) -> float:
        return self._session.request_timeout

    @property
    def connected(self) -> bool:
        """Open and connected to a server right now (readiness probes read this)."""
        return self._session.connected

    @property
    def alive(self) -> bool:
        """False once the connection is gone for good (liveness probes read this): a
        process whose backbone is not alive cannot recover and should be restarted."""
        return self._session.lost is None

    @property
    def max_payload(self) -> int:
        """The most bytes (payload plus header block) one message may have: the server's
        ``max_payload``. Larger ones raise ``PayloadTooLarge`` and are never sent."""
        return self._session.client.max_payload

    @property
    def puller(self) -> Puller:
        return self._session.puller

    @property
    def requests(self) -> RequestMux:
        """JetStream API calls, publishes and KV writes: requests bounded by request_timeout."""
        return self._session.requests

    @property
    def closed(self) -> bool:
        return self._session.closed

    def check_open(self, doing: str) -> None:
        self._session.check_open(doing)

    async def api(self, subject: str, body: bytes, kind: type[_T], doing: str) -> _T:
        """One JetStream API request (``$JS.API.<subject>``), its reply decoded as ``kind``."""
        return await self._session.api(subject, body, kind, doing)

    # -- streams ------------------------------------------------------------------------

    @staticmethod
    def _stream_info(reply: StreamInfoReply) -> StreamInfo:
        assert reply.config is not None
        return StreamInfo(
            config=stream_config_of(reply.config),
            messages=reply.state.messages,
            first_seq=reply.state.first_seq,
            last_seq=reply.state.last_seq,
        )

    async def add_stream(self, config: StreamConfig) -> StreamInfo:
        validate_stream_config(config)
        if 0 < config.duplicate_window < _MIN_DUPLICATE_WINDOW:
            raise ConfigError(
                f"stream {config.name!r}: JetStream needs duplicate_window >= "
                f"{_MIN_DUPLICATE_WINDOW} seconds (or 0 for the server's default)"
            )
        wire = stream_wire(config, replicas=self._session.options.replicas)
        reply, created = await ensure_stream(self._session, wire, f"add stream {config.name!r}")
        info = self._stream_info(reply)
        wanted = effective_stream_config(config)
        if not created and info.config != wanted:
            raise definition_conflict(
                f"stream {config.name!r}", info.config, wanted, "delete it or use another name"
            )
        return info

    async def update_stream(self, config: StreamConfig) -> StreamInfo:
        """Change an existing stream's age limit (and duplicate window) in place."""
        validate_stream_config(config)
        existing = await self.stream_info(config.name)
        wanted = effective_stream_config(config)
        same = msgspec.structs.replace(
            existing.config, max_age=wanted.max_age, duplicate_window=wanted.duplicate_window
        )
        if same != wanted:
            raise definition_conflict(
                f"stream {config.name!r}", existing.config, wanted, "only its age may change"
            )
        wire = stream_wire(config, replicas=self._session.options.replicas)
        reply = await update_stream(self._session, wire, f"update stream {config.name!r}")
        return self._stream_info(reply)

    async def stream_info(self, name: str) -> StreamInfo:
        validate_name("stream", name)
        doing = f"stream info {name!r}"
        reply = await stream_reply(self._session, name, doing)
        if reply is None:
            raise stream_missing(name)
        return self._stream_info(reply)

    async def delete_stream(self, name: str) -> None:
        validate_name("stream", name)
        doing = f"delete stream {name!r}"
        reply = await self._session.api(f"STREAM.DELETE.{name}", b"", SuccessReply, doing)
        if reply.error is not None:
            if reply.error.err_code == STREAM_NOT_FOUND:
                raise stream_missing(name)
            raise api_error(reply.error, doing)

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
    ) -> PubAck:
        validate_subject(subject, wildcards=False)
        doing = f"publish to {subject!r}"
        self._session.check_open(doing)
        sent = dict(headers) if headers else None
        if msg_id is not None:
            sent = sent or {}
            sent[MSG_ID_HEADER] = msg_id
        reply = await self._request_stored(subject, data, sent, doing)
        try:
            ack = decode(PubAckReply, reply.data)
        except msgspec.DecodeError:
            raise NoStreamForSubject(
                f"{doing}: a core NATS subscriber answered, not a stream; no stream captures "
                "the subject"
            ) from None
        if ack.error is not None:
            raise api_error(ack.error, doing)
        return PubAck(ack.stream, ack.seq, ack.duplicate)

    async def _request_stored(
        self, subject: str, data: bytes, headers: dict[str, str] | None, doing: str
    ) -> Msg:
        """Publish and wait for the stream's ack, riding out a stream that cannot answer yet.

        "No responders" means nothing stored the message, so sending it again is safe.
        It is final when no stream captures the subject; when one does, its leader is
        being elected or its interest has not reached this server (a cluster, just
        after the stream was created), so the publish is retried within request_timeout.
        """
        session = self._session
        deadline = anyio.current_time() + session.request_timeout
        delay = _RETRY_FIRST
        while True:
            with translate(doing):
                try:
                    return await session.requests.request(subject, data, headers)
                except nats.errors.NoRespondersError:
                    pass
            streams = await streams_capturing(session, subject, doing)
            if not streams:
                raise NoStreamForSubject(
                    f"no stream captures subject {subject!r}; add a stream whose subjects match it"
                )
            if anyio.current_time() + delay > deadline:
                raise BackboneError(
                    f"{doing}: stream {streams[0]!r} captures the subject but did not "
                    f"answer within {session.request_timeout} seconds"
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)

    async def get_message(self, stream: str, seq: int) -> StoredMessage:
        validate_name("stream", stream)
        doing = f"get message {seq} of stream {stream!r}"
        body = encode({"seq": seq})
        got = await self._session.api(f"STREAM.MSG.GET.{stream}", body, MsgGetReply, doing)
        if got.error is not None:
            if got.error.err_code == NO_MESSAGE_FOUND:
                raise MessageNotFound(
                    f"stream {stream!r} has no message with sequence {seq} (expired, deleted "
                    "or never existed)"
                )
            if got.error.err_code == STREAM_NOT_FOUND:
                raise stream_missing(stream)
            raise api_error(got.error, doing)
        assert got.message is not None
        message = got.message
        return StoredMessage(
            stream=stream,
            seq=message.seq,
            subject=message.subject,
            data=message.data,
            headers=parse_headers(message.hdrs) if message.hdrs else {},
        )

    async def delete_message(self, stream: str, seq: int) -> None:
        validate_name("stream", stream)
        doing = f"delete message {seq} of stream {stream!r}"
        body = encode({"seq": seq, "no_erase": True})
        reply = await self._session.api(f"STREAM.MSG.DELETE.{stream}", body, SuccessReply, doing)
        if reply.error is not None:
            if reply.error.err_code == STREAM_NOT_FOUND:
                raise stream_missing(stream)
            if reply.error.err_code in _MESSAGE_MISSING:
                raise MessageNotFound(f"stream {stream!r} has no message with sequence {seq}")
            raise api_error(reply.error, doing)

    # -- consumers ----------------------------------------------------------------------

    @staticmethod
    def _consumer_info(stream: str, reply: ConsumerInfoReply) -> ConsumerInfo:
        assert reply.config is not None
        return ConsumerInfo(
            stream=stream,
            config=consumer_config_of(reply.config),
            num_pending=reply.num_pending,
            num_ack_pending=reply.num_ack_pending,
            num_redelivered=reply.num_redelivered,
        )

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> ConsumerInfo:
        validate_name("stream", stream)
        doing = f"add consumer {config.durable!r} on stream {stream!r}"
        found = await stream_reply(self._session, stream, doing)
        if found is None:
            raise stream_missing(stream)
        assert found.config is not None
        validate_consumer_config(stream_config_of(found.config), config)
        wire = consumer_wire(config)
        reply, created = await ensure_consumer(self._session, stream, wire, doing)
        info = self._consumer_info(stream, reply)
        wanted = effective_consumer_config(config)
        if not created and consumer_update_allowed(info.config, wanted):
            reply = await update_consumer(self._session, stream, wire, doing)
            info = self._consumer_info(stream, reply)
        if not created and info.config != wanted:
            raise definition_conflict(
                f"consumer {config.durable!r} on stream {stream!r}",
                info.config,
                wanted,
                "delete the stream's consumer or use another durable name",
            )
        return info

    async def consumer_info(self, stream: str, durable: str) -> ConsumerInfo:
        validate_name("stream", stream)
        validate_name("consumer", durable)
        reply = await consumer_reply(self._session, stream, durable, f"consumer info {durable!r}")
        if reply is None:
            raise consumer_missing(stream, durable)
        return self._consumer_info(stream, reply)

    async def _raise_missing(self, stream: str, durable: str) -> None:
        """Raise StreamNotFound/ConsumerNotFound if that is why a pull went unanswered."""
        await self.consumer_info(stream, durable)

    async def fetch(
        self,
        stream: str,
        durable: str,
        *,
        batch: int = 1,
        timeout: float = 0.0,
    ) -> list[Message]:
        validate_fetch(batch, timeout)
        validate_name("stream", stream)
        validate_name("consumer", durable)
        session = self._session
        session.check_open(f"fetch from consumer {durable!r} on stream {stream!r}")
        received, status, description = await session.puller.fetch(
            stream, durable, batch=batch, timeout=timeout
        )
        if status == CLOSED:
            raise BackboneError("fetch: the JetStreamBackbone was closed while waiting")
        if status == LOST:  # the server forgot the request; an empty fetch, try again
            status = ""
        if not received and status not in ("", "404", "408"):
            # 409: the server ended or refused the pull; 503: nobody serves the consumer.
            if description in _TRANSIENT:
                return []  # the server is going away or moving the consumer: fetch again
            await self._raise_missing(stream, durable)
            if status == "409":
                raise BackboneError(
                    f"fetch from consumer {durable!r} on stream {stream!r}: JetStream "
                    f"refused the pull request ({description or status})"
                )
        messages: list[Message] = received  # type: ignore[assignment]
        if any(message.num_delivered > 1 for message in messages):
            # JetStream redelivers nak'ed messages in nak order; within a batch, put
            # redeliveries first in sequence order, as the contract says (stable sort).
            messages.sort(key=_redeliveries_by_seq)
        return messages

    # -- key/value ----------------------------------------------------------------------

    async def add_kv(self, config: KvConfig) -> KeyValue:
        validate_kv_config(config)
        wire = kv_stream_wire(config, replicas=self._session.options.replicas)
        reply, created = await ensure_stream(self._session, wire, f"add bucket {config.bucket!r}")
        assert reply.config is not None
        found = kv_config_of(config.bucket, reply.config)
        if not created and found != config:
            raise definition_conflict(
                f"bucket {config.bucket!r}", found, config, "use another bucket name"
            )
        return JetStreamKeyValue(self._session, config.bucket, direct=reply.config.allow_direct)

    async def kv(self, bucket: str) -> KeyValue:
        validate_name("bucket", bucket)
        doing = f"open bucket {bucket!r}"
        existing = await stream_reply(self._session, kv_stream_name(bucket), doing)
        if existing is None or existing.config is None:
            raise BucketNotFound(f"bucket {bucket!r} does not exist; add it with add_kv")
        if existing.config.max_msgs_per_subject < 1:
            raise BucketNotFound(
                f"stream {kv_stream_name(bucket)!r} exists but is not a KV bucket "
                "(it keeps no per-key history limit)"
            )
        return JetStreamKeyValue(self._session, bucket, direct=existing.config.allow_direct)

    # -- object stores (``_objects``) -----------------------------------------------------

    async def add_object_store(self, config: ObjectStoreConfig) -> ObjectStore:
        return await add_object_store(self._session, config)

    async def object_store(self, bucket: str) -> ObjectStore:
        return await open_object_store(self._session, bucket)

    # -- core request/reply -------------------------------------------------------------

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float,
    ) -> Reply:
        """A core NATS request (``ctx.request``): the first reply, or a clear error."""
        validate_subject(subject, wildcards=False)
        doing = f"request on {subject!r}"
        self._session.check_open(doing)
        client = self._session.client
        if len(subject) > MAX_SUBJECT:
            raise subject_too_long(subject)
        sent = dict(headers) if headers else None
        check_message_size(subject, len(data), header_block_size(sent), client.max_payload)
        try:
            with translate(doing):
                try:
                    reply = await client.request(subject, data, timeout=timeout, headers=sent)
                except nats.errors.NoRespondersError:
                    raise NoResponders(f"nobody answers requests on {subject!r}") from None
                except nats.errors.TimeoutError:
                    raise DeadlineExceeded(f"no reply on {subject!r} within {timeout:g}s") from None
        except TimeoutError:  # anyio/asyncio's own, when the wait itself was bounded
            raise DeadlineExceeded(f"no reply on {subject!r} within {timeout:g}s") from None
        return Reply(reply.data, dict(reply.headers or {}))

    # -- lifecycle ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Fail waiting fetches, then drain and close the connection if this backbone owns it."""
        await self._session.aclose()


@asynccontextmanager
async def open_jetstream_backbone(
    servers: str | Sequence[str], *, options: JetStreamOptions | None = None
) -> AsyncIterator[JetStreamBackbone]:
    """Connect for the duration of the block; the connection is drained and closed after."""
    backbone = await JetStreamBackbone.connect(servers, options=options)
    try:
        # A connection lost for good cancels the block, which then raises BackboneError:
        # `thaw serve` exits non-zero for its supervisor instead of answering 503 forever.
        with anyio.CancelScope() as scope:
            backbone.session.when_lost(scope.cancel)
            yield backbone
    finally:
        await backbone.aclose()
    lost = backbone.session.lost
    if lost is not None and scope.cancel_called:
        raise BackboneError(f"{lost}; stopped, so that a supervisor restarts the process")


if TYPE_CHECKING:

    def _conforms(
        backbone: JetStreamBackbone,
        message: JetStreamMessage,
        bucket: JetStreamKeyValue,
        objects: JetStreamObjectStore,
    ) -> tuple[Backbone, Message, KeyValue, ObjectStore, Requester]:
        return backbone, message, bucket, objects, backbone  # mypy checks the protocols here
