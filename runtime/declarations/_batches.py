"""Fan-out / fan-in: batches of child events and the join capability that collects them.

``ctx.fan_out(subject, items, join=report)`` publishes one child message per item
under a batch id; ``@app.join(...)`` declares ``report``, a capability with a
``stream`` trigger on ``thaw.join.<app>.<capability>`` (the app's own stream
captures it, so consumers, retries, dead letters and metrics are the usual ones).

State is a per-app KV bucket, ``thaw_batches_<app>``: the batch record under
``<digest>`` (size, join, deadline, a bitmap of children reported, who closed it)
and each child's outcome under ``<digest>.r.<i>``. Invariants:

- The batch id is ``<app>.<digest>``, the digest derived from the parent event
  id, the capability and the n-th fan_out of the call: a redelivered parent finds
  its record (``create`` -> ``KeyExists``) and republishes the same message ids
  (``<batch>.<i>``, ``<batch>.join``, ``<batch>.deadline``), which the stream's
  duplicate window drops.
- A child's outcome is written with ``create`` before its ack (first write wins;
  a redelivery changes nothing), then its bit is set with compare-and-set; the
  child that sees every bit set publishes the join signal (a redelivered one
  publishes it again, deduplicated).
- The deadline is the broker's: the deadline signal's first delivery is answered
  ``RetryLater(delay=timeout)``, and its next delivery is the deadline (no clock
  is compared across hosts). So a join needs ``max_attempts >= 2``; the nak
  spends one retry-budget token per batch.
- The record is closed once, by compare-and-set, by the join signal
  (``complete``) or the deadline signal at the deadline (``timeout``): the winner
  runs the user function (again on a redelivery: at-least-once), the loser
  answers Ok without running it.
- A message without the ``Thaw-Batch`` header costs the worker one lookup; a
  malformed one (bad types, index out of range, unknown batch) is dead-lettered
  as ``batch_invalid`` without running the capability.
"""

from __future__ import annotations

import hashlib
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec

from thaw._errors import (
    BackboneError,
    BatchInvalid,
    BucketNotFound,
    ConfigError,
    KeyExists,
    Rejected,
    RetryLater,
    WrongRevision,
)
from thaw.declarations._batch_types import Batch, BatchRef
from thaw.declarations._context import Context

if TYPE_CHECKING:
    from thaw.backbone._contract import Backbone, KeyValue, KvEntry

__all__ = [
    "Batch",
    "BatchRef",
    "ChildRef",
    "BATCH_HEADER",
    "BATCH_INDEX_HEADER",
    "BATCH_SIZE_HEADER",
    "MAX_BATCH",
    "OnTimeout",
    "batch_bucket_for",
    "BATCH_BUCKET_TTL",
    "MAX_JOIN_TIMEOUT",
    "app_has_join",
    "join_subject",
    "is_join_subject",
    "parse_child",
    "BatchRecorder",
    "fan_out",
    "join_wrapper",
    "JoinMark",
    "MAX_CHILD_RESULT",
]

OnTimeout = Literal["run", "dead_letter"]
BATCH_HEADER = "Thaw-Batch"
BATCH_INDEX_HEADER = "Thaw-Batch-Index"
BATCH_SIZE_HEADER = "Thaw-Batch-Size"
MAX_BATCH = 10_000
MAX_CONTEXT = 16 * 1024  # bytes of JSON a fan_out may hand its join
MAX_CHILD_RESULT = 64 * 1024  # bytes of a child's result kept for the join (a claim check, else)
CAS_TRIES = 1000  # compare-and-set rounds on a batch record before the child is retried
JOIN_PREFIX = "thaw.join."
_BATCH_ID = re.compile(r"([A-Za-z][A-Za-z0-9_\-]{0,63})\.([0-9a-f]{24})\Z")
_INDEX = re.compile(r"(?:0|[1-9][0-9]{0,4})\Z")
_encode = msgspec.json.Encoder().encode


class ChildRef(msgspec.Struct, frozen=True):
    """A child message's batch headers, checked."""

    batch: str
    app: str
    digest: str
    index: int
    size: int


class _Record(msgspec.Struct, kw_only=True):
    join_app: str
    join: str
    size: int
    timeout: float
    on_timeout: str
    done: bytes  # a bitmap: bit i set once child i reported
    count: int = 0
    closed: str = ""  # "", "complete" or "timeout"
    context: msgspec.Raw = msgspec.Raw(b"null")  # what fan_out was told, for the join


class _Signal(msgspec.Struct, frozen=True):
    batch: str
    kind: Literal["join", "deadline"]


