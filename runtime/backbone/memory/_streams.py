"""In-memory JetStream streams and durable pull consumers (the state behind MemoryBackbone).

Everything here is synchronous and takes ``now`` (seconds on the backbone's
clock) as an argument, so ``MemoryBackbone`` makes every operation atomic (no
``await`` in the middle of a state change) and time can come from any Clock.

Invariants:

- A stream's stored messages are kept by sequence in storage order (a dict, so
  deleting one in the middle leaves nothing behind); ``first_seq`` is the
  lowest stored sequence (``last_seq + 1`` when empty). ``max_age`` expires the
  oldest first. A stream made with ``last_per_subject`` (the stream behind a KV
  bucket or an object store) keeps only the latest message per subject, as
  JetStream's ``max_msgs_per_subject: 1`` does.
- A consumer hands out each stream sequence above its ``cursor`` once as a new
  message; from then until it is acked, termed, given up at ``max_deliver`` or
  gone from the stream, it lives in ``pending``.
- A pending message is due for redelivery once ``due_at <= now``; due ones go
  out before new ones, lowest sequence first, and are never held back by
  ``max_ack_pending`` (which only stops *new* deliveries, as in JetStream).
- Every change that can make a waiting ``fetch`` succeed fires the stream's signal.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import anyio

from thaw._clock import Clock
from thaw._errors import BackboneError
from thaw._headers import MSG_ID_HEADER
from thaw.backbone._contract import (
    ConsumerConfig,
    ConsumerInfo,
    PubAck,
    StoredMessage,
    StreamConfig,
    StreamInfo,
)
from thaw.backbone._subjects import (
    subject_matches,
    subjects_overlap,
)

__all__ = [
    "Signal",
    "StreamState",
    "ConsumerState",
    "MemoryMessage",
    "streams_overlapping",
]


class Signal:
    """A broadcast "something changed": waiters hold the current event, ``fire`` sets it.

    The event is created lazily, so state can be built outside an event loop and
    publishing with nobody waiting allocates nothing.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def current(self) -> anyio.Event:
        if self._event is None:
            self._event = anyio.Event()
        return self._event

    def fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None


def _header_size(headers: Mapping[str, str]) -> int:
    """Bytes the headers take on the wire (``NATS/1.0`` block), as JetStream counts them."""
    if not headers:
        return 0
    size = len(b"NATS/1.0\r\n\r\n")
    for key, value in headers.items():
        size += len(key.encode()) + len(value.encode()) + 4  # ": " and "\r\n"
    return size


class _Stored:
    __slots__ = ("message", "stored_at")

    def __init__(self, message: StoredMessage, stored_at: float) -> None:
        self.message = message
        self.stored_at = stored_at


