"""MemoryBackbone: the in-process backbone with JetStream's semantics, on an injected clock.

Used by the core's tests, by embedded hosts and under WebAssembly, where no
nats-server exists. It passes the same conformance suite as the JetStream
backbone (``tests/backbone_contract.py``). The state machines live in
``_streams`` (streams, consumers, messages), ``_kv`` (buckets) and
``_objects`` (object stores), beside it. A bucket or object store owns a stream
named as on JetStream (``KV_<bucket>``, ``OBJ_<bucket>``) that records its
changes, so durable consumers (``kv`` and ``objects`` triggers) work on it;
deleting that stream deletes the bucket, as on JetStream.

Invariants: every public method is async, starts with a checkpoint and then
changes state without awaiting, so each operation is atomic among tasks of one
event loop; the only place that waits is ``fetch``, which parks on the stream's
signal and on the clock (never on wall time when the clock is a FakeClock) and
re-examines the consumer each time it wakes. Expiry (``max_age``, KV ``ttl``,
the duplicate window) is applied lazily, whenever the state is looked at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio
import msgspec

from thaw._clock import Clock, SystemClock
from thaw._errors import (
    BackboneError,
    BucketNotFound,
    ConfigError,
    ConsumerNotFound,
    DefinitionConflict,
    MessageNotFound,
    NoStreamForSubject,
    StreamNotFound,
)
from thaw._headers import MSG_ID_HEADER
from thaw.backbone._contract import (
    ConsumerConfig,
    ConsumerInfo,
    KvConfig,
    ObjectStoreConfig,
    PubAck,
    StoredMessage,
    StreamConfig,
    StreamInfo,
)
from thaw.backbone._rules import (
    DEFAULT_MAX_PAYLOAD,
    check_message_size,
    consumer_update_allowed,
    definition_conflict,
    header_block_size,
    validate_consumer_config,
    validate_fetch,
    validate_kv_config,
    validate_stream_config,
)
from thaw.backbone._subjects import validate_name, validate_subject
from thaw.backbone.memory._kv import BucketState, MemoryKeyValue, kv_stream_config
from thaw.backbone.memory._objects import MemoryObjectStore, ObjectBucketState, object_stream_config
from thaw.backbone.memory._requests import MemoryResponders, Responding
from thaw.backbone.memory._streams import (
    ConsumerState,
    MemoryMessage,
    StreamState,
    streams_overlapping,
)
from thaw.decisions._reply import Reply, Responder

if TYPE_CHECKING:
    from thaw.backbone._contract import Backbone, KeyValue, Message, ObjectStore

__all__ = ["MemoryBackbone", "MemoryBackboneStatistics"]


class MemoryBackboneStatistics(msgspec.Struct, frozen=True, kw_only=True):
    streams: int
    consumers: int
    buckets: int
    waiting_fetches: int  # fetch calls parked, waiting for a message or their timeout
    object_stores: int = 0


class MemoryBackbone:
    """An in-process JetStream: streams, durable pull consumers and KV buckets."""

    def __init__(
        self, *, clock: Clock | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        """``max_payload``: the most bytes (payload plus header block) one message may
        have, as a nats-server's ``max_payload`` (1 MiB by default, -1 unlimited)."""
        if max_payload != -1 and max_payload < 1:
            raise ConfigError(f"max_payload must be -1 (unlimited) or >= 1, not {max_payload}")
        self._max_payload = max_payload
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._streams: dict[str, StreamState] = {}
        self._buckets: dict[str, BucketState] = {}
        self._object_stores: dict[str, ObjectBucketState] = {}
        self._responders = MemoryResponders()
        self._waiting = 0
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<MemoryBackbone {state} streams={len(self._streams)} buckets={len(self._buckets)}>"

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def max_payload(self) -> int:
        """Larger messages (payload plus header block) raise ``PayloadTooLarge``."""
        return self._max_payload

    def _fits(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None, msg_id: str | None
    ) -> None:
        """The size rule of a nats-server, on what JetStream would be sent."""
        if msg_id is not None:
            headers = {**(headers or {}), MSG_ID_HEADER: msg_id}
        check_message_size(subject, len(data), header_block_size(headers), self._max_payload)

    def statistics(self) -> MemoryBackboneStatistics:
        return MemoryBackboneStatistics(
            streams=sum(1 for stream in self._streams.values() if not stream.system),
            consumers=sum(len(stream.consumers) for stream in self._streams.values()),
            buckets=len(self._buckets),
            waiting_fetches=self._waiting,
            object_stores=len(self._object_stores),
        )

    # -- lookups ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackboneError("the MemoryBackbone is closed; create a new one")

    async def _enter(self) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_open()

    def _stream(self, name: str) -> StreamState:
        self._check_open()
        stream = self._streams.get(name)
        if stream is None:
            raise StreamNotFound(f"stream {name!r} does not exist; add it with add_stream")
        return stream

    def _consumer(self, stream: str, durable: str) -> ConsumerState:
        consumer = self._stream(stream).consumers.get(durable)
        if consumer is None:
            raise ConsumerNotFound(
                f"consumer {durable!r} does not exist on stream {stream!r}; "
                "add it with add_consumer"
            )
        return consumer

    # -- streams ----------------------------------------------------------------

    async def add_stream(self, config: StreamConfig) -> StreamInfo:
        await self._enter()
        validate_stream_config(config)
        existing = self._streams.get(config.name)
        if existing is not None:
            if existing.config != config:
                raise definition_conflict(
                    f"stream {config.name!r}",
                    existing.config,
                    config,
                    "delete it or use another name",
                )
        else:
            overlap = streams_overlapping(self._streams, config)
            if overlap is not None:
                raise DefinitionConflict(overlap)
            existing = self._streams[config.name] = StreamState(config)
        return existing.info(self._clock.now())

    async def update_stream(self, config: StreamConfig) -> StreamInfo:
        """Change an existing stream's age limit (and duplicate window) in place."""
        await self._enter()
        validate_stream_config(config)
        existing = self._stream(config.name)
        same = msgspec.structs.replace(
            existing.config, max_age=config.max_age, duplicate_window=config.duplicate_window
        )
        if same != config:
            raise definition_conflict(
                f"stream {config.name!r}", existing.config, config, "only its age may change"
            )
        existing.config = config  # expiry is lazy: the next look applies the new age
        return existing.info(self._clock.now())

    async def stream_info(self, name: str) -> StreamInfo:
        await self._enter()
        return self._stream(name).info(self._clock.now())

    async def delete_stream(self, name: str) -> None:
        await self._enter()
        stream = self._stream(name)
        del self._streams[name]
        for states in (self._buckets, self._object_stores):
            owner = next((key for key, state in states.items() if state.stream is stream), None)
            if owner is not None:
                del states[owner]  # a bucket is its stream
        stream.signal.fire()  # waiting fetches wake and find their stream gone

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
    ) -> PubAck:
        await self._enter()
        validate_subject(subject, wildcards=False)
        self._fits(subject, data, headers, msg_id)
        if subject.startswith("$KV."):  # a bucket's subject: a KV write, as on JetStream
            for bucket in self._buckets.values():
                if bucket.stream.captures(subject):
                    return bucket.publish(subject, data, headers, msg_id, self._clock.now())
        for stream in self._streams.values():
            if stream.captures(subject):
                return stream.store(subject, data, headers, msg_id, self._clock.now())
        raise NoStreamForSubject(
            f"no stream captures subject {subject!r}; add a stream whose subjects match it"
        )

    async def get_message(self, stream: str, seq: int) -> StoredMessage:
        await self._enter()
        state = self._stream(stream)
        state.expire(self._clock.now())
        message = state.get(seq)
        if message is None:
            raise MessageNotFound(
                f"stream {stream!r} has no message with sequence {seq} (it holds "
                f"{state.first_seq}..{state.last_seq}; older ones expired or never existed)"
            )
        return message

    async def delete_message(self, stream: str, seq: int) -> None:
        await self._enter()
        state = self._stream(stream)
        state.expire(self._clock.now())
        if not state.delete(seq):
            raise MessageNotFound(f"stream {stream!r} has no message with sequence {seq}")

    # -- consumers --------------------------------------------------------------

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> ConsumerInfo:
        await self._enter()
        state = self._stream(stream)
        validate_consumer_config(state.config, config)
        existing = state.consumers.get(config.durable)
        if existing is None:
            existing = state.consumers[config.durable] = ConsumerState(state, config)
        elif consumer_update_allowed(existing.config, config):
            existing.config = config  # AckWait, attempts, MaxAckPending: changed in place
        elif existing.config != config:
            raise definition_conflict(
                f"consumer {config.durable!r} on stream {stream!r}",
                existing.config,
                config,
                "delete the stream's consumer or use another durable name",
            )
        return existing.info(self._clock.now())

    async def consumer_info(self, stream: str, durable: str) -> ConsumerInfo:
        await self._enter()
        return self._consumer(stream, durable).info(self._clock.now())

    async def fetch(
        self,
        stream: str,
        durable: str,
        *,
        batch: int = 1,
        timeout: float = 0.0,
    ) -> list[Message]:
        validate_fetch(batch, timeout)
        await self._enter()
        consumer = self._consumer(stream, durable)
        deadline = self._clock.now() + timeout
        while True:
            now = self._clock.now()
            taken = consumer.take(batch, now)
            if taken:
                return [
                    MemoryMessage(consumer, message, delivered, self._clock)
                    for message, delivered in taken
                ]
            if now >= deadline:
                return []
            next_due = consumer.next_due(now)
            wake_at = deadline if next_due is None else min(deadline, next_due)
            self._waiting += 1
            try:
                await self._wait(consumer.stream.signal.current(), wake_at)
            finally:
                self._waiting -= 1
            # The stream may have been deleted (or the consumer replaced) meanwhile.
            consumer = self._consumer(stream, durable)

    async def _wait(self, changed: anyio.Event, until: float) -> None:
        """Return when ``changed`` is set or the clock reaches ``until``, whichever is first."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._sleep_then_cancel, until, group.cancel_scope)
            await changed.wait()
            group.cancel_scope.cancel()

    async def _sleep_then_cancel(self, until: float, scope: anyio.CancelScope) -> None:
        await self._clock.sleep_until(until)
        scope.cancel()

    # -- key/value --------------------------------------------------------------

    async def add_kv(self, config: KvConfig) -> KeyValue:
        await self._enter()
        validate_kv_config(config)
        existing = self._buckets.get(config.bucket)
        if existing is None:
            stream = self._system_stream(kv_stream_config(config))
            existing = self._buckets[config.bucket] = BucketState(config, stream)
        elif existing.config != config:
            raise definition_conflict(
                f"bucket {config.bucket!r}", existing.config, config, "use another bucket name"
            )
        return MemoryKeyValue(
            existing, self._clock, self._check_open, max_payload=self._max_payload
        )

    async def kv(self, bucket: str) -> KeyValue:
        await self._enter()
        state = self._buckets.get(bucket)
        if state is None:
            raise BucketNotFound(f"bucket {bucket!r} does not exist; add it with add_kv")
        return MemoryKeyValue(state, self._clock, self._check_open, max_payload=self._max_payload)

    def _system_stream(self, config: StreamConfig) -> StreamState:
        """Create the stream that records a bucket's changes (one message kept per subject)."""
        if config.name in self._streams:
            raise DefinitionConflict(
                f"stream {config.name!r} already exists and is not a bucket's stream; "
                "delete it or use another bucket name"
            )
        overlap = streams_overlapping(self._streams, config, system=True)
        if overlap is not None:
            raise DefinitionConflict(overlap)
        stream = StreamState(config, last_per_subject=True, system=True)
        self._streams[config.name] = stream
        return stream

    # -- object stores ------------------------------------------------------------

    async def add_object_store(self, config: ObjectStoreConfig) -> ObjectStore:
        await self._enter()
        validate_name("object store bucket", config.bucket)
        existing = self._object_stores.get(config.bucket)
        if existing is None:
            stream = self._system_stream(object_stream_config(config))
            existing = self._object_stores[config.bucket] = ObjectBucketState(config, stream)
        elif existing.config != config:
            raise definition_conflict(
                f"object store {config.bucket!r}",
                existing.config,
                config,
                "use another bucket name",
            )
        return MemoryObjectStore(existing, self._clock, self._check_open)

    async def object_store(self, bucket: str) -> ObjectStore:
        await self._enter()
        validate_name("object store bucket", bucket)
        state = self._object_stores.get(bucket)
        if state is None:
            raise BucketNotFound(
                f"object store {bucket!r} does not exist; add it with add_object_store"
            )
        return MemoryObjectStore(state, self._clock, self._check_open)

    # -- request/reply (in process) ---------------------------------------------

    def respond(self, subject: str, handler: Responder) -> Responding:
        """Answer requests on ``subject`` (wildcards allowed) with ``handler``.

        Returns a handle; ``close()`` it (or use it in ``with``) to stop answering.
        Each request goes to exactly one matching responder (round robin).
        """
        self._check_open()
        return self._responders.respond(subject, handler)

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float,
    ) -> Reply:
        """Send a request to an in-process responder (see ``respond``)."""
        await self._enter()
        self._fits(subject, data, headers, None)
        return await self._responders.request(subject, data, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        """Close: later calls raise ``BackboneError``, and so do fetches waiting now."""
        await anyio.lowlevel.checkpoint()
        self._closed = True
        for stream in self._streams.values():
            stream.signal.fire()


if TYPE_CHECKING:

    def _conforms(
        backbone: MemoryBackbone,
        message: MemoryMessage,
        bucket: MemoryKeyValue,
        objects: MemoryObjectStore,
    ) -> tuple[Backbone, Message, KeyValue, ObjectStore]:
        return backbone, message, bucket, objects  # mypy checks the protocols here