_decode_record = msgspec.json.Decoder(_Record).decode
_decode_signal = msgspec.json.Decoder(_Signal).decode


def batch_bucket_for(app: str) -> str:
    return f"thaw_batches_{app}"


MAX_JOIN_TIMEOUT = 7 * 86400.0  # seconds; a batch record lives a day longer
BATCH_BUCKET_TTL = MAX_JOIN_TIMEOUT + 86400.0


def app_has_join(subjects: Iterable[str]) -> bool:
    return any(is_join_subject(subject) for subject in subjects)


def join_subject(app: str, capability: str) -> str:
    return f"{JOIN_PREFIX}{app}.{capability}"


def is_join_subject(subject: str) -> bool:
    return subject.startswith(JOIN_PREFIX)


def parse_child(headers: Mapping[str, str]) -> ChildRef:
    """The batch headers of a child message, or ``BatchInvalid`` saying what is wrong."""
    batch = headers.get(BATCH_HEADER, "")
    index = headers.get(BATCH_INDEX_HEADER, "")
    size = headers.get(BATCH_SIZE_HEADER, "")
    match = _BATCH_ID.match(batch) if isinstance(batch, str) else None
    if match is None:
        raise BatchInvalid(f"header {BATCH_HEADER} {batch[:80]!r} is not '<app>.<24 hex digits>'")
    for name, value in ((BATCH_INDEX_HEADER, index), (BATCH_SIZE_HEADER, size)):
        if not isinstance(value, str) or _INDEX.match(value) is None:
            raise BatchInvalid(f"header {name} {value[:20]!r} is not an integer 0..{MAX_BATCH}")
    i, n = int(index), int(size)
    if n > MAX_BATCH or i >= n:
        raise BatchInvalid(f"batch index {i} is out of range for a batch of {n}")
    return ChildRef(batch, match.group(1), match.group(2), i, n)


def _read_record(value: bytes, batch: str) -> _Record:
    try:
        return _decode_record(value)
    except msgspec.DecodeError:  # written by someone else: the batch cannot be trusted
        raise BatchInvalid(f"batch {batch!r} has a record that is not a batch") from None


async def _bucket(backbone: Backbone, app: str) -> KeyValue:
    try:
        return await backbone.kv(batch_bucket_for(app))
    except BucketNotFound:
        raise BatchInvalid(
            f"no batch bucket {batch_bucket_for(app)!r}: app {app!r} declares no join"
        ) from None


async def _open_batch(backbone: Backbone, child: ChildRef) -> tuple[KeyValue, KvEntry, _Record]:
    bucket = await _bucket(backbone, child.app)
    entry = await bucket.get(child.digest)
    if entry is None:
        raise BatchInvalid(f"batch {child.batch!r} does not exist (or has expired)")
    record = _read_record(entry.value, child.batch)
    if record.size != child.size:
        raise BatchInvalid(f"batch {child.batch!r} has {record.size} children, not {child.size}")
    return bucket, entry, record


class _Waiter:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None


class _Group:
    """The children of one batch waiting for (or in) the compare-and-set under way."""

    __slots__ = ("last", "leading", "waiting")

    def __init__(self) -> None:
        self.leading = False
        self.waiting: list[tuple[int, _Waiter]] = []
        self.last: tuple[int, _Record] | None = None  # the record as this worker last wrote it


