"""An idempotency store on a backbone KV bucket, for several hosts at once.

Claims are compare-and-set writes, so two hosts racing on the same redelivered
message cannot both run the side effect: ``create`` succeeds for exactly one of
them, and a lapsed claim is taken over with ``update(last=revision)``, which
again only one host can win. The token is the KV revision of the claim.

Keys are hashed (SHA-256, hex) so any event id or user key is a valid KV key.
Expiry is stored in the record as wall-clock time (hosts do not share a
monotonic clock); the bucket's own TTL removes old records physically.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Literal

import anyio
import msgspec

from ._backbone import Backbone, KeyValue, KvConfig
from ._errors import KeyExists, WrongRevision
from ._idempotency import Claim

__all__ = ["KvIdempotencyStore", "IDEMPOTENCY_BUCKET"]

IDEMPOTENCY_BUCKET = "thaw_idempotency"
_POLL_FIRST = 0.01
_POLL_MAX = 0.25
_RACE_LIMIT = 16


class _Record(msgspec.Struct, frozen=True, array_like=True):
    state: Literal["claimed", "done"]
    expires: float  # wall-clock seconds
    result: bytes = b""


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Record).decode


class KvIdempotencyStore:
    """The IdempotencyStore protocol on a KV bucket of any Backbone."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        bucket: str = IDEMPOTENCY_BUCKET,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._backbone = backbone
        self._bucket_name = bucket
        self._bucket: KeyValue | None = None
        self._now = wall_clock

    async def provision(self, *, ttl: float) -> None:
        """Create the bucket (or confirm it) with records kept at most ``ttl`` seconds."""
        self._bucket = await self._backbone.add_kv(KvConfig(bucket=self._bucket_name, ttl=ttl))

    async def _kv(self) -> KeyValue:
        if self._bucket is None:
            self._bucket = await self._backbone.kv(self._bucket_name)
        return self._bucket

    @staticmethod
    def _key(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    async def claim(self, key: str, *, hold: float, ttl: float) -> Claim:
        kv = await self._kv()
        name = self._key(key)
        claimed = _encode(_Record("claimed", self._now() + hold))
        for _ in range(_RACE_LIMIT):
            entry = await kv.get(name)
            if entry is None:
                try:
                    return Claim("claimed", await kv.create(name, claimed))
                except KeyExists:
                    continue  # another host claimed first: look again
            record = _read(entry.value)
            if record is not None and record.expires > self._now():
                if record.state == "done":
                    return Claim("done", entry.revision, record.result)
                return Claim("busy", entry.revision)
            try:  # lapsed claim, expired or unreadable record: take it over
                return Claim("claimed", await kv.update(name, claimed, last=entry.revision))
            except WrongRevision:
                continue
        return Claim("busy")

    async def peek(self, key: str) -> Claim | None:
        kv = await self._kv()
        entry = await kv.get(self._key(key))
        record = None if entry is None else _read(entry.value)
        if entry is None or record is None or record.expires <= self._now():
            return None
        if record.state == "done":
            return Claim("done", entry.revision, record.result)
        return Claim("busy", entry.revision)

    async def complete(self, key: str, token: int, result: bytes, *, ttl: float) -> None:
        kv = await self._kv()
        record = _encode(_Record("done", self._now() + ttl, result))
        try:
            await kv.update(self._key(key), record, last=token)
        except WrongRevision:
            pass  # our claim lapsed and someone else owns the key now

    async def release(self, key: str, token: int) -> None:
        kv = await self._kv()
        try:
            await kv.delete(self._key(key), last=token)
        except WrongRevision:
            pass

    async def wait_settled(self, key: str, *, timeout: float) -> None:
        kv = await self._kv()
        name = self._key(key)
        delay = _POLL_FIRST
        with anyio.move_on_after(timeout):
            while True:
                entry = await kv.get(name)
                record = None if entry is None else _read(entry.value)
                if record is None or record.state == "done" or record.expires <= self._now():
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)


def _read(value: bytes) -> _Record | None:
    try:
        return _decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
