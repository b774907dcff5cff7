"""JetStream object stores behind the ``ObjectStore`` protocol, through nats-py's object store.

A store is the stream ``OBJ_<bucket>``: data in 128 KiB chunks on
``$O.<bucket>.C.<nuid>``, the JSON info on ``$O.<bucket>.M.<base64url name>``
(one kept per name), the layout every NATS client uses, so ``nats object`` and
other languages read the same objects. The stream is created here (so an
existing one is confirmed, never changed); reads and writes go through nats-py's
``ObjectStore``, which checks the SHA-256 digest of what it reads.

Invariants: every nats-py failure is translated in ``_call`` (missing object ->
``ObjectNotFound``, missing stream -> ``BucketNotFound``, the rest through
``_errors.translate``); names are checked with the runtime's rules first, so a
bad name fails the same way as in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import nats.js.errors
from nats.js import api
from nats.js.object_store import ObjectStore as NatsObjectStore

from thaw.adapters.nats._errors import STREAM_NOT_FOUND, translate
from thaw.adapters.nats._management import ensure_stream, stream_reply
from thaw.adapters.nats._wire import StreamConfigWire, object_stream_wire
from thaw.adapters.nats.session import JetStreamSession
from thaw.lowlevel import (
    BackboneError,
    BucketNotFound,
    DefinitionConflict,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreConfig,
    object_data,
    object_stream_name,
    object_stream_subjects,
    validate_name,
    validate_object_name,
)

__all__ = ["JetStreamObjectStore", "add_object_store", "open_object_store"]

ObjectInfos = list[ObjectInfo]  # ``list`` is a method name below
_CHUNK_SIZE = 128 * 1024  # what every NATS client uses


def _check_layout(bucket: str, wire: StreamConfigWire) -> None:
    expected = set(object_stream_subjects(bucket))
    if set(wire.subjects) != expected or not wire.allow_rollup_hdrs:
        raise DefinitionConflict(
            f"object store {bucket!r}: stream {wire.name!r} exists but is not laid out as an "
            f"object store (subjects {wire.subjects}, allow_rollup_hdrs "
            f"{wire.allow_rollup_hdrs}); delete it or use another bucket name"
        )


async def add_object_store(
    session: JetStreamSession, config: ObjectStoreConfig
) -> JetStreamObjectStore:
    validate_name("object store bucket", config.bucket)
    wire = object_stream_wire(config, replicas=session.options.replicas)
    reply, _ = await ensure_stream(session, wire, f"add object store {config.bucket!r}")
    assert reply.config is not None
    _check_layout(config.bucket, reply.config)
    return JetStreamObjectStore(session, config.bucket)


async def open_object_store(session: JetStreamSession, bucket: str) -> JetStreamObjectStore:
    validate_name("object store bucket", bucket)
    reply = await stream_reply(session, object_stream_name(bucket), f"open object store {bucket!r}")
    if reply is None or reply.config is None:
        raise BucketNotFound(
            f"object store {bucket!r} does not exist; add it with add_object_store"
        )
    _check_layout(bucket, reply.config)
    return JetStreamObjectStore(session, bucket)


def _info(bucket: str, info: api.ObjectInfo) -> ObjectInfo:
    return ObjectInfo(
        bucket=info.bucket or bucket,
        name=info.name,
        size=info.size or 0,
        digest=info.digest or "",
        chunks=info.chunks or 0,
        modified=info.mtime or "",
        deleted=bool(info.deleted),
    )


class JetStreamObjectStore:
    """A handle on one JetStream object store (satisfies the ``ObjectStore`` protocol)."""

    __slots__ = ("_bucket", "_session", "_store")

    def __init__(self, session: JetStreamSession, bucket: str) -> None:
        self._session = session
        self._bucket = bucket
        js = session.client.jetstream(timeout=session.request_timeout)
        self._store = NatsObjectStore(name=bucket, stream=object_stream_name(bucket), js=js)

    def __repr__(self) -> str:
        return f"<JetStreamObjectStore {self._bucket!r}>"

    @property
    def bucket(self) -> str:
        return self._bucket

    @asynccontextmanager
    async def _call(self, doing: str, name: str = "") -> AsyncIterator[None]:
        """Translate nats-py's object-store failures for ``doing`` (the one place)."""
        self._session.check_open(doing)
        try:
            with translate(doing):
                try:
                    yield
                except nats.js.errors.NotFoundError as error:
                    if error.err_code == STREAM_NOT_FOUND:
                        raise BucketNotFound(
                            f"{doing}: object store {self._bucket!r} no longer exists"
                        ) from None
                    raise ObjectNotFound(
                        f"object store {self._bucket!r} has no object named {name!r}"
                    ) from None
                except nats.js.errors.DigestMismatchError:
                    raise BackboneError(
                        f"{doing}: the data read back does not match the object's digest "
                        "(it changed while being read?); retry"
                    ) from None
                except nats.js.errors.BadObjectMetaError:
                    raise BackboneError(
                        f"{doing}: the object's stored info is unreadable"
                    ) from None
        except ValueError as error:  # nats-py's own checks (never reached with valid names)
            raise BackboneError(f"{doing}: {error}") from error

    async def put(
        self, name: str, data: bytes, *, headers: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        validate_object_name(name)
        payload = object_data(name, data)
        # Chunks carry no headers; they stay within the server's max_payload even when
        # it is below nats-py's 128 KiB default chunk (which it would refuse to send).
        chunk = max(1, min(_CHUNK_SIZE, self._session.client.max_payload))
        meta = api.ObjectMeta(
            name=name,
            options=api.ObjectMetaOptions(max_chunk_size=chunk),
            # The info's headers, as NATS lays them out (Go's nats.Header: name -> values).
            headers={k: [v] for k, v in headers.items()} if headers else None,
        )
        async with self._call(f"put object {name!r} in {self._bucket!r}", name):
            info = await self._store.put(name, payload, meta=meta)
        return _info(self._bucket, info)

    async def get(self, name: str) -> bytes:
        validate_object_name(name)
        async with self._call(f"get object {name!r} from {self._bucket!r}", name):
            result = await self._store.get(name)
        return bytes(result.data or b"")

    async def info(self, name: str) -> ObjectInfo:
        validate_object_name(name)
        async with self._call(f"object info {name!r} in {self._bucket!r}", name):
            info = await self._store.get_info(name)
        return _info(self._bucket, info)

    async def delete(self, name: str) -> None:
        validate_object_name(name)
        async with self._call(f"delete object {name!r} from {self._bucket!r}", name):
            await self._store.delete(name)

    async def list(self) -> ObjectInfos:
        doing = f"list objects of {self._bucket!r}"
        try:
            async with self._call(doing):
                infos = await self._store.list(ignore_deletes=True)
        except ObjectNotFound:  # nats-py: "not found" for an empty store
            return []
        return sorted((_info(self._bucket, info) for info in infos), key=lambda i: i.name)
