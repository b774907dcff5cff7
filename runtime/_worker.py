"""StreamWorker: runs one capability from a durable consumer on any Backbone.

It fetches no more messages than it has free slots (over-fetching is how other
runtimes turn AckWait into duplicates), turns each delivery into an Event,
invokes, asks ``decide_stream`` what to do and does it: ack, nak(delay), or
publish to the dead-letter stream and term. Works the same on MemoryBackbone
and on JetStream; every task it starts lives in its own task group.
"""

from __future__ import annotations

import logging

import anyio
import msgspec

from ._backbone import Backbone, ConsumerConfig, Message, StreamConfig
from ._budget import RetryBudget
from ._context import TRACEPARENT_HEADER
from ._decisions import (
    DEAD_LETTER_STREAM,
    DEAD_LETTER_SUBJECTS,
    EVENT_ID_HEADER,
    Ack,
    DeadLetter,
    Nak,
    StreamAction,
    dead_letter_headers,
    dead_letter_subject,
    decide_stream,
)
from ._event import Event, Outcome
from ._invoker import Invoker

__all__ = ["StreamWorker", "WorkerStatistics", "ensure_dead_letter_stream"]

log = logging.getLogger("thaw.worker")


class WorkerStatistics(msgspec.Struct, frozen=True):
    acked: int
    naked: int
    dead_lettered: int


async def ensure_dead_letter_stream(backbone: Backbone) -> None:
    await backbone.add_stream(
        StreamConfig(name=DEAD_LETTER_STREAM, subjects=DEAD_LETTER_SUBJECTS, duplicate_window=120.0)
    )


class StreamWorker:
    """Consume ``stream``/``durable`` and invoke ``capability`` for each message."""

    def __init__(
        self,
        invoker: Invoker,
        backbone: Backbone,
        capability: str,
        *,
        stream: str,
        consumer: ConsumerConfig,
        slots: int | None = None,
        fetch_timeout: float = 1.0,
        budget: RetryBudget | None = None,
    ) -> None:
        self._invoker = invoker
        self._backbone = backbone
        self._capability = invoker.capability(capability)
        self._stream = stream
        self._consumer = consumer
        limit = self._capability.spec.policy.concurrency
        self._slots = slots or limit or 16
        self._fetch_timeout = fetch_timeout
        self._budget = budget
        # A call that may outlive AckWait gets in-progress acks every half AckWait, so the
        # server never redelivers work that is still running (bounded by the timeout).
        timeout = self._capability.spec.policy.timeout
        self._heartbeat = consumer.ack_wait / 2 if timeout >= consumer.ack_wait / 2 else None
        self._acked = self._naked = self._dead = 0
        self._stopping = False
        self._stopped = anyio.Event()

    def stop(self) -> None:
        """Stop fetching; calls in flight finish (see ``wait_stopped``)."""
        self._stopping = True

    async def wait_stopped(self) -> None:
        """Return once the worker has stopped fetching and its calls have finished."""
        await self._stopped.wait()

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(self._acked, self._naked, self._dead)

    async def run(self) -> None:
        """Consume until cancelled."""
        await self._pump(stop_when_idle=False)

    async def run_until_idle(self) -> None:
        """Consume until a fetch comes back empty and nothing is in flight."""
        await self._pump(stop_when_idle=True)

    async def _pump(self, *, stop_when_idle: bool) -> None:
        free = anyio.Semaphore(self._slots)
        try:
            async with anyio.create_task_group() as group:
                await self._fetch_loop(group, free, stop_when_idle=stop_when_idle)
        finally:
            self._stopped.set()

    async def _fetch_loop(
        self, group: anyio.abc.TaskGroup, free: anyio.Semaphore, *, stop_when_idle: bool
    ) -> None:
        while not self._stopping:
            if free.value == 0:
                await free.acquire()  # wait for a slot, then give it back to count it
                free.release()
            wanted = free.value
            messages = await self._backbone.fetch(
                self._stream,
                self._consumer.durable,
                batch=wanted,
                timeout=0.0 if stop_when_idle else self._fetch_timeout,
            )
            if not messages and stop_when_idle:
                if free.value == self._slots:
                    return
                await free.acquire()  # something is in flight: wait for it to finish
                free.release()
                continue
            for message in messages:
                await free.acquire()
                group.start_soon(self._handle_and_release, message, free)

    async def _handle_and_release(self, message: Message, free: anyio.Semaphore) -> None:
        try:
            await self.handle(message)
        finally:
            free.release()

    async def handle(self, message: Message) -> StreamAction:
        """Invoke for one delivery and perform the decided action."""
        headers = message.headers
        event = Event(
            id=headers.get(EVENT_ID_HEADER) or message.msg_id or f"{message.stream}.{message.seq}",
            data=message.data,
            subject=message.subject,
            headers=dict(headers),
            attempt=message.num_delivered,
            traceparent=headers.get(TRACEPARENT_HEADER, ""),
        )
        if self._budget is not None and message.num_delivered == 1:
            self._budget.record_first_attempt()
        if self._heartbeat is None:
            outcome = await self._capability(event)
        else:
            outcome = await self._invoke_with_heartbeat(message, event, self._heartbeat)
        action = decide_stream(
            outcome,
            delivery_count=message.num_delivered,
            max_deliver=self._consumer.max_deliver,
        )
        if type(action) is Ack:
            await message.ack()
            self._acked += 1
        elif type(action) is Nak:
            delay = action.delay
            if self._budget is not None:
                delay = self._budget.retry_delay(delay)
            await message.nak(delay)
            self._naked += 1
        else:
            assert type(action) is DeadLetter
            await self._dead_letter(message, action, event)
        return action

    async def _invoke_with_heartbeat(
        self, message: Message, event: Event, interval: float
    ) -> Outcome:
        result: list[Outcome] = []
        async with anyio.create_task_group() as group:

            async def beat() -> None:
                while True:
                    await anyio.sleep(interval)
                    await message.in_progress()

            group.start_soon(beat)
            try:
                result.append(await self._capability(event))
            finally:
                group.cancel_scope.cancel()
        return result[0]

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
        )
        # The msg id makes a repeated dead-lettering of the same delivery idempotent.
        await self._backbone.publish(
            dead_letter_subject(app, spec.name),
            message.data,
            headers=headers,
            msg_id=f"dlq/{message.stream}/{message.seq}",
        )
        await message.term(action.code)
        self._dead += 1
        log.warning(
            "dead-lettered %s seq %d for %s: %s: %s",
            message.stream,
            message.seq,
            spec.name,
            action.code,
            action.reason,
        )
