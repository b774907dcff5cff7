"""StreamWorker: runs one capability from a durable consumer on any Backbone.

It fetches no more messages than it has free slots (over-fetching is how other
runtimes turn AckWait into duplicates), turns each delivery into an Event,
invokes, asks ``decide_stream`` what to do and does it: ack, nak(delay), or
publish to the dead-letter stream and term. Works the same on MemoryBackbone
and on JetStream; every task it starts lives in its own task group.

Attempts are counted here, from the delivery count, against the capability's
``max_attempts``; the consumer's own MaxDeliver is unlimited. A delivery that
comes after the last attempt means earlier deliveries never finished (their
host died holding them): it is answered from the idempotency store if an
earlier one did finish, else dead-lettered as ``deliveries_exhausted``, never
run again. With MaxDeliver at the server equal to the attempts, the server
would drop such a message silently once the last delivery died, and no live
process would be there to dead-letter it.

One heartbeat task per worker sends in-progress acks, every quarter AckWait,
for each call that has run at least that long, so the server never redelivers
work that is still running.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.lowlevel
import msgspec

from thaw._errors import BackboneError, BatchInvalid, DeliveriesExhausted
from thaw._event import Event, Ok, Outcome, Reject
from thaw._headers import DEAD_LETTER_BODY_OMITTED, TRACEPARENT_HEADER, TRACESTATE_HEADER
from thaw._trace import SpanKind, Tracer, event_trace, log_fields
from thaw.backbone._contract import Backbone, ConsumerConfig, Message
from thaw.backbone._rules import MessageTooLarge
from thaw.decisions._delivery import (
    Ack,
    DeadLetter,
    Nak,
    StreamAction,
    dead_letter_headers,
    dead_letter_subject,
    decide_stream,
)
from thaw.declarations._batches import BATCH_HEADER, BatchRecorder, ChildRef, parse_child
from thaw.declarations._changes import Shaper
from thaw.host._identity import stream_event_id
from thaw.host._provision import dead_letter_stream_config
from thaw.host._retention import ensure_stream
from thaw.invocation._accounting import trigger_tag
from thaw.invocation._budget import RetryBudget
from thaw.invocation._shape import CapabilityInvoker

__all__ = ["StreamWorker", "WorkerStatistics", "ensure_dead_letter_stream", "trigger_kind"]

log = logging.getLogger("thaw.worker")
DEFAULT_SLOTS = 256
FETCH_PAUSE_MIN = 0.1  # seconds before the first retry of a failed fetch
FETCH_PAUSE_MAX = 5.0
CHILD_RECORD_RETRY = 0.5  # seconds before a child whose outcome could not be recorded reruns
PENDING_EVERY = 1.0  # seconds between looks at the consumer's lag while it is busy
# In a run of calls that never suspend, a lane lets the loop run once per this many
# calls: the acks so far go out and the next pull is sent while the run goes on
# (JetStream works on them meanwhile), and other tasks on the loop are not starved.
YIELD_EVERY = 64


class WorkerStatistics(msgspec.Struct, frozen=True):
    acked: int
    naked: int
    dead_lettered: int
    # The consumer's lag: messages not yet delivered, as of the last fetch (-1: none yet).
    pending: int = -1


def trigger_kind(trigger: object) -> str:
    """The accounting's trigger kind of what a consumer serves (``stream`` when unknown):
    the trigger Struct's tag (``stream``, ``schedule``, ``kv``, ``objects``)."""
    tag = trigger_tag(trigger)
    return tag if tag in ("stream", "schedule", "kv", "objects") else "stream"


async def ensure_dead_letter_stream(backbone: Backbone) -> None:
    """Create or confirm ``THAW_DLQ`` as provisioning does (with its age limit)."""
    await ensure_stream(backbone, dead_letter_stream_config())