class StreamState:
    """One stream: its messages, its duplicate-detection window and its consumers."""

    __slots__ = (
        "_last_by_subject",
        "_messages",
        "_msg_ids",
        "config",
        "consumers",
        "first_seq",
        "last_seq",
        "signal",
        "system",
    )

    def __init__(
        self, config: StreamConfig, *, last_per_subject: bool = False, system: bool = False
    ) -> None:
        self.config = config
        self.consumers: dict[str, ConsumerState] = {}
        self.signal = Signal()
        self.first_seq = 1
        self.last_seq = 0
        self.system = system  # behind a KV bucket or object store (``$KV.``/``$O.`` subjects)
        self._messages: dict[int, _Stored] = {}
        # subject -> its latest seq, when only that one is kept
        self._last_by_subject: dict[str, int] | None = {} if last_per_subject else None
        # msg id -> (seq, stored_at), oldest first: time only moves forward.
        self._msg_ids: dict[str, tuple[int, float]] = {}

    def stored_at(self, seq: int) -> float | None:
        """When message ``seq`` was stored (the stream's clock), if it is still held."""
        stored = self._messages.get(seq)
        return None if stored is None else stored.stored_at

    def captures(self, subject: str) -> bool:
        return any(subject_matches(pattern, subject) for pattern in self.config.subjects)

    def expire(self, now: float) -> None:
        max_age = self.config.max_age
        if max_age > 0:
            expired: list[int] = []
            for seq, stored in self._messages.items():  # storage order is time order
                if now - stored.stored_at < max_age:
                    break
                expired.append(seq)
            if expired:
                for seq in expired:
                    self._forget(seq)
                self._renumber_first()
        window = self.config.duplicate_window
        msg_ids = self._msg_ids
        while msg_ids:
            oldest = next(iter(msg_ids))
            if now - msg_ids[oldest][1] < window:
                break
            del msg_ids[oldest]

    def store(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None,
        msg_id: str | None,
        now: float,
    ) -> PubAck:
        self.expire(now)
        stored_headers = dict(headers) if headers else {}
        if msg_id is not None:
            stored_headers[MSG_ID_HEADER] = msg_id
        else:
            msg_id = stored_headers.get(MSG_ID_HEADER)
        if msg_id is not None and msg_id in self._msg_ids:
            return PubAck(self.config.name, self._msg_ids[msg_id][0], duplicate=True)
        limit = self.config.max_msg_size
        size = len(data) + _header_size(stored_headers)
        if limit != -1 and size > limit:
            raise BackboneError(
                f"message to {subject!r} is {size} bytes (payload and headers); stream "
                f"{self.config.name!r} accepts at most {limit} (max_msg_size)"
            )
        self.last_seq += 1
        seq = self.last_seq
        message = StoredMessage(
            stream=self.config.name, seq=seq, subject=subject, data=data, headers=stored_headers
        )
        self._messages[seq] = _Stored(message, now)
        if msg_id is not None and self.config.duplicate_window > 0:
            self._msg_ids[msg_id] = (seq, now)
        last_by_subject = self._last_by_subject
        if last_by_subject is not None:
            previous = last_by_subject.get(subject)
            last_by_subject[subject] = seq
            if previous is not None and previous in self._messages:
                self._forget(previous)
                self._renumber_first()
        self.signal.fire()
        return PubAck(self.config.name, seq)

    def get(self, seq: int) -> StoredMessage | None:
        stored = self._messages.get(seq)
        return None if stored is None else stored.message

    def _forget(self, seq: int) -> None:
        stored = self._messages.pop(seq)
        for consumer in self.consumers.values():
            consumer.pending.pop(seq, None)
        last_by_subject = self._last_by_subject
        if last_by_subject is not None:
            subject = stored.message.subject
            if last_by_subject.get(subject) == seq:
                del last_by_subject[subject]

    def _renumber_first(self) -> None:
        self.first_seq = next(iter(self._messages), self.last_seq + 1)

    def delete(self, seq: int) -> bool:
        """Delete one message (consumers skip it from now on); False if it was not there."""
        if seq not in self._messages:
            return False
        self._forget(seq)
        self._renumber_first()
        self.signal.fire()
        return True

    def info(self, now: float) -> StreamInfo:
        self.expire(now)
        first = self.first_seq if self.last_seq else 0
        return StreamInfo(
            config=self.config,
            messages=len(self._messages),
            first_seq=first,
            last_seq=self.last_seq,
        )


class _Pending:
    __slots__ = ("due_at", "num_delivered")

    def __init__(self, num_delivered: int, due_at: float) -> None:
        self.num_delivered = num_delivered
        self.due_at = due_at


class ConsumerState:
    """One durable pull consumer: its cursor and its ack-pending messages."""

    __slots__ = ("config", "cursor", "pending", "stream")

    def __init__(self, stream: StreamState, config: ConsumerConfig) -> None:
        self.stream = stream
        self.config = config
        # highest stream seq already considered for a first delivery ("new": none before)
        self.cursor = stream.last_seq if config.deliver == "new" else 0
        self.pending: dict[int, _Pending] = {}

    def _wait_after(self, num_delivered: int) -> float:
        """How long the n-th delivery may stay unacked; backoff replaces ack_wait."""
        backoff = self.config.backoff
        if backoff:
            return backoff[min(num_delivered, len(backoff)) - 1]
        return self.config.ack_wait

    def _wants(self, subject: str) -> bool:
        pattern = self.config.filter_subject
        return not pattern or subject_matches(pattern, subject)

    def _sweep(self, now: float) -> None:
        """Forget pending messages that can never go out again."""
        self.stream.expire(now)
        max_deliver = self.config.max_deliver
        first_seq = self.stream.first_seq
        gone = [
            seq
            for seq, entry in self.pending.items()
            if seq < first_seq
            or (max_deliver != -1 and entry.num_delivered >= max_deliver and entry.due_at <= now)
        ]
        for seq in gone:
            del self.pending[seq]

    def take(self, batch: int, now: float) -> list[tuple[StoredMessage, int]]:
        """Deliver up to ``batch`` messages: due redeliveries first, then new ones."""
        self._sweep(now)
        out: list[tuple[StoredMessage, int]] = []
        # ``pending`` is in sequence order: entries are only ever added by first
        # deliveries, which go in sequence order, and are never re-inserted.
        due = [seq for seq, entry in self.pending.items() if entry.due_at <= now]
        for seq in due[:batch]:
            message = self.stream.get(seq)
            assert message is not None  # _sweep dropped the expired ones
            entry = self.pending[seq]
            entry.num_delivered += 1
            entry.due_at = now + self._wait_after(entry.num_delivered)
            out.append((message, entry.num_delivered))
        stream = self.stream
        limit = self.config.max_ack_pending
        seq = max(self.cursor + 1, stream.first_seq)
        while (
            len(out) < batch
            and seq <= stream.last_seq
            and (limit == -1 or len(self.pending) < limit)
        ):
            message = stream.get(seq)
            self.cursor = seq
            if message is not None and self._wants(message.subject):
                self.pending[seq] = _Pending(1, now + self._wait_after(1))
                out.append((message, 1))
            seq += 1
        return out

    def next_due(self, now: float) -> float | None:
        """The earliest future time a pending message becomes due, if any."""
        times = [entry.due_at for entry in self.pending.values() if entry.due_at > now]
        return min(times) if times else None

    def ack(self, seq: int) -> None:
        if self.pending.pop(seq, None) is not None:
            self.stream.signal.fire()  # frees a max_ack_pending slot

    term = ack  # both end the message's life on this consumer for good

    def nak(self, seq: int, now: float, delay: float | None) -> None:
        entry = self.pending.get(seq)
        if entry is not None:
            entry.due_at = now + max(delay or 0.0, 0.0)
            self.stream.signal.fire()

    def in_progress(self, seq: int, now: float) -> None:
        entry = self.pending.get(seq)
        if entry is not None:
            entry.due_at = now + self._wait_after(entry.num_delivered)

    def waiting(self, now: float) -> int:
        """Stored messages this consumer has not delivered yet (JetStream's num_pending)."""
        self._sweep(now)
        stream = self.stream
        waiting = 0
        for seq in range(max(self.cursor + 1, stream.first_seq), stream.last_seq + 1):
            message = stream.get(seq)
            if message is not None and self._wants(message.subject):
                waiting += 1
        return waiting

    def info(self, now: float) -> ConsumerInfo:
        waiting = self.waiting(now)
        stream = self.stream
        return ConsumerInfo(
            stream=stream.config.name,
            config=self.config,
            num_pending=waiting,
            num_ack_pending=len(self.pending),
            num_redelivered=sum(1 for entry in self.pending.values() if entry.num_delivered > 1),
        )


