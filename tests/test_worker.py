"""StreamWorker on MemoryBackbone: ack, nak with backoff, dead letters, idempotent redelivery."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from thaw import App, Backoff, Context, Idempotency, Rejected, RetryPolicy
from thaw.host._worker import ensure_dead_letter_stream
from thaw.lowlevel import (
    DEAD_LETTER_STREAM,
    BackboneError,
    ConsumerConfig,
    Invoker,
    StreamConfig,
    StreamWorker,
)
from thaw.testing import FakeClock, MemoryBackbone

pytestmark = pytest.mark.anyio


class Job(msgspec.Struct, frozen=True):
    name: str


def job_app(calls: list[tuple[str, int]]) -> App:
    app = App("jobs")

    @app.capability(
        retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=10, jitter=0)),
        idempotency=Idempotency(key=lambda event, job: job.name),
    )
    async def work(job: Job, ctx: Context) -> str:
        calls.append((job.name, ctx.attempt))
        if job.name == "reject":
            raise Rejected("this job can never work", code="job_invalid")
        if job.name == "flaky" and ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        if job.name == "broken":
            raise ConnectionError("always fails")
        await ctx.publish("done.work", {"name": job.name})
        return job.name

    return app


async def setup(clock: FakeClock) -> tuple[MemoryBackbone, StreamWorker, list[tuple[str, int]]]:
    backbone = MemoryBackbone(clock=clock)
    await backbone.add_stream(StreamConfig(name="JOBS", subjects=("jobs.>",)))
    await backbone.add_stream(StreamConfig(name="DONE", subjects=("done.>",)))
    await ensure_dead_letter_stream(backbone)
    consumer = ConsumerConfig(durable="jobs-work", ack_wait=30, max_deliver=3)
    await backbone.add_consumer("JOBS", consumer)
    calls: list[tuple[str, int]] = []
    invoker = Invoker(job_app(calls), backbone=backbone, clock=clock, rand=lambda: 0.0)
    worker = StreamWorker(invoker, backbone, "work", stream="JOBS", consumer=consumer)
    return backbone, worker, calls


async def publish(backbone: MemoryBackbone, name: str, msg_id: str | None = None) -> None:
    await backbone.publish("jobs.new", msgspec.json.encode({"name": name}), msg_id=msg_id)


async def test_ok_is_acked_and_output_published() -> None:
    clock = FakeClock()
    backbone, worker, calls = await setup(clock)
    await publish(backbone, "a")
    await worker.run_until_idle()
    assert calls == [("a", 1)]
    assert worker.statistics().acked == 1
    info = await backbone.consumer_info("JOBS", "jobs-work")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert (await backbone.stream_info("DONE")).messages == 1


async def test_retry_naks_with_backoff_and_succeeds_later() -> None:
    clock = FakeClock()
    backbone, worker, calls = await setup(clock)
    await publish(backbone, "flaky")
    await worker.run_until_idle()
    assert calls == [("flaky", 1)]
    assert worker.statistics().naked == 1
    clock.advance(9.9)
    await worker.run_until_idle()
    assert calls == [("flaky", 1)]  # backoff not over yet
    clock.advance(0.2)
    await worker.run_until_idle()
    assert calls == [("flaky", 1), ("flaky", 2)]
    assert worker.statistics().acked == 1


async def test_reject_goes_to_dead_letter_stream_with_headers() -> None:
    clock = FakeClock()
    backbone, worker, calls = await setup(clock)
    await publish(backbone, "reject")
    await worker.run_until_idle()
    assert worker.statistics().dead_lettered == 1
    dead = await backbone.get_message(DEAD_LETTER_STREAM, 1)
    assert dead.subject == "thaw.dlq.jobs.work"
    assert dead.data == b'{"name":"reject"}'
    assert dead.headers["Thaw-Error-Code"] == "job_invalid"
    assert dead.headers["Thaw-Original-Stream"] == "JOBS"
    assert dead.headers["Thaw-Original-Seq"] == "1"
    assert dead.headers["Thaw-Original-Subject"] == "jobs.new"
    assert dead.headers["Thaw-Attempts"] == "1"
    clock.advance(100)
    await worker.run_until_idle()
    assert calls == [("reject", 1)]  # termed: never redelivered


async def test_exhausted_attempts_go_to_dead_letter() -> None:
    clock = FakeClock()
    backbone, worker, calls = await setup(clock)
    await publish(backbone, "broken")
    for _ in range(5):
        await worker.run_until_idle()
        clock.advance(100)
    assert calls == [("broken", 1), ("broken", 2), ("broken", 3)]
    assert worker.statistics().dead_lettered == 1
    dead = await backbone.get_message(DEAD_LETTER_STREAM, 1)
    assert dead.headers["Thaw-Error-Code"] == "handler_error"
    assert dead.headers["Thaw-Attempts"] == "3"
    assert "gave up after 3 attempts" in dead.headers["Thaw-Error-Message"]


async def test_duplicate_publish_and_redelivered_duplicate_run_once() -> None:
    clock = FakeClock()
    backbone, worker, calls = await setup(clock)
    await publish(backbone, "a", msg_id="m-1")
    await publish(backbone, "a", msg_id="m-1")  # dropped by the duplicate window
    await publish(backbone, "a", msg_id="m-2")  # a second message, same idempotency key
    await worker.run_until_idle()
    assert calls == [("a", 1)]
    assert worker.statistics().acked == 2
    assert (await backbone.stream_info("DONE")).messages == 1


async def test_many_messages_with_bounded_slots() -> None:
    clock = FakeClock()
    backbone, _, calls = await setup(clock)
    for i in range(50):
        await publish(backbone, f"job-{i}")
    invoker = Invoker(job_app(calls), backbone=backbone, clock=clock)
    consumer = ConsumerConfig(durable="jobs-work", ack_wait=30, max_deliver=3)
    worker = StreamWorker(invoker, backbone, "work", stream="JOBS", consumer=consumer, slots=4)
    await worker.run_until_idle()
    assert sorted(name for name, _ in calls) == sorted(f"job-{i}" for i in range(50))
    assert worker.statistics().acked == 50


class RecordingMessage:
    """A delivery that records what the worker did with it (for the heartbeat test)."""

    def __init__(self, data: bytes, *, beats_wanted: int, seq: int = 1) -> None:
        self.subject = "jobs.new"
        self.data = data
        self.headers: dict[str, str] = {}
        self.stream = "JOBS"
        self.seq = seq
        self.num_delivered = 1
        self.pending = 0
        self.msg_id = f"m-{seq}"
        self.actions: list[str] = []
        self.beats_wanted = beats_wanted
        self.enough_beats = anyio.Event()

    async def ack(self) -> None:
        self.actions.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.actions.append(f"nak {delay}")

    async def term(self, reason: str = "") -> None:
        self.actions.append("term")

    async def in_progress(self) -> None:
        self.actions.append("in_progress")
        if self.actions.count("in_progress") >= self.beats_wanted:
            self.enough_beats.set()


class OneDelivery:
    """A backbone whose consumer delivers the given messages in one fetch, then nothing."""

    def __init__(self, *messages: RecordingMessage) -> None:
        self._messages = list(messages)

    async def fetch(
        self, stream: str, durable: str, *, batch: int = 1, timeout: float = 0.0
    ) -> list[RecordingMessage]:
        taken, self._messages = self._messages[:batch], self._messages[batch:]
        return taken


async def test_long_handler_sends_in_progress_until_done() -> None:
    message = RecordingMessage(b'{"name":"slow"}', beats_wanted=3)
    app = App("jobs")

    @app.capability(timeout=10)
    async def slow(job: Job) -> str:
        await message.enough_beats.wait()  # finishes only after three heartbeats
        return job.name

    consumer = ConsumerConfig(durable="slow", ack_wait=0.05)
    backbone = OneDelivery(message)
    worker = StreamWorker(Invoker(app), backbone, "slow", stream="JOBS", consumer=consumer)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        await worker.run_until_idle()  # the worker's one heartbeat task beats for the call
    assert message.actions == ["in_progress"] * 3 + ["ack"]


async def test_one_heartbeat_task_beats_for_every_long_call() -> None:
    messages = [RecordingMessage(b'{"name":"slow"}', beats_wanted=2, seq=n) for n in (1, 2, 3)]
    app = App("jobs")

    @app.capability(timeout=10)
    async def slow(job: Job, ctx: Context) -> str:
        seq = int(ctx.event.id.rsplit("-", 1)[1])
        await messages[seq - 1].enough_beats.wait()
        return job.name

    consumer = ConsumerConfig(durable="slow", ack_wait=0.05)
    backbone = OneDelivery(*messages)
    worker = StreamWorker(Invoker(app), backbone, "slow", stream="JOBS", consumer=consumer)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        await worker.run_until_idle()
    for message in messages:  # beaten while running, never after the ack
        assert message.actions[-1] == "ack"
        assert message.actions.count("in_progress") >= 2


async def test_short_handler_sends_no_heartbeat() -> None:
    message = RecordingMessage(b'{"name":"quick"}', beats_wanted=1)
    app = App("jobs")

    @app.capability(timeout=1)
    async def quick(job: Job) -> str:
        return job.name

    consumer = ConsumerConfig(durable="quick", ack_wait=30)
    worker = StreamWorker(Invoker(app), MemoryBackbone(), "quick", stream="JOBS", consumer=consumer)
    await worker.handle(message)  # type: ignore[arg-type]
    assert message.actions == ["ack"]


async def test_retry_budget_delays_retries_beyond_its_share() -> None:
    from thaw.invocation._budget import RetryBudget

    clock = FakeClock()
    budget = RetryBudget(ratio=0, min_per_second=0, burst=1, throttle_delay=60, clock=clock)
    app = App("jobs")

    @app.capability(retry=RetryPolicy(max_attempts=5, backoff=Backoff(initial=1, jitter=0)))
    async def failing(job: Job) -> None:
        raise ConnectionError("down")

    consumer = ConsumerConfig(durable="failing", ack_wait=30)
    worker = StreamWorker(
        Invoker(app, rand=lambda: 0.0),
        MemoryBackbone(),
        "failing",
        stream="JOBS",
        consumer=consumer,
        budget=budget,
    )
    first = RecordingMessage(b'{"name":"a"}', beats_wanted=1)
    second = RecordingMessage(b'{"name":"b"}', beats_wanted=1)
    await worker.handle(first)  # type: ignore[arg-type]
    await worker.handle(second)  # type: ignore[arg-type]
    assert first.actions == ["nak 1.0"]  # within the budget's burst
    assert second.actions == ["nak 60"]  # over budget: delayed, not dropped
    assert budget.statistics().first_attempts == 2


class FetchRecorder:
    """Forwards to a MemoryBackbone and records every fetch's batch size."""

    def __init__(self, inner: MemoryBackbone) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def fetch(self, stream: str, durable: str, *, batch: int = 1, timeout: float = 0.0):  # type: ignore[no-untyped-def]
        self.batches.append(batch)
        return await self.inner.fetch(stream, durable, batch=batch, timeout=timeout)


