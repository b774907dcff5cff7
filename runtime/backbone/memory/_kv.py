"""In-memory JetStream KV buckets (the state behind MemoryBackbone's ``KeyValue``).

``BucketState`` is synchronous and takes ``now`` as an argument; ``MemoryKeyValue``
is the async handle that reads the clock and checks the backbone is open.

Invariants:

- Every put or delete is also a message on the bucket's stream ``KV_<bucket>``
  (subject ``$KV.<bucket>.<key>``, ``KV-Operation: DEL`` on deletes, one kept per
  key), and the revision is that message's sequence, as on JetStream: bucket-wide,
  starting at 1, strictly increasing across all keys. Consumers on that stream
  are how ``kv`` triggers see changes.
- Each key keeps only its latest record (history 1): a value or a tombstone.
  A record older than the bucket's ``ttl`` is gone, as if never written, so
  ``update(last=...)`` then sees revision 0.
- ``create`` succeeds when the key has no live value (absent, deleted or expired);
  ``update`` and ``delete(last=...)`` succeed only at the key's latest revision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import anyio

from thaw._clock import Clock
from thaw._errors import BackboneError, KeyExists, WrongRevision
from thaw._headers import KV_OPERATION_HEADER
from thaw.backbone._buckets import kv_stream_name, kv_subject_prefix
from thaw.backbone._contract import (
    KvConfig,
    KvEntry,
    PubAck,
    StreamConfig,
    kv_keys_wanted,
    kv_prefix,
)
from thaw.backbone._rules import check_message_size, header_block_size
from thaw.backbone._subjects import validate_kv_key
from thaw.backbone.memory._streams import StreamState

__all__ = ["BucketState", "MemoryKeyValue", "kv_stream_config"]

_DELETE_HEADERS = {KV_OPERATION_HEADER: "DEL"}
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"  # sized as JetStream would send it


def kv_stream_config(config: KvConfig) -> StreamConfig:
    """The stream behind a bucket, as JetStream lays it out."""
    window = 120.0 if config.ttl <= 0 else min(120.0, config.ttl)
    return StreamConfig(
        name=kv_stream_name(config.bucket),
        subjects=(f"{kv_subject_prefix(config.bucket)}>",),
        duplicate_window=window,
        max_age=config.ttl,
    )


class _Record:
    __slots__ = ("operation", "revision", "value", "written_at")

    def __init__(
        self, value: bytes, revision: int, operation: Literal["PUT", "DEL"], written_at: float
    ) -> None:
        self.value = value
        self.revision = revision
        self.operation: Literal["PUT", "DEL"] = operation
        self.written_at = written_at


class BucketState:
    """One bucket: the latest record per key and the bucket-wide revision counter."""

    __slots__ = ("_prefix", "_records", "config", "stream")

    def __init__(self, config: KvConfig, stream: StreamState) -> None:
        self.config = config
        self.stream = stream  # where every change is recorded; its sequence is the revision
        self._prefix = kv_subject_prefix(config.bucket)
        self._records: dict[str, _Record] = {}

    @property
    def revision(self) -> int:
        """The last revision handed out."""
        return self.stream.last_seq

    def _latest(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if (
            record is not None
            and self.config.ttl > 0
            and now - record.written_at >= self.config.ttl
        ):
            del self._records[key]
            return None
        return record

    def _write(
        self,
        key: str,
        value: bytes,
        operation: Literal["PUT", "DEL"],
        now: float,
        msg_id: str | None = None,
    ) -> PubAck:
        headers = _DELETE_HEADERS if operation == "DEL" else None
        ack = self.stream.store(self._prefix + key, value, headers, msg_id, now)
        if not ack.duplicate:
            self._records[key] = _Record(value, ack.seq, operation, now)
        return ack

    def publish(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None,
        msg_id: str | None,
        now: float,
    ) -> PubAck:
        """A plain publish to ``$KV.<bucket>.<key>``: a put, or a delete with ``KV-Operation``
        (as on JetStream, where a dead letter's replay or ``nats pub`` writes the bucket)."""
        key = subject[len(self._prefix) :]
        validate_kv_key(key)
        operation = (headers or {}).get(KV_OPERATION_HEADER)
        if operation in ("DEL", "PURGE"):
            return self._write(key, b"", "DEL", now, msg_id)
        self._check_size(key, data)
        return self._write(key, data, "PUT", now, msg_id)

    def _check_size(self, key: str, value: bytes) -> None:
        limit = self.config.max_value_size
        if limit != -1 and len(value) > limit:
            raise BackboneError(
                f"value for key {key!r} is {len(value)} bytes; bucket {self.config.bucket!r} "
                f"accepts at most {limit} (max_value_size)"
            )

    def _check_revision(self, key: str, last: int, now: float) -> None:
        record = self._latest(key, now)
        actual = 0 if record is None else record.revision
        if actual != last:
            state = "has no value" if record is None else f"is at revision {actual}"
            raise WrongRevision(
                f"wrong last revision for key {key!r} in bucket {self.config.bucket!r}: "
                f"expected {last}, but the key {state}; read it again and retry"
            )

    def get(self, key: str, now: float) -> KvEntry | None:
        record = self._latest(key, now)
        if record is None or record.operation != "PUT":
            return None
        return KvEntry(
            bucket=self.config.bucket, key=key, value=record.value, revision=record.revision
        )

    def put(self, key: str, value: bytes, now: float) -> int:
        self._check_size(key, value)
        return self._write(key, value, "PUT", now).seq

    def create(self, key: str, value: bytes, now: float) -> int:
        self._check_size(key, value)
        record = self._latest(key, now)
        if record is not None and record.operation == "PUT":
            raise KeyExists(
                f"key {key!r} already exists in bucket {self.config.bucket!r} at revision "
                f"{record.revision}; use update(last=...) to change it"
            )
        return self._write(key, value, "PUT", now).seq

    def update(self, key: str, value: bytes, last: int, now: float) -> int:
        self._check_size(key, value)
        self._check_revision(key, last, now)
        return self._write(key, value, "PUT", now).seq

    def delete(self, key: str, last: int | None, now: float) -> None:
        if last is not None:
            self._check_revision(key, last, now)
        self._write(key, b"", "DEL", now)

    def keys(self, now: float, under: str = "") -> list[str]:
        """Live keys, sorted; with ``under`` (a checked prefix), those starting ``under.``."""
        start = under + "." if under else ""
        return sorted(
            key
            for key in list(self._records)
            if key.startswith(start)
            and (record := self._latest(key, now)) is not None
            and record.operation == "PUT"
        )


class MemoryKeyValue:
    """A handle on one MemoryBackbone bucket (satisfies the ``KeyValue`` protocol)."""

    __slots__ = ("_check_open", "_clock", "_max_payload", "_state")

    def __init__(
        self,
        state: BucketState,
        clock: Clock,
        check_open: Callable[[], None],
        *,
        max_payload: int = -1,
    ) -> None:
        self._state = state
        self._clock = clock
        self._check_open = check_open
        self._max_payload = max_payload

    def _fits(self, key: str, value: bytes, last: int | None) -> None:
        """The backbone's size rule, with the header a conditional write sends on JetStream."""
        headers = None if last is None else {_EXPECTED_LAST: str(last)}
        subject = kv_subject_prefix(self._state.config.bucket) + key
        check_message_size(subject, len(value), header_block_size(headers), self._max_payload)

    def __repr__(self) -> str:
        return f"<MemoryKeyValue {self._state.config.bucket!r}>"

    @property
    def bucket(self) -> str:
        return self._state.config.bucket

    async def _enter(self, key: str) -> float:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        validate_kv_key(key)
        return self._clock.now()

    async def get(self, key: str) -> KvEntry | None:
        now = await self._enter(key)
        return self._state.get(key, now)

    async def put(self, key: str, value: bytes) -> int:
        now = await self._enter(key)
        self._fits(key, value, None)
        return self._state.put(key, value, now)

    async def create(self, key: str, value: bytes) -> int:
        now = await self._enter(key)
        self._fits(key, value, 0)
        return self._state.create(key, value, now)

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        now = await self._enter(key)
        self._fits(key, value, last)
        return self._state.update(key, value, last, now)

    async def delete(self, key: str, *, last: int | None = None) -> None:
        now = await self._enter(key)
        self._state.delete(key, last, now)

    async def keys(self, prefix: str | None = None) -> list[str]:
        under = "" if prefix is None else kv_prefix(prefix)
        await anyio.lowlevel.checkpoint()
        self._check_open()
        return self._state.keys(self._clock.now(), under)

    async def get_many(self, keys: Iterable[str]) -> dict[str, KvEntry]:
        wanted = kv_keys_wanted(keys)
        await anyio.lowlevel.checkpoint()
        self._check_open()
        now = self._clock.now()
        found = {}
        for key in wanted:
            entry = self._state.get(key, now)
            if entry is not None:
                found[key] = entry
        return found
