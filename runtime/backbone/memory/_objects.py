"""In-memory object stores (the state behind MemoryBackbone's ``ObjectStore``).

``ObjectBucketState`` is synchronous and takes ``now``; ``MemoryObjectStore`` is
the async handle that checks the backbone is open and reads the clock.

Invariants:

- The data of an object lives here, whole; every put and delete writes the
  object's JSON info (the format NATS clients write) to the meta subject
  ``$O.<bucket>.M.<base64url name>`` of the bucket's stream ``OBJ_<bucket>``,
  which keeps one message per subject. Consumers on that stream are how
  ``objects`` triggers see uploads; chunks are not mirrored to the stream.
- A deleted object keeps its info (``deleted``) but no data, as on JetStream.
"""

from __future__ import annotations

import datetime
import itertools
import math
from collections.abc import Callable, Mapping

import anyio
import msgspec

from thaw._clock import Clock
from thaw._errors import ObjectNotFound
from thaw._headers import ROLLUP_HEADER
from thaw.backbone._buckets import (
    OBJECT_CHUNK_SIZE,
    ObjectMeta,
    object_data,
    object_digest,
    object_meta_subject,
    object_stream_name,
    object_stream_subjects,
    validate_object_name,
)
from thaw.backbone._contract import ObjectInfo, ObjectStoreConfig, StreamConfig
from thaw.backbone.memory._streams import StreamState

__all__ = ["ObjectBucketState", "MemoryObjectStore", "object_stream_config"]

_ROLLUP = {ROLLUP_HEADER: "sub"}
_encode = msgspec.json.Encoder().encode
_nuids = itertools.count(1)
ObjectInfos = list[ObjectInfo]  # ``list`` is a method name in the classes below


class _MetaWithHeaders(ObjectMeta, kw_only=True, omit_defaults=True):
    """The info with its ``headers`` (NATS layout: name -> values), as nats-py writes it."""

    headers: dict[str, list[str]] | None = None


def object_stream_config(config: ObjectStoreConfig) -> StreamConfig:
    return StreamConfig(
        name=object_stream_name(config.bucket), subjects=object_stream_subjects(config.bucket)
    )


class ObjectBucketState:
    """One object store: the data and info per name, and the stream of meta messages."""

    __slots__ = ("_objects", "config", "stream")

    def __init__(self, config: ObjectStoreConfig, stream: StreamState) -> None:
        self.config = config
        self.stream = stream
        self._objects: dict[str, tuple[ObjectInfo, bytes]] = {}

    def _record(
        self, info: ObjectInfo, nuid: str, now: float, headers: Mapping[str, str] | None = None
    ) -> None:
        meta = _MetaWithHeaders(
            name=info.name,
            bucket=info.bucket,
            nuid=nuid,
            size=info.size,
            mtime=info.modified,
            chunks=info.chunks,
            digest=info.digest,
            deleted=info.deleted or None,
            options={"max_chunk_size": OBJECT_CHUNK_SIZE},
            headers={k: [v] for k, v in headers.items()} if headers else None,
        )
        subject = object_meta_subject(self.config.bucket, info.name)
        self.stream.store(subject, _encode(meta), _ROLLUP, None, now)

    def put(
        self,
        name: str,
        data: bytes,
        now: float,
        wall: str,
        headers: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        info = ObjectInfo(
            bucket=self.config.bucket,
            name=name,
            size=len(data),
            digest=object_digest(data),
            chunks=math.ceil(len(data) / OBJECT_CHUNK_SIZE),
            modified=wall,
        )
        self._record(info, f"m{next(_nuids)}", now, headers)
        self._objects[name] = (info, data)
        return info

    def _live(self, name: str) -> tuple[ObjectInfo, bytes]:
        found = self._objects.get(name)
        if found is None or found[0].deleted:
            raise ObjectNotFound(
                f"object store {self.config.bucket!r} has no object named {name!r}"
            )
        return found

    def get(self, name: str) -> bytes:
        return self._live(name)[1]

    def info(self, name: str) -> ObjectInfo:
        return self._live(name)[0]

    def delete(self, name: str, now: float) -> None:
        info = self._live(name)[0]
        gone = msgspec.structs.replace(info, size=0, digest="", chunks=0, modified="", deleted=True)
        self._record(gone, "", now)
        self._objects[name] = (gone, b"")

    def list(self) -> ObjectInfos:
        return [info for _, (info, _) in sorted(self._objects.items()) if not info.deleted]


class MemoryObjectStore:
    """A handle on one MemoryBackbone object store (satisfies the ``ObjectStore`` protocol)."""

    __slots__ = ("_check_open", "_clock", "_state")

    def __init__(
        self, state: ObjectBucketState, clock: Clock, check_open: Callable[[], None]
    ) -> None:
        self._state = state
        self._clock = clock
        self._check_open = check_open

    def __repr__(self) -> str:
        return f"<MemoryObjectStore {self._state.config.bucket!r}>"

    @property
    def bucket(self) -> str:
        return self._state.config.bucket

    async def _enter(self, name: str) -> float:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        validate_object_name(name)
        return self._clock.now()

    async def put(
        self, name: str, data: bytes, *, headers: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        now = await self._enter(name)
        payload = object_data(name, data)
        wall = datetime.datetime.now(datetime.UTC).isoformat()
        return self._state.put(name, payload, now, wall, headers)

    async def get(self, name: str) -> bytes:
        await self._enter(name)
        return self._state.get(name)

    async def info(self, name: str) -> ObjectInfo:
        await self._enter(name)
        return self._state.info(name)

    async def delete(self, name: str) -> None:
        now = await self._enter(name)
        self._state.delete(name, now)

    async def list(self) -> ObjectInfos:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        return self._state.list()