async def test_slow_handlers_run_concurrently_up_to_the_slots_and_never_more() -> None:
    backbone = MemoryBackbone()
    await backbone.add_stream(StreamConfig(name="JOBS", subjects=("jobs.>",)))
    consumer = ConsumerConfig(durable="slow", ack_wait=30)
    await backbone.add_consumer("JOBS", consumer)
    for i in range(10):
        await backbone.publish("jobs.new", msgspec.json.encode(Job(f"j{i}")))
    running = 0
    peak = 0
    four_running = anyio.Event()
    release = anyio.Event()
    app = App("jobs")

    @app.capability(timeout=10)
    async def slow(job: Job) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 4:
            four_running.set()
        await release.wait()
        running -= 1

    recorder = FetchRecorder(backbone)
    worker = StreamWorker(
        Invoker(app),
        recorder,  # type: ignore[arg-type]
        "slow",
        stream="JOBS",
        consumer=consumer,
        slots=4,
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run_until_idle)
            await four_running.wait()
            await anyio.wait_all_tasks_blocked()  # all settled: nothing more started
            assert (running, peak) == (4, 4)
            release.set()
    assert worker.statistics().acked == 10
    assert peak == 4
    assert max(recorder.batches) <= 4  # every fetch fits the free slots


async def test_default_slots_are_bounded_by_max_ack_pending() -> None:
    from thaw.host._worker import DEFAULT_SLOTS

    app = App("jobs")

    @app.capability()
    async def work(job: Job) -> None:
        return None

    def slots(consumer: ConsumerConfig) -> int:
        worker = StreamWorker(Invoker(app), MemoryBackbone(), "work", stream="S", consumer=consumer)
        return worker._slots

    assert slots(ConsumerConfig(durable="a")) == DEFAULT_SLOTS
    assert slots(ConsumerConfig(durable="b", max_ack_pending=8)) == 8
    assert slots(ConsumerConfig(durable="c", max_ack_pending=-1)) == DEFAULT_SLOTS