class BatchRecorder:
    """Records fan-out children's outcomes for one worker, by group commit.

    Every child's outcome is its own key (``create``: first write wins), then its bit
    goes into the batch record by compare-and-set. Children of one batch that finish
    while such a write is under way wait and go into the next one together, so N
    children finishing at once cost a few writes of the record, not N rounds of
    losing races (measured in benchmarks/fan_out.py). Batches seen to exist are
    remembered (up to ``KNOWN``), so a child's check before it runs is free after
    the first of its batch.
    """

    KNOWN = 4096

    def __init__(self, backbone: Backbone) -> None:
        self._backbone = backbone
        self._groups: dict[str, _Group] = {}
        self._known: dict[str, int] = {}  # batch id -> size, oldest first

    async def check(self, child: ChildRef) -> None:
        """Before a child runs: its batch exists and has its size, else ``BatchInvalid``."""
        if self._known.get(child.batch) == child.size:
            return
        await _open_batch(self._backbone, child)
        self._remember(child)

    def _remember(self, child: ChildRef) -> None:
        known = self._known
        known[child.batch] = child.size
        if len(known) > self.KNOWN:
            del known[next(iter(known))]

    async def record(self, child: ChildRef, *, ok: bool, data: bytes, code: str) -> None:
        """Record ``child``'s final outcome (before its ack) and signal the join when it
        completes the batch. ``BatchInvalid``: no such batch (dead-letter the child);
        ``BackboneError``: not recorded, try again (nak)."""
        if ok and len(data) > MAX_CHILD_RESULT:  # the work is done; its answer cannot travel
            ok, code = False, "result_too_large"
        value = (b"1" + data) if ok else (b"0" + code.encode())
        bucket = await _bucket(self._backbone, child.app)
        try:
            await bucket.create(f"{child.digest}.r.{child.index}", value)
        except KeyExists:
            pass  # a redelivery: the first outcome stands
        group = self._groups.get(child.batch)
        if group is None:
            group = self._groups[child.batch] = _Group()
        waiter = _Waiter()
        group.waiting.append((child.index, waiter))
        if not group.leading:
            await self._lead(child, group)
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error

    async def _lead(self, child: ChildRef, group: _Group) -> None:
        """Write the waiting children's bits, round after round, until none waits."""
        group.leading = True
        taken: list[tuple[int, _Waiter]] = []
        try:
            while group.waiting:
                taken, group.waiting = group.waiting, []
                error: BaseException | None = None
                try:
                    await self._commit(child, group, {index for index, _ in taken})
                except (BatchInvalid, BackboneError) as exc:
                    error = exc
                for _, waiter in taken:
                    waiter.error = error
                    waiter.done.set()
                taken = []
        finally:  # cancelled or failed otherwise: nobody may wait for a round that won't come
            group.leading = False
            stranded = taken + group.waiting
            group.waiting = []
            for _, waiter in stranded:
                if not waiter.done.is_set():
                    waiter.error = BackboneError(f"batch {child.batch!r}: recording interrupted")
                    waiter.done.set()
            if self._groups.get(child.batch) is group:
                del self._groups[child.batch]

    async def _commit(self, child: ChildRef, group: _Group, indices: set[int]) -> None:
        if group.last is None:
            bucket, entry, record = await _open_batch(self._backbone, child)
            revision = entry.revision
            self._remember(child)
        else:  # the next round of a busy batch: assume our own write is the latest
            bucket = await _bucket(self._backbone, child.app)
            revision, record = group.last
            group.last = None
        for _ in range(CAS_TRIES):
            done = bytearray(record.done)
            added = 0
            for index in indices:
                byte, bit = divmod(index, 8)
                if not done[byte] & (1 << bit):
                    done[byte] |= 1 << bit
                    added += 1
            if added:
                record.done, record.count = bytes(done), record.count + added
                try:
                    revision = await bucket.update(child.digest, _encode(record), last=revision)
                except WrongRevision:  # another host wrote it: read and merge again
                    latest = await bucket.get(child.digest)
                    if latest is None:
                        raise BatchInvalid(
                            f"batch {child.batch!r} expired while recording"
                        ) from None
                    revision, record = latest.revision, _read_record(latest.value, child.batch)
                    continue
                group.last = (revision, record)
            if record.count == record.size and not record.closed:  # not signalled yet, or lost
                await _signal(self._backbone, child.batch, record, "join")
            return
        raise WrongRevision(f"batch {child.batch!r}: {CAS_TRIES} compare-and-set rounds lost")


async def _signal(backbone: Backbone, batch: str, record: _Record, kind: str) -> None:
    await backbone.publish(
        join_subject(record.join_app, record.join),
        _encode(_Signal(batch, kind)),  # type: ignore[arg-type]
        msg_id=f"{batch}.{kind}",
    )


class JoinMark(msgspec.Struct, frozen=True):
    """What ``@app.join`` leaves on the function it declares, for ``ctx.fan_out``."""

    app: str
    name: str
    timeout: float
    on_timeout: str