def streams_overlapping(
    streams: Mapping[str, StreamState], config: StreamConfig, *, system: bool = False
) -> str | None:
    """Describe the first overlap between ``config`` and another stream, if any.

    Streams behind buckets (``system``) are checked only against each other: in
    memory a user stream may capture ``>`` (a benchmark's catch-all) beside them,
    which JetStream would refuse (MemoryBackbone routes ``$KV.`` publishes to the
    bucket before looking at other streams).
    """
    for name, other in streams.items():
        if name == config.name or other.system != system:
            continue
        for subject in config.subjects:
            for existing in other.config.subjects:
                if subjects_overlap(subject, existing):
                    return (
                        f"stream {config.name!r} subject {subject!r} overlaps subject "
                        f"{existing!r} of stream {name!r}; a subject can belong to one "
                        "stream only"
                    )
    return None


class MemoryMessage:
    """One delivery from a MemoryBackbone consumer (satisfies the ``Message`` protocol).

    Acks address the message by stream sequence, as JetStream's do: any delivery's
    handle acts on the message while it is pending and is a no-op afterwards.
    """

    __slots__ = ("_clock", "_consumer", "_message", "_num_delivered", "_stored_at")

    def __init__(
        self, consumer: ConsumerState, message: StoredMessage, num_delivered: int, clock: Clock
    ) -> None:
        self._consumer = consumer
        self._message = message
        self._num_delivered = num_delivered
        self._clock = clock
        self._stored_at = consumer.stream.stored_at(message.seq)

    def __repr__(self) -> str:
        return (
            f"<MemoryMessage {self._message.stream}#{self._message.seq} "
            f"{self._message.subject!r} delivery {self._num_delivered}>"
        )

    @property
    def subject(self) -> str:
        return self._message.subject

    @property
    def data(self) -> bytes:
        return self._message.data

    @property
    def headers(self) -> Mapping[str, str]:
        return MappingProxyType(self._message.headers)

    @property
    def stream(self) -> str:
        return self._message.stream

    @property
    def seq(self) -> int:
        return self._message.seq

    @property
    def num_delivered(self) -> int:
        return self._num_delivered

    @property
    def pending(self) -> int:
        """Counted when asked (JetStream stamps it at delivery): O(messages not yet delivered)."""
        return self._consumer.waiting(self._clock.now())

    @property
    def msg_id(self) -> str | None:
        return self._message.headers.get(MSG_ID_HEADER)

    def age(self) -> float | None:
        """Seconds since the message was stored, on the backbone's clock."""
        stored_at = self._stored_at
        return None if stored_at is None else self._clock.now() - stored_at

    async def ack(self) -> None:
        await anyio.lowlevel.checkpoint()
        self._consumer.ack(self._message.seq)

    async def nak(self, delay: float | None = None) -> None:
        await anyio.lowlevel.checkpoint()
        self._consumer.nak(self._message.seq, self._clock.now(), delay)

    async def term(self, reason: str = "") -> None:
        await anyio.lowlevel.checkpoint()
        self._consumer.term(self._message.seq)

    async def in_progress(self) -> None:
        await anyio.lowlevel.checkpoint()
        self._consumer.in_progress(self._message.seq, self._clock.now())