# -- the backbone failing under a running worker ------------------------------------------


class FlakyBackbone(MemoryBackbone):
    """Fetches fail ``fetch_failures`` times; the first ``ack_failures`` acks fail."""

    def __init__(self, *, fetch_failures: int = 0, ack_failures: int = 0) -> None:
        super().__init__()
        self.fetch_failures = fetch_failures
        self.ack_failures = ack_failures

    async def fetch(self, stream, durable, *, batch, timeout):  # type: ignore[no-untyped-def,override]
        if self.fetch_failures:
            self.fetch_failures -= 1
            raise BackboneError("JetStream did not answer in time (a test)")
        messages = await super().fetch(stream, durable, batch=batch, timeout=timeout)
        return [FlakyAck(message, self) for message in messages]


class FlakyAck:
    def __init__(self, message, backbone: FlakyBackbone) -> None:  # type: ignore[no-untyped-def]
        self._message = message
        self._backbone = backbone

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._message, name)

    async def ack(self) -> None:
        if self._backbone.ack_failures:
            self._backbone.ack_failures -= 1
            raise BackboneError("the NATS connection is closed (a test)")
        await self._message.ack()


async def flaky_worker(backbone: FlakyBackbone, calls: list[str]) -> StreamWorker:
    await backbone.add_stream(StreamConfig(name="JOBS", subjects=("jobs.>",)))
    consumer = ConsumerConfig(durable="jobs-work", ack_wait=0.2, max_deliver=5)
    await backbone.add_consumer("JOBS", consumer)
    app = App("flaky")

    @app.capability()
    async def work(job: Job) -> None:
        calls.append(job.name)

    return StreamWorker(
        Invoker(app, backbone=backbone), backbone, "work", stream="JOBS", consumer=consumer
    )