async def fan_out(
    ctx: Context, subject: str, items: Iterable[Any], *, mark: JoinMark, context: Any = None
) -> BatchRef:
    """Publish one child per item to ``subject`` under a new batch joined by ``mark``.

    ``Context.fan_out`` calls it through the join function (``__thaw_fan_out__``),
    so the context module need not import this one."""
    payloads = [item if isinstance(item, bytes) else _encode(item) for item in items]
    size = len(payloads)
    if size > MAX_BATCH:
        raise ConfigError(f"fan_out of {size} items: a batch holds at most {MAX_BATCH}")
    try:
        context_json = _encode(context)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ConfigError(f"fan_out context is not JSON-encodable: {exc}") from None
    if len(context_json) > MAX_CONTEXT:
        raise ConfigError(
            f"fan_out context is {len(context_json)} bytes of JSON; at most {MAX_CONTEXT}"
        )
    backbone = ctx._require_backbone("fan_out")
    # The n-th publish of the call: children count as publishes, and so does the
    # fan_out itself, so two fan_outs of one call (even empty ones) never share a batch.
    ctx._published += 1
    seed = f"{ctx.event.id}/{ctx._env.capability}/fan_out/{ctx._published}"
    digest = hashlib.sha256(seed.encode()).hexdigest()[:24]
    batch = f"{mark.app}.{digest}"
    record = _Record(
        join_app=mark.app,
        join=mark.name,
        size=size,
        timeout=mark.timeout,
        on_timeout=mark.on_timeout,
        done=bytes((size + 7) // 8),
        context=msgspec.Raw(context_json),
    )
    bucket = await _bucket(backbone, mark.app)
    created = True
    try:
        await bucket.create(digest, _encode(record))
    except KeyExists:
        created = False  # a redelivered parent: publish the same ids again
    size_header = str(size)
    for index, payload in enumerate(payloads):
        headers = {
            BATCH_HEADER: batch,
            BATCH_INDEX_HEADER: str(index),
            BATCH_SIZE_HEADER: size_header,
        }
        await ctx.publish(subject, payload, msg_id=f"{batch}.{index}", headers=headers)
    await _signal(backbone, batch, record, "join" if size == 0 else "deadline")
    return BatchRef(batch, size, created)


def join_wrapper(
    function: Callable[..., Any], *, app: str, name: str, takes_context: bool
) -> Callable[..., Any]:
    """The capability body behind ``@app.join``: close the batch once, then call ``function``."""
    hints = typing.get_type_hints(function)
    params = list(hints.items())
    batch_type = next((t for k, t in params if k != "return"), Batch)
    args = typing.get_args(batch_type)
    item_type = args[0] if args else Any
    if item_type is bytes:  # a child that returned bytes: kept as they were
        decode: Callable[[bytes], Any] = bytes
    else:
        decode = msgspec.json.Decoder(item_type).decode

    async def join(signal: bytes, ctx: Context) -> Any:
        try:
            parsed = _decode_signal(signal)
        except msgspec.ValidationError as exc:
            raise BatchInvalid(f"join signal is malformed: {exc}") from None
        match = _BATCH_ID.match(parsed.batch)
        if match is None or match.group(1) != app:
            raise BatchInvalid(f"join signal names batch {parsed.batch[:80]!r} of another app")
        backbone = ctx._require_backbone("join")
        bucket = await _bucket(backbone, app)
        digest = match.group(2)
        closing = "complete" if parsed.kind == "join" else "timeout"
        while True:
            entry = await bucket.get(digest)
            if entry is None:
                raise BatchInvalid(f"batch {parsed.batch!r} does not exist (or has expired)")
            record = _read_record(entry.value, parsed.batch)
            if record.closed:
                if record.closed != closing:
                    return None  # the other signal won: it runs the join
                break  # we closed it earlier: a redelivery runs the join again
            if closing == "complete" and record.count < record.size:
                raise BatchInvalid(
                    f"join signal for batch {parsed.batch!r} before its children reported "
                    f"({record.count} of {record.size})"
                )
            if closing == "timeout":
                if record.count == record.size:
                    return None  # complete: the join signal runs it
                if ctx.attempt == 1:  # the broker redelivers it at the deadline
                    raise RetryLater("batch deadline not reached", delay=record.timeout)
            record.closed = closing
            try:
                await bucket.update(digest, _encode(record), last=entry.revision)
                break
            except WrongRevision:
                continue
        if closing == "timeout" and record.on_timeout == "dead_letter":
            raise Rejected(
                f"batch {parsed.batch!r} timed out with {record.size - record.count} of "
                f"{record.size} children missing",
                code="batch_timed_out",
            )
        results: dict[int, Any] = {}
        failed: dict[int, str] = {}
        missing: list[int] = []
        for index in range(record.size):
            child = await bucket.get(f"{digest}.r.{index}")
            if child is None:
                missing.append(index)
            elif child.value[:1] == b"1":
                answer = child.value[1:]
                results[index] = decode(answer if answer or item_type is bytes else b"null")
            else:
                failed[index] = child.value[1:].decode(errors="replace")
        value = Batch(
            id=parsed.batch,
            size=record.size,
            complete=not missing,
            timed_out=closing == "timeout",
            results=results,
            failed=failed,
            missing=missing,
            context=msgspec.json.decode(record.context),
        )
        if takes_context:
            return await function(value, ctx)
        return await function(value)

    join.__name__ = name
    join.__qualname__ = getattr(function, "__qualname__", name)
    join.__doc__ = function.__doc__
    join.__annotations__ = {"signal": bytes, "ctx": Context, "return": hints.get("return", Any)}
    return join
