"""An idempotency store on a backbone KV bucket, for several hosts at once.

Claims are compare-and-set writes, so two hosts racing on the same redelivered
message cannot both run the side effect: ``create`` succeeds for exactly one of
them, and a lapsed claim is taken over with ``update(last=revision)``, which
again only one host can win. The token is the KV revision of the claim.

Records carry what the protocol fences on (see ``_idempotency``): the payload
digest, and the holder and attempt of the delivery that claimed; a redelivery
takes over its own earlier delivery's claim with ``update(last=revision)`` too.

Keys are hashed (SHA-256, hex) so any event id or user key is a valid KV key.
Expiry is stored in the record as wall-clock time (hosts do not share a
monotonic clock); the bucket's own TTL removes old records physically.

A "done" record never changes again before it expires (only the claim's owner
writes it, and nothing deletes it), so each store keeps the ones it wrote or
read in a small local LRU (bounded in entries and result size, dropped at the
record's expiry): a redelivery of an event this host already finished is
answered without a network round trip. A fresh key is claimed with ``create``
first (one round trip); only a key that exists is read.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

import anyio
import msgspec

from thaw._errors import KeyExists, WrongRevision
from thaw.backbone._contract import Backbone, KeyValue, KvConfig
from thaw.invocation._idempotency import MAX_STORED_RESULT, Claim, answer_claim

__all__ = ["KvIdempotencyStore", "IDEMPOTENCY_BUCKET"]

IDEMPOTENCY_BUCKET = "thaw_idempotency"
_POLL_FIRST = 0.01
_POLL_MAX = 0.25
_RACE_LIMIT = 16
LOCAL_ENTRIES = 10_000  # done results remembered per store (0: none)
LOCAL_RESULT_BYTES = 4096  # larger results are only kept in the bucket


class _Record(msgspec.Struct, frozen=True, array_like=True):
    state: Literal["claimed", "done"]
    expires: float  # wall-clock seconds
    result: bytes = b""
    digest: bytes = b""  # of the payload the key was claimed for (b"": not bound)
    holder: str = ""  # the delivery that claimed (its event id)
    attempt: int = 0  # ... and its delivery count
    replayable: bool = True  # False: done, the result too large to store


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
        local_entries: int = LOCAL_ENTRIES,
        max_result: int = MAX_STORED_RESULT,
    ) -> None:
        self.max_result = max_result
        self._backbone = backbone
        self._bucket_name = bucket
        self._bucket: KeyValue | None = None
        self._now = wall_clock
        self._local_entries = local_entries
        # hashed key -> (expires, revision, result, digest) of records known to be done
        self._done: OrderedDict[str, tuple[float, int, bytes, bytes]] = OrderedDict()

    def _known(self, name: str, digest: bytes) -> Claim | None:
        """A done record this store has seen and that has not expired, if any."""
        known = self._done.get(name)
        if known is None:
            return None
        if known[0] <= self._now():
            del self._done[name]
            return None
        self._done.move_to_end(name)
        if digest and known[3] and digest != known[3]:
            return Claim("conflict", known[1])
        return Claim("done", known[1], known[2])

    def _remember(self, name: str, record: _Record, revision: int) -> None:
        result = record.result
        if self._local_entries <= 0 or len(result) > LOCAL_RESULT_BYTES or not record.replayable:
            return
        self._done[name] = (record.expires, revision, result, record.digest)
        self._done.move_to_end(name)
        while len(self._done) > self._local_entries:
            self._done.popitem(last=False)

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

    async def claim(
        self,
        key: str,
        *,
        hold: float,
        ttl: float,
        digest: bytes = b"",
        holder: str = "",
        attempt: int = 0,
    ) -> Claim:
        name = self._key(key)
        known = self._known(name, digest)
        if known is not None:
            return known
        kv = await self._kv()
        claimed = _encode(
            _Record("claimed", self._now() + hold, digest=digest, holder=holder, attempt=attempt)
        )
        try:  # the common case, a key nobody has seen: one round trip
            return Claim("claimed", await kv.create(name, claimed))
        except KeyExists:
            pass
        for _ in range(_RACE_LIMIT):
            entry = await kv.get(name)
            if entry is None:
                try:
                    return Claim("claimed", await kv.create(name, claimed))
                except KeyExists:
                    continue  # another host claimed first: look again
            record = _read(entry.value)
            if record is not None and record.expires > self._now():
                answer = answer_claim(record, entry.revision, digest, holder, attempt)
                if answer is not None:
                    if answer.state == "done":
                        self._remember(name, record, entry.revision)
                    return answer
            try:  # our own earlier delivery's, lapsed, expired or unreadable: take it over
                return Claim("claimed", await kv.update(name, claimed, last=entry.revision))
            except WrongRevision:
                continue
        return Claim("busy")

    async def peek(self, key: str) -> Claim | None:
        name = self._key(key)
        known = self._known(name, b"")
        if known is not None:
            return known
        kv = await self._kv()
        entry = await kv.get(name)
        record = None if entry is None else _read(entry.value)
        if entry is None or record is None or record.expires <= self._now():
            return None
        if record.state == "done":
            return Claim("done", entry.revision, record.result, record.replayable)
        return Claim("busy", entry.revision)

    async def complete(
        self, key: str, token: int, result: bytes, *, ttl: float, digest: bytes = b""
    ) -> None:
        kv = await self._kv()
        name = self._key(key)
        replayable = len(result) <= self.max_result
        record = _Record(
            "done",
            self._now() + ttl,
            result if replayable else b"",
            digest=digest,
            replayable=replayable,
        )
        try:
            revision = await kv.update(name, _encode(record), last=token)
        except WrongRevision:
            return  # our claim lapsed and someone else owns the key now
        self._remember(name, record, revision)

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
