"""Idempotency stores: claim a key, then complete it with the result or release it.

Protocol (the same for the in-memory store and KV-backed stores):

- ``claim(key)`` answers ``claimed`` (you run the side effect; keep the token),
  ``done`` (someone finished; here is the stored result), ``busy`` (someone
  holds a live claim) or ``conflict`` (the key was claimed for another payload).
  A claim lapses after ``hold`` seconds so a crashed worker cannot block a key
  forever.
- A key is bound to the ``digest`` of the payload it was first claimed with: the
  same key with another payload is a ``conflict``, never the other's result
  (payment APIs answer 422 there). An empty digest on either side skips the check.
- A claim is fenced by delivery: ``holder`` names the delivery (the event id) and
  ``attempt`` its delivery count. A later delivery of the same event (a higher
  attempt) takes over a live claim at once: the broker redelivers only when the
  earlier delivery stopped heartbeating, so its holder is dead or cut off, and
  waiting out ``hold`` would only spend the later delivery's attempts (this is how
  messages were lost when a host was killed). Other events with the same key wait.
- ``complete(key, token, result)`` stores the result for ``ttl`` seconds; a result
  larger than the store's ``max_result`` is not stored, the key is marked done
  without it (``Claim.replayable`` False), so a duplicate is refused instead of
  running the side effect again. ``release(key, token)`` drops the claim so a retry
  may claim again. Both are no-ops when the token no longer owns the key (the
  claim lapsed and was taken).
- ``wait_settled(key, timeout)`` returns when the key is done or free again, or
  when ``timeout`` passes; callers then claim again.
- ``peek(key)`` reads what is there without claiming (for status look-ups).
"""

from __future__ import annotations

import itertools
from typing import Literal, Protocol

import anyio
import msgspec

from thaw._clock import Clock, SystemClock

__all__ = [
    "Claim",
    "Held",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "MAX_STORED_RESULT",
    "answer_claim",
]

MAX_STORED_RESULT = 512 * 1024  # bytes; fits a KV value under NATS's default 1 MiB payload


class Claim(msgspec.Struct, frozen=True, gc=False):
    state: Literal["claimed", "done", "busy", "conflict"]
    token: int = 0
    result: bytes = b""
    replayable: bool = True  # False: done, but the result was too large to store


class Held(Protocol):
    """What a store keeps of a live key: both stores' records have these fields."""

    @property
    def state(self) -> Literal["claimed", "done"]: ...
    @property
    def result(self) -> bytes: ...
    @property
    def replayable(self) -> bool: ...
    @property
    def digest(self) -> bytes: ...
    @property
    def holder(self) -> str: ...
    @property
    def attempt(self) -> int: ...


def answer_claim(held: Held, token: int, digest: bytes, holder: str, attempt: int) -> Claim | None:
    """What a claim for the live record ``held`` answers; None: the caller takes it over.

    The protocol's rules in one place, for every store: another payload's digest is a
    conflict, a done record answers with its result, and a later delivery of the event
    that holds the claim takes it over; anything else is busy.
    """
    if digest and held.digest and digest != held.digest:
        return Claim("conflict", token)
    if held.state == "done":
        return Claim("done", token, held.result, held.replayable)
    if holder and holder == held.holder and attempt > held.attempt:
        return None  # a redelivery of the same event: its earlier delivery is gone
    return Claim("busy", token)


class IdempotencyStore(Protocol):
    async def claim(
        self,
        key: str,
        *,
        hold: float,
        ttl: float,
        digest: bytes = b"",
        holder: str = "",
        attempt: int = 0,
    ) -> Claim: ...
    async def peek(self, key: str) -> Claim | None:
        """What is stored under ``key`` (done or busy) without claiming it; None if nothing."""
        ...

    async def complete(
        self, key: str, token: int, result: bytes, *, ttl: float, digest: bytes = b""
    ) -> None:
        """Store ``result``; ``digest`` is the one the claim was made with (kept with it)."""
        ...

    async def release(self, key: str, token: int) -> None: ...
    async def wait_settled(self, key: str, *, timeout: float) -> None: ...


class _Entry:
    __slots__ = (
        "attempt",
        "digest",
        "expires",
        "holder",
        "replayable",
        "result",
        "settled",
        "state",
        "token",
    )

    def __init__(
        self, token: int, expires: float, digest: bytes, holder: str, attempt: int
    ) -> None:
        self.state: Literal["claimed", "done"] = "claimed"
        self.token = token
        self.result = b""
        self.replayable = True
        self.expires = expires
        self.digest = digest
        self.holder = holder
        self.attempt = attempt
        self.settled: anyio.Event | None = None

    def settle(self) -> None:
        if self.settled is not None:
            self.settled.set()
            self.settled = None


class MemoryIdempotencyStore:
    """In-process store: for a single host, embedding, WASM and tests.

    Expired entries are dropped lazily on access and by ``sweep()``; at most
    ``max_entries`` are kept (oldest results go first) so memory stays bounded.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        max_entries: int = 100_000,
        max_result: int = MAX_STORED_RESULT,
    ) -> None:
        self._clock = clock or SystemClock()
        self._entries: dict[str, _Entry] = {}
        self._tokens = itertools.count(1)
        self._max_entries = max_entries
        self.max_result = max_result

    def __len__(self) -> int:
        return len(self._entries)

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
        now = self._clock.now()
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= now:
            entry.settle()
            del self._entries[key]
            entry = None
        if entry is not None:
            answer = answer_claim(entry, entry.token, digest, holder, attempt)
            if answer is not None:
                return answer
            entry.settle()  # taken over: the old token owns nothing any more
        elif len(self._entries) >= self._max_entries:
            self.sweep()
        token = next(self._tokens)
        self._entries[key] = _Entry(token, now + hold, digest, holder, attempt)
        return Claim("claimed", token)

    async def peek(self, key: str) -> Claim | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires <= self._clock.now():
            return None
        if entry.state == "done":
            return Claim("done", entry.token, entry.result, entry.replayable)
        return Claim("busy", entry.token)

    async def complete(
        self, key: str, token: int, result: bytes, *, ttl: float, digest: bytes = b""
    ) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.token != token:
            return
        entry.state = "done"
        entry.replayable = len(result) <= self.max_result
        entry.result = result if entry.replayable else b""
        entry.expires = self._clock.now() + ttl
        entry.settle()

    async def release(self, key: str, token: int) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.token != token:
            return
        del self._entries[key]
        entry.settle()

    async def wait_settled(self, key: str, *, timeout: float) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.state == "done":
            return
        if entry.settled is None:
            entry.settled = anyio.Event()
        settled = entry.settled
        with anyio.move_on_after(timeout):
            await settled.wait()

    def sweep(self) -> int:
        """Drop expired entries; when still full, the oldest tenth of the results too.

        Dropping a tenth at once keeps the cost amortised O(1) per claim when the
        store runs at its bound. Returns how many entries were dropped.
        """
        now = self._clock.now()
        expired = [k for k, e in self._entries.items() if e.expires <= now]
        for key in expired:
            self._entries.pop(key).settle()
        dropped = len(expired)
        if len(self._entries) >= self._max_entries:
            quota = max(1, self._max_entries // 10)
            oldest = [k for k, e in self._entries.items() if e.state == "done"][:quota]
            for key in oldest:
                self._entries.pop(key).settle()
            dropped += len(oldest)
        return dropped
