"""The Backbone contract inside Pyodide, on the JavaScript host's NATS client.

``JsBackbone`` wraps the ``NatsBridge`` object of ``host/nats_bridge.mjs`` (the
official ``@nats-io`` npm packages): fetch, ack/nak/term/in-progress, publish,
consumer info and KV buckets. The JavaScript side only moves bytes; what to do
with a delivery is decided here by the unchanged ``StreamWorker`` and
``decide_stream``, and idempotency is the unchanged ``KvIdempotencyStore`` on a
``JsKeyValue``: the same records, keys and compare-and-set revisions as the
Python host's JetStream KV, so a Python host and an edge host share one bucket.

Every bridge call answers ``{error: "", ...}`` or ``{error: CODE, message}``;
``_check`` turns a code into the Thaw error the JetStream backbone raises for the
same condition. Streams, consumers and the dead-letter stream are not created
from the edge: provision the app first (``thaw provision APP --nats URL``);
``add_kv`` works (schedules keep their lease in one).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import msgspec

from thaw import App, DeadlineExceeded
from thaw.backbone._contract import kv_keys_wanted, kv_prefix
from thaw.lowlevel import (
    BackboneError,
    BucketNotFound,
    ConsumerConfig,
    ConsumerInfo,
    ConsumerNotFound,
    DeliveredMessage,
    KeyExists,
    KvConfig,
    KvEntry,
    Message,
    MessageNotFound,
    NoResponders,
    NoStreamForSubject,
    ObjectStore,
    ObjectStoreConfig,
    PubAck,
    Reply,
    StoredMessage,
    StreamConfig,
    StreamInfo,
    StreamNotFound,
    WrongRevision,
    plan_for,
    validate_subject,
)

__all__ = ["JsBackbone", "JsKeyValue", "JsMessage", "check_provisioned"]

_headers = msgspec.json.Decoder(dict[str, str]).decode
_encode_json = msgspec.json.Encoder().encode
_ConsumerInfo = msgspec.json.Decoder(ConsumerInfo).decode
_keys = msgspec.json.Decoder(list[str]).decode
_NOT_PROVISIONED = "provision the app first (thaw provision APP --nats URL)"


def _to_js(data: bytes) -> Any:
    """``bytes`` as a JavaScript Uint8Array (Pyodide passes bytes only as a proxy)."""
    return importlib.import_module("pyodide.ffi").to_js(data)


def _check(reply: Any, doing: str, *, wrong_last: type[BackboneError] = WrongRevision) -> Any:
    """The reply, or the Thaw error its code names (``wrong_last``: KV create vs update)."""
    code = reply.error
    if not code:
        return reply
    message = f"{doing}: {reply.message}"
    errors: dict[str, type[BackboneError]] = {
        "stream_not_found": StreamNotFound,
        "consumer_not_found": ConsumerNotFound,
        "message_not_found": MessageNotFound,
        "wrong_last_sequence": wrong_last,
        "no_responders": NoStreamForSubject,
    }
    raise errors.get(code, BackboneError)(message)


class JsMessage(DeliveredMessage):
    """One delivery fetched by the bridge (satisfies the ``Message`` protocol)."""

    __slots__ = ("_bridge",)

    def __init__(self, bridge: Any, subject: str, reply: str, data: bytes, headers: str) -> None:
        super().__init__(subject, reply, data, _headers(headers))
        self._bridge = bridge

    def _doing(self, what: str) -> str:
        return f"{what} {self._stream}#{self._seq}"

    async def ack(self) -> None:
        _check(await self._bridge.ack(self._reply), self._doing("ack"))

    async def nak(self, delay: float | None = None) -> None:
        _check(await self._bridge.nak(self._reply, delay or 0.0), self._doing("nak"))

    async def term(self, reason: str = "") -> None:
        _check(await self._bridge.term(self._reply, reason), self._doing("term"))

    async def in_progress(self) -> None:
        _check(await self._bridge.working(self._reply), self._doing("in-progress ack"))


class JsKeyValue:
    """A KV bucket through the bridge (satisfies the ``KeyValue`` protocol)."""

    __slots__ = ("_bridge", "_bucket")

    def __init__(self, bridge: Any, bucket: str) -> None:
        self._bridge = bridge
        self._bucket = bucket

    def __repr__(self) -> str:
        return f"<JsKeyValue {self._bucket!r}>"

    @property
    def bucket(self) -> str:
        return self._bucket

    def _doing(self, what: str, key: str) -> str:
        return f"{what} key {key!r} in bucket {self._bucket!r}"

    def _check(self, reply: Any, doing: str, **kwargs: type[BackboneError]) -> Any:
        if reply.error == "stream_not_found":
            raise BucketNotFound(f"{doing}: bucket {self._bucket!r} does not exist")
        return _check(reply, doing, **kwargs)

    async def get(self, key: str) -> KvEntry | None:
        reply = self._check(await self._bridge.kvGet(self._bucket, key), self._doing("get", key))
        if not reply.found or reply.operation != "PUT":
            return None  # absent, or a tombstone (deleted, purged, expired marker)
        return KvEntry(
            bucket=self._bucket, key=key, value=reply.value.to_bytes(), revision=reply.revision
        )

    async def put(self, key: str, value: bytes) -> int:
        reply = await self._bridge.kvPut(self._bucket, key, _to_js(value))
        return int(self._check(reply, self._doing("put", key)).revision)

    async def create(self, key: str, value: bytes) -> int:
        reply = await self._bridge.kvCreate(self._bucket, key, _to_js(value))
        doing = self._doing("create", key)
        return int(self._check(reply, doing, wrong_last=KeyExists).revision)

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        reply = await self._bridge.kvUpdate(self._bucket, key, _to_js(value), last)
        return int(self._check(reply, self._doing(f"update (at revision {last})", key)).revision)

    async def delete(self, key: str, *, last: int | None = None) -> None:
        reply = await self._bridge.kvDelete(self._bucket, key, last or 0)
        self._check(reply, self._doing("delete", key))

    async def keys(self, prefix: str | None = None) -> list[str]:
        start = "" if prefix is None else kv_prefix(prefix) + "."
        reply = self._check(await self._bridge.kvKeys(self._bucket), f"list {self._bucket!r}")
        return [key for key in _keys(reply.keys) if key.startswith(start)]

    async def get_many(self, keys: Iterable[str]) -> dict[str, KvEntry]:
        found = {}
        for key in kv_keys_wanted(keys):  # one bridge call per key (the JS side has no batch)
            entry = await self.get(key)
            if entry is not None:
                found[key] = entry
        return found


class JsBackbone:
    """The Backbone contract on the JavaScript host's NATS connection (see the module doc)."""

    def __init__(self, bridge: Any) -> None:
        self._bridge = bridge

    def _unsupported(self, what: str) -> BackboneError:
        return BackboneError(f"{what} is not available at the edge: {_NOT_PROVISIONED}")

    async def add_stream(self, config: StreamConfig) -> StreamInfo:
        raise self._unsupported(f"creating stream {config.name!r}")

    async def stream_info(self, name: str) -> StreamInfo:
        raise self._unsupported(f"stream info for {name!r}")

    async def delete_stream(self, name: str) -> None:
        raise self._unsupported(f"deleting stream {name!r}")

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
    ) -> PubAck:
        fields = _encode_json(dict(headers or {})).decode()
        reply = await self._bridge.publish(subject, _to_js(data), fields, msg_id or "")
        reply = _check(reply, f"publish to {subject!r}")
        return PubAck(reply.stream, int(reply.seq), bool(reply.duplicate))

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float,
    ) -> Reply:
        """Core NATS request/reply through the bridge (``ctx.request``)."""
        validate_subject(subject, wildcards=False)
        fields = _encode_json(dict(headers or {})).decode()
        reply = await self._bridge.request(subject, _to_js(data), fields, timeout * 1000)
        if reply.error == "timeout":
            raise DeadlineExceeded(f"no reply on {subject!r} within {timeout:g}s")
        if reply.error == "no_responders":
            raise NoResponders(f"nobody answers requests on {subject!r}")
        reply = _check(reply, f"request on {subject!r}")
        return Reply(reply.data.to_bytes(), _headers(reply.headers))

    async def get_message(self, stream: str, seq: int) -> StoredMessage:
        raise self._unsupported(f"reading {stream}#{seq}")

    async def delete_message(self, stream: str, seq: int) -> None:
        raise self._unsupported(f"deleting {stream}#{seq}")

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> ConsumerInfo:
        raise self._unsupported(f"creating consumer {config.durable!r} on {stream!r}")

    async def consumer_info(self, stream: str, durable: str) -> ConsumerInfo:
        reply = await self._bridge.consumerInfo(stream, durable)
        reply = _check(reply, f"consumer {durable!r} on stream {stream!r}")
        return _ConsumerInfo(reply.info)

    async def fetch(
        self, stream: str, durable: str, *, batch: int = 1, timeout: float = 0.0
    ) -> list[Message]:
        # Shielded: a fetch cancelled half-way would drop messages the server has already
        # delivered (they would wait out AckWait); it ends within timeout + a margin.
        with anyio.CancelScope(shield=True):
            reply = await self._bridge.fetch(stream, durable, batch, timeout)
        reply = _check(reply, f"fetch from consumer {durable!r} on stream {stream!r}")
        bridge = self._bridge
        return [
            JsMessage(bridge, item.subject, item.reply, item.data.to_bytes(), item.headers)
            for item in reply.messages
        ]

    async def add_kv(self, config: KvConfig) -> JsKeyValue:
        reply = await self._bridge.kvCreateBucket(config.bucket, config.ttl, config.max_value_size)
        _check(reply, f"create bucket {config.bucket!r}")
        return JsKeyValue(self._bridge, config.bucket)

    async def kv(self, bucket: str) -> JsKeyValue:
        reply = await self._bridge.kvOpen(bucket)
        if reply.error == "stream_not_found":
            raise BucketNotFound(f"bucket {bucket!r} does not exist: {_NOT_PROVISIONED}")
        _check(reply, f"open bucket {bucket!r}")
        return JsKeyValue(self._bridge, bucket)

    async def add_object_store(self, config: ObjectStoreConfig) -> ObjectStore:
        raise BackboneError("object stores are not available at the edge yet")

    async def object_store(self, bucket: str) -> ObjectStore:
        raise BackboneError("object stores are not available at the edge yet")

    async def aclose(self) -> None:
        """The JavaScript host owns (and drains) the connection."""


async def check_provisioned(app: App, backbone: JsBackbone) -> None:
    """Fail at start, naming the step, when the app's consumers or buckets are missing."""
    plan = plan_for(app)
    for consumer in plan.consumers:
        try:
            await backbone.consumer_info(consumer.stream, consumer.config.durable)
        except (StreamNotFound, ConsumerNotFound) as exc:
            raise type(exc)(f"{exc}: {_NOT_PROVISIONED}") from None
    for bucket in plan.buckets:
        await backbone.kv(bucket.bucket)