class StreamWorker:
    """Consume ``stream``/``durable`` and invoke ``capability`` for each message."""

    def __init__(
        self,
        invoker: CapabilityInvoker,
        backbone: Backbone,
        capability: str,
        *,
        stream: str,
        consumer: ConsumerConfig,
        slots: int | None = None,
        fetch_timeout: float = 1.0,
        budget: RetryBudget | None = None,
        shape: Shaper | None = None,
        tracer: Tracer | None = None,
        trigger: str = "stream",
    ) -> None:
        self._tracer = tracer  # None: no consume spans (tracing off)
        self._shape = shape  # kv/objects triggers: the delivery -> the input (None: skip it)
        self._invoker = invoker
        self._backbone = backbone
        self._batches = BatchRecorder(backbone)  # fan-out children this worker runs
        # A host's capability as this trigger kind reaches it (accounted so), else the plain one.
        via = getattr(invoker, "capability_via", None)
        self._capability = (
            via(capability, trigger) if via is not None else invoker.capability(capability)
        )
        # Message age and completion go to the host's account of the capability (if any).
        accounting = getattr(invoker, "accounting", None)
        self._account = accounting.account(capability) if accounting is not None else None
        self._stream = stream
        self._consumer = consumer
        limit = self._capability.spec.policy.concurrency
        # Without a concurrency limit, up to DEFAULT_SLOTS calls run at once (never more than
        # the consumer's MaxAckPending): big fetches are what make a busy stream fast, and a
        # fetched message always starts at once (a lane per slot), so AckWait is never spent
        # waiting in a local queue.
        pending = consumer.max_ack_pending  # -1: unlimited
        self._slots = (
            slots or limit or (min(DEFAULT_SLOTS, pending) if pending > 0 else DEFAULT_SLOTS)
        )
        self._fetch_timeout = fetch_timeout
        self._budget = budget
        self._max_attempts = self._capability.spec.policy.retry.max_attempts
        # A call that may outlive half an AckWait is watched by the heartbeat: one task
        # that sends in-progress acks for every such call in flight (bounded by the
        # timeout; a wait for a busy idempotency claim is bounded by it too).
        timeout = self._capability.spec.policy.timeout
        # Beats every quarter AckWait for calls that have run at least that long: a call's
        # first beat comes within half an AckWait of its delivery, later ones a quarter apart.
        self._heartbeat = consumer.ack_wait / 4 if timeout >= consumer.ack_wait / 2 else None
        self._running: dict[int, tuple[float, Message]] = {}  # id -> (started, message)
        self._acked = self._naked = self._dead = 0
        self._pending = -1
        self._pending_at = -PENDING_EVERY
        self._stopping = False
        self._stopped = anyio.Event()
        self._fetching = anyio.CancelScope()  # around the parked fetch (stop interrupts it)

    def stop(self, *, interrupt_fetch: bool = False) -> None:
        """Stop fetching; calls in flight finish (see ``wait_stopped``).

        ``interrupt_fetch`` also ends a parked fetch at once, for a backbone whose fetch
        loses nothing when cancelled (MemoryBackbone: on a FakeClock it would otherwise
        wait for a time that never comes); a JetStream pull is left to time out.
        """
        self._stopping = True
        if interrupt_fetch:
            self._fetching.cancel()

    async def wait_stopped(self) -> None:
        """Return once the worker has stopped fetching and its calls have finished."""
        await self._stopped.wait()

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(self._acked, self._naked, self._dead, self._pending)

    async def run(self) -> None:
        """Consume until cancelled."""
        await self._pump(stop_when_idle=False)

    async def run_until_idle(self) -> None:
        """Consume until a fetch comes back empty and nothing is in flight."""
        await self._pump(stop_when_idle=True)

    async def _pump(self, *, stop_when_idle: bool) -> None:
        try:
            async with anyio.create_task_group() as group:
                if self._heartbeat is not None:
                    group.start_soon(self._beat, self._heartbeat)
                lanes = _Lanes(group, self.handle, self._slots)
                await self._fetch_loop(lanes, stop_when_idle=stop_when_idle)
                while lanes.busy:  # stopped or idle: let the calls in flight finish
                    await lanes.wait_change()
                group.cancel_scope.cancel()  # only parked lanes are left
        finally:
            self._stopped.set()

    async def _fetch_loop(self, lanes: _Lanes, *, stop_when_idle: bool) -> None:
        pause = 0.0  # after a failed fetch: backs off up to FETCH_PAUSE_MAX, reset by success
        while not self._stopping:
            if lanes.free == 0:
                await lanes.wait_change()
                continue
            wanted = lanes.free  # never more than can start at once
            try:
                messages: Sequence[Message] = []
                with self._fetching:
                    messages = await self._backbone.fetch(
                        self._stream,
                        self._consumer.durable,
                        batch=wanted,
                        timeout=0.0 if stop_when_idle else self._fetch_timeout,
                    )
                if self._fetching.cancel_called:  # stop(interrupt_fetch=True)
                    break
                self._fetching = anyio.CancelScope()  # a scope is entered only once
            except BackboneError as exc:
                # A node down, a leader election, a consumer being re-created: the worker
                # outlives it and keeps trying, loudly, instead of stopping the host.
                pause = min(max(pause * 2, FETCH_PAUSE_MIN), FETCH_PAUSE_MAX)
                log.warning(
                    "fetch from %s/%s failed (%s: %s); trying again in %.1fs",
                    self._stream,
                    self._consumer.durable,
                    exc.code,
                    exc,
                    pause,
                )
                await anyio.sleep(pause)  # a back-off, not a wait for a condition
                continue
            pause = 0.0
            self._note_pending(messages, wanted)
            if not messages and stop_when_idle:
                if lanes.busy == 0:
                    return
                await lanes.wait_change()  # something is in flight: wait for it to finish
                continue
            lanes.submit(messages)

    def _note_pending(self, messages: Sequence[Message], wanted: int) -> None:
        """The consumer's lag: what the last delivery says it still holds.

        Looked at when a fetch comes back short (the backlog is ending) or once per
        PENDING_EVERY seconds: free on JetStream (it is in the ack subject), a count
        on MemoryBackbone. An empty fetch, sized to free slots, means nothing waits.
        """
        if not messages:
            self._pending = 0
            return
        now = time.monotonic()
        if len(messages) < wanted or now - self._pending_at >= PENDING_EVERY:
            self._pending = messages[-1].pending
            self._pending_at = now

    async def handle(self, message: Message) -> StreamAction:
        """Invoke for one delivery and perform the decided action."""
        headers = message.headers
        data = message.data
        if self._shape is not None:
            shaped = self._shape(message)
            if shaped is None:  # not for this capability (an object deletion, say)
                skipped = Ack()
                await self._perform(message, skipped, None)
                return skipped
            data = shaped
        traceparent = headers.get(TRACEPARENT_HEADER, "")
        event_headers = dict(headers)
        if not traceparent and message.subject.startswith("$O."):
            traceparent = _object_trace(message.data, event_headers)
        event = Event(
            id=stream_event_id(message),
            data=data,
            subject=message.subject,
            headers=event_headers,
            attempt=message.num_delivered,
            traceparent=traceparent,
        )
        if self._tracer is not None:
            return await self._consume_traced(message, event)
        return await self._run(message, event)

    async def _consume_traced(self, message: Message, event: Event) -> StreamAction:
        """The delivery as a CONSUMER span: the producer's context is its parent and its
        link, so every attempt (a span each) links back to the one publish."""
        assert self._tracer is not None
        producer = event_trace(event)
        span = self._tracer.start_span(
            f"process {message.subject}",
            kind=SpanKind.CONSUMER,
            parent=producer,
            links=(producer,) if producer is not None else (),
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": message.subject,
                "messaging.consumer.group.name": self._consumer.durable or "",
                "messaging.message.id": event.id,
                "messaging.message.body.size": len(message.data),
                "thaw.delivery.attempt": message.num_delivered,
                "thaw.stream": message.stream,
                "thaw.stream.seq": message.seq,
            },
        )
        context = span.context
        headers = dict(event.headers)
        context.write(headers)
        traced = msgspec.structs.replace(event, traceparent=context.traceparent, headers=headers)
        try:
            action = await self._run(message, traced)
        except BaseException as exc:
            span.record_exception(exc)
            span.end()
            raise
        span.set_attribute("thaw.action", type(action).__name__.lower())
        if type(action) is DeadLetter:
            span.set_attribute("error.type", action.code)
            span.set_error(action.reason)
        span.end()
        return action

    async def _run(self, message: Message, event: Event) -> StreamAction:
        headers = message.headers
        if self._account is not None:
            age = _age(message)
            if age is not None:
                self._account.age.observe(age)
        if self._budget is not None and message.num_delivered == 1:
            self._budget.record_first_attempt()
        child = None
        if BATCH_HEADER in headers:  # a fan-out child (one lookup for every other message)
            try:
                child = parse_child(headers)
                await self._batches.check(child)
            except BatchInvalid as exc:  # hostile batch headers: dead-lettered unrun
                refused: StreamAction = DeadLetter(exc.code, exc.message)
                await self._perform(message, refused, event)
                return refused
            except BackboneError as exc:  # the batch could not be read: try again later
                log.warning("could not read batch of %s: %s", event.id, exc)
                refused = Nak(CHILD_RECORD_RETRY)
                await self._perform(message, refused, event)
                return refused
        outcome = None
        if message.num_delivered > self._max_attempts:
            action = await self._exhausted(message, event)
        else:
            if self._heartbeat is None:
                outcome = await self._capability(event)
            else:
                running = self._running
                running[id(message)] = (time.monotonic(), message)
                try:
                    outcome = await self._capability(event)
                finally:
                    del running[id(message)]
            action = decide_stream(
                outcome, delivery_count=message.num_delivered, max_deliver=self._max_attempts
            )
        if child is not None and type(action) is not Nak:
            action = await self._record_child(child, action, outcome, event)
        await self._perform(message, action, event)
        return action

    async def _record_child(
        self, child: ChildRef, action: StreamAction, outcome: Outcome | None, event: Event
    ) -> StreamAction:
        """Record a fan-out child's final outcome in its batch before the ack or dead
        letter (``thaw.declarations._batches``); a failed record is retried, never lost."""
        if outcome is None:  # a delivery after the last attempt: the stored answer
            outcome = await self._capability.peek_settled(event)
        ok = type(action) is Ack
        result = outcome.data if ok and type(outcome) is Ok else b""
        code = action.code if type(action) is DeadLetter else ""
        try:
            await self._batches.record(child, ok=ok, data=result, code=code)
        except BatchInvalid as exc:
            return DeadLetter(exc.code, exc.message)
        except BackboneError as exc:  # not recorded yet: the redelivery records it
            log.warning("could not record %s in batch %s: %s", event.id, child.batch, exc)
            return Nak(CHILD_RECORD_RETRY)
        return action

    async def _exhausted(self, message: Message, event: Event) -> StreamAction:
        """A delivery after the last attempt: the stored answer, else a dead letter."""
        settled = await self._capability.peek_settled(event)
        if type(settled) is Ok:
            return Ack()
        if settled is not None:
            assert type(settled) is Reject
            return DeadLetter(settled.code, settled.reason)
        attempts = self._max_attempts
        return DeadLetter(
            DeliveriesExhausted.code,
            f"delivery {message.num_delivered} of a capability allowing {attempts} attempt"
            f"{'s' if attempts != 1 else ''}: the earlier deliveries never finished (the host "
            "running them died or lost the broker while it held the message)",
        )

    async def _perform(self, message: Message, action: StreamAction, event: Event | None) -> None:
        """Ack, nak or dead-letter ``message``; a backbone failure is logged, not raised."""
        try:
            if type(action) is Ack:
                await message.ack()
                self._acked += 1
                if event is not None:  # None: a delivery not for this capability, skipped
                    self._completed(message)
            elif type(action) is Nak:
                delay = action.delay
                if self._budget is not None:
                    delay = self._budget.retry_delay(delay)
                await message.nak(delay)
                self._naked += 1
            else:
                assert type(action) is DeadLetter and event is not None
                await self._dead_letter(message, action, event)
                self._completed(message)
        except BackboneError as exc:
            # The server may never have seen the action (connection lost, node down): it
            # redelivers after AckWait, where idempotency answers the duplicate. One lost
            # action must not stop the worker.
            log.warning(
                "could not %s %s seq %d for %s (redelivered after AckWait): %s",
                type(action).__name__.lower(),
                message.stream,
                message.seq,
                self._capability.spec.name,
                exc,
            )

    def _completed(self, message: Message) -> None:
        """The message's final action (ack, dead letter) is done: publish -> now, once."""
        if self._account is not None:
            age = _age(message)
            if age is not None:
                self._account.completion.observe(age)

    async def _beat(self, interval: float) -> None:
        """Every ``interval``: an in-progress ack for each call running that long."""
        while True:
            await anyio.sleep(interval)  # the heartbeat's period, not a wait for a condition
            due = time.monotonic() - interval
            for started, message in list(self._running.values()):
                if started > due:
                    continue
                try:
                    await message.in_progress()
                except BackboneError as exc:  # the next beat may get through
                    log.warning("in-progress ack for seq %d failed: %s", message.seq, exc)

    async def _dead_letter(self, message: Message, action: DeadLetter, event: Event) -> None:
        spec = self._capability.spec
        app = self._invoker.app.name
        headers = dead_letter_headers(
            action,
            app=app,
            capability=spec.name,
            subject=message.subject,
            stream=message.stream,
            seq=message.seq,
            attempts=message.num_delivered,
            traceparent=event.traceparent,
            event_id=event.id,
            original=message.headers,
        )
        # The msg id makes a repeated dead-lettering of the same delivery idempotent.
        subject, msg_id = dead_letter_subject(app, spec.name), f"dlq/{message.stream}/{message.seq}"
        try:
            await self._backbone.publish(subject, message.data, headers=headers, msg_id=msg_id)
        except MessageTooLarge:
            # The message with Thaw's headers no longer fits: a dead letter without the
            # body and the foreign headers, pointing at the original (stream and seq),
            # rather than a dead letter that can never be written.
            kept = {k: v for k, v in headers.items() if k.startswith("Thaw-")}
            kept[DEAD_LETTER_BODY_OMITTED] = str(len(message.data))
            await self._backbone.publish(subject, b"", headers=kept, msg_id=msg_id)
        await message.term(action.code)
        self._dead += 1
        log.warning(
            "dead-lettered %s seq %d for %s: %s: %s",
            message.stream,
            message.seq,
            spec.name,
            action.code,
            action.reason,
            extra=log_fields(spec.name, event),
        )