async def test_the_worker_outlives_failed_fetches_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backbone = FlakyBackbone(fetch_failures=2)
    calls: list[str] = []
    worker = await flaky_worker(backbone, calls)
    await publish(backbone, "a")
    with anyio.fail_after(10):
        await worker.run_until_idle()
    assert calls == ["a"]
    failures = [r for r in caplog.records if "fetch from JOBS/jobs-work failed" in r.message]
    assert len(failures) == 2
    assert "backbone_error" in failures[0].message


async def test_a_failed_ack_is_logged_and_the_message_comes_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backbone = FlakyBackbone(ack_failures=1)
    calls: list[str] = []
    worker = await flaky_worker(backbone, calls)
    await publish(backbone, "a")
    with anyio.fail_after(10):
        await worker.run_until_idle()  # the lost ack: the message waits out AckWait
        info = await backbone.consumer_info("JOBS", "jobs-work")
        assert info.num_ack_pending == 1
        while (await backbone.consumer_info("JOBS", "jobs-work")).num_ack_pending:
            await worker.run_until_idle()  # redelivered after AckWait (0.2 s), then acked
    assert calls == ["a", "a"]  # at-least-once: idempotency is what makes this safe
    assert any("could not ack JOBS seq 1" in r.message for r in caplog.records)


async def test_the_worker_reports_its_consumers_lag() -> None:
    clock = FakeClock()
    backbone, worker, _ = await setup(clock)
    assert worker.statistics().pending == -1  # nothing fetched yet
    for index in range(5):
        await publish(backbone, f"j{index}")
    fetched = await backbone.fetch("JOBS", "jobs-work", batch=2, timeout=0)
    worker._note_pending(fetched, 2)  # a full batch: the first look is taken at once
    assert worker.statistics().pending == 3
    for message in fetched:
        await message.ack()
    await worker.run_until_idle()
    assert worker.statistics().pending == 0  # the last fetch came back empty


async def test_a_failed_ack_of_a_skipped_delivery_is_logged_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backbone = FlakyBackbone(ack_failures=1)
    calls: list[str] = []
    worker = await flaky_worker(backbone, calls)
    worker._shape = lambda message: None  # e.g. an object deletion the trigger skips
    await publish(backbone, "a")
    with anyio.fail_after(10):
        await worker.run_until_idle()  # the worker goes on: no exception escapes
    assert calls == []
    assert any("could not ack JOBS seq 1" in r.message for r in caplog.records)