class _Lanes:
    """At most ``slots`` long-lived tasks running deliveries, one after another each.

    A task per message costs more than a no-op function. Lanes are started on
    demand (up to ``slots``) and park when the queue is empty. A lane that takes
    a message first makes sure one more lane is on its way while messages are
    still queued, so if its call suspends, the next message starts at once on
    another lane (a chain, at most one lane waking at a time); if its calls do
    not suspend, it runs the batch back to back (one socket write for all the
    acks) and the lane it woke finds nothing and parks. ``busy`` (queued plus
    running) never exceeds ``slots``, so a free lane always exists for a queued
    message.
    """

    __slots__ = (
        "_changed",
        "_group",
        "_handle",
        "_idle",
        "_lanes",
        "_queue",
        "_slots",
        "_waking",
        "busy",
    )

    def __init__(
        self,
        group: anyio.abc.TaskGroup,
        handle: Callable[[Message], Awaitable[object]],
        slots: int,
    ) -> None:
        self._group = group
        self._handle = handle
        self._slots = slots
        self._queue: deque[Message] = deque()
        self._idle: list[anyio.Event] = []
        self._lanes = 0
        self._waking = 0  # lanes woken or started that have not run yet
        self._changed: anyio.Event | None = None
        self.busy = 0

    @property
    def free(self) -> int:
        return self._slots - self.busy

    def submit(self, messages: Sequence[Message]) -> None:
        assert len(messages) <= self.free, "fetched more than there are free slots"
        self._queue.extend(messages)
        self.busy += len(messages)
        self._wake()

    def _wake(self) -> None:
        if self._waking or not self._queue:
            return
        if self._idle:
            self._idle.pop().set()
        elif self._lanes < self._slots:
            self._lanes += 1
            self._group.start_soon(self._run)
        else:  # every lane is busy; one of them takes the message when it finishes
            return
        self._waking += 1

    async def wait_change(self) -> None:
        """Wait until a delivery finishes (``busy`` drops)."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    async def _run(self) -> None:
        queue = self._queue
        done = 0
        while True:
            self._waking -= 1
            while queue:
                done += 1
                if done % YIELD_EVERY == 0:  # see YIELD_EVERY
                    await anyio.lowlevel.checkpoint()
                    if not queue:
                        break
                message = queue.popleft()
                self._wake()  # someone for the next message, should this call suspend
                try:
                    await self._handle(message)
                finally:
                    self.busy -= 1
                    changed, self._changed = self._changed, None
                    if changed is not None:
                        changed.set()
            wake = anyio.Event()
            self._idle.append(wake)
            await wake.wait()


def _age(message: Message) -> float | None:
    """Seconds since the message was published, if its backbone knows (``Message.age``;
    a Message class from elsewhere may not have it)."""
    age = getattr(message, "age", None)
    if age is None:
        return None
    seconds: float | None = age()
    return None if seconds is None else max(seconds, 0.0)


class _MetaHeaders(msgspec.Struct):
    """The ``headers`` of an object's info (NATS layout: name -> list of values)."""

    headers: dict[str, list[str] | str] | None = None


_meta_headers = msgspec.json.Decoder(_MetaHeaders).decode


def _object_trace(data: bytes, headers: dict[str, str]) -> str:
    """The traceparent an object's info carries (its writer's trace); its tracestate goes
    into ``headers``. "" when there is none or the info is unreadable."""
    try:
        found = _meta_headers(data).headers
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    if not found:
        return ""

    def first(name: str) -> str:
        value = found.get(name) or ""
        return value if isinstance(value, str) else (value[0] if value else "")

    state = first(TRACESTATE_HEADER)
    if state:
        headers.setdefault(TRACESTATE_HEADER, state)
    return first(TRACEPARENT_HEADER)
