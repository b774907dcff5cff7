"""The host: wires an app's revisions, a backbone and its stream workers together and owns
lifecycle.

``open_host(app_or_revision, backbone)`` provisions what the app needs (see
``_provision``), loads the revision into a ``RevisionRouter`` (an App imported from
source becomes a ``source_revision``), and serves every trigger through it: each
event reaches its capability's pool, which thaws an instance on the first event
(``on_start`` runs then, per instance, not at host start), and the reaper scales
idle instances to zero (``on_stop`` runs then; the revision stays loaded).
Idempotency is on the backbone's KV, so several hosts, revisions and instances
share it. The host starts one ``StreamWorker`` per
``stream``, ``kv``, ``objects`` and ``schedule`` trigger (a schedule's ticks are
messages the schedule runner publishes), plus that runner, in its own task group. Several
hosts may consume the same durable consumers: they are competing workers, so
capacity grows by adding hosts. Leaving the context drains: workers stop
fetching, in-flight calls get ``drain_timeout`` seconds to finish (unfinished
ones are cancelled and, never acked, redelivered elsewhere), then every live
instance stops (``on_stop``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import anyio
import msgspec

from thaw._clock import Clock, SystemClock
from thaw._event import Event, Outcome
from thaw._headers import MSG_ID_HEADER, TRACEPARENT_HEADER
from thaw._trace import Tracer
from thaw.backbone._contract import Backbone
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.backbone.memory._requests import Responding
from thaw.decisions._reply import Reply, Responder, service_reply
from thaw.declarations._app import App
from thaw.declarations._changes import shaper_for
from thaw.declarations._context import SyncRunner, run_sync_inline
from thaw.declarations._triggers import SubjectTrigger
from thaw.host._identity import EVENT_KEY, load_event_key
from thaw.host._provision import ProvisionPlan, apply_plan, idempotency_bucket_for, plan_for
from thaw.host._router import ProcessPools, RevisionRouter, RouterStatistics
from thaw.host._schedule import ScheduleRunner
from thaw.host._serving import ServedCapability, ServingInvoker, source_revision
from thaw.host._worker import StreamWorker, WorkerStatistics, trigger_kind
from thaw.invocation._accounting import Accounting
from thaw.invocation._budget import RetryBudget
from thaw.invocation._idempotency import IdempotencyStore
from thaw.invocation._kv_idempotency import KvIdempotencyStore
from thaw.snapshots._revision import Revision

__all__ = ["Host", "HostStatistics", "open_host"]


class HostStatistics(msgspec.Struct, frozen=True):
    app: str
    workers: dict[str, WorkerStatistics]
    revisions: RouterStatistics | None = None


class Host:
    """A running app on a backbone (use ``open_host``)."""

    def __init__(
        self,
        app: App,
        backbone: Backbone,
        invoker: ServingInvoker,
        plan: ProvisionPlan,
        workers: dict[str, StreamWorker],
        budget: RetryBudget | None = None,
    ) -> None:
        self.app = app
        self.backbone = backbone
        self.invoker = invoker
        self.router = invoker.router
        self.plan = plan
        self.workers = workers
        self.budget = budget if budget is not None else RetryBudget()
        # What every invocation cost, per capability and trigger (/metrics renders it).
        self.accounting = invoker.accounting

    async def invoke(self, capability: str, event: Event) -> Outcome:
        """Invoke directly (what an HTTP or request/reply adapter does)."""
        return await self.invoker.invoke(capability, event)

    def statistics(self) -> HostStatistics:
        return HostStatistics(
            app=self.app.name,
            workers={name: worker.statistics() for name, worker in self.workers.items()},
            revisions=self.router.statistics(),
        )


@asynccontextmanager
async def open_host(
    app: App | Revision,
    backbone: Backbone,
    *,
    provision: bool = True,
    idempotency_store: IdempotencyStore | None = None,
    budget: RetryBudget | None = None,
    fetch_timeout: float = 1.0,
    drain_timeout: float = 10.0,
    ack_wait: float | None = None,
    idle_timeout: float | None = None,
    process_pools: ProcessPools | None = None,
    clock: Clock | None = None,
    warm: bool = False,
    run_sync: SyncRunner = run_sync_inline,
    wall_clock: Callable[[], float] | None = None,
    plan: ProvisionPlan | None = None,
    tracer: Tracer | None = None,
    accounting: Accounting | None = None,
) -> AsyncIterator[Host]:
    """Provision (unless ``provision=False``), start the workers, yield the host, drain.

    ``app`` is an App imported from source or a loaded snapshot (``load_revision``).
    ``ack_wait`` (seconds) is the AckWait of the consumers this host provisions (and
    the basis of its in-progress heartbeats); None keeps the planner's default.
    ``idle_timeout`` overrides every capability's scale-to-zero time; ``process_pools``
    serves ``process`` capabilities (``thaw.adapters.process.pool.process_pool_factory``);
    ``clock`` drives idle times (a test's FakeClock). ``warm``: thaw the instances
    now (``on_start`` runs before this yields, and a failing one raises
    ``InstanceStartFailed``, as an ASGI lifespan expects) instead of on the first
    events; they still scale to zero when idle. ``run_sync`` serves ``ctx.run_sync``
    (default: on the loop, as Pyodide must; ``thaw.adapters.threads.SyncPool`` on CPython).
    ``wall_clock`` (seconds since the epoch, default ``time.time``) says when schedules fire.
    ``plan`` replaces ``plan_for(app, ack_wait=...)``: what an operator adjusted per
    environment (``thaw serve --consumer``, ``--bind-stream``); the workers follow it.
    ``tracer`` records spans (``thaw.adapters.telemetry.tracing.OtelTracer``); None: off.
    ``accounting`` counts every invocation per capability and trigger (``Host.accounting``;
    default a new ``Accounting()``; pass one to choose its CPU sampling).
    """
    revision = app if isinstance(app, Revision) else source_revision(app)
    app = revision.app
    if plan is None:
        plan = plan_for(app) if ack_wait is None else plan_for(app, ack_wait=ack_wait)
    if provision:
        await apply_plan(plan, backbone)
    bucket = idempotency_bucket_for(app)
    store = idempotency_store or KvIdempotencyStore(backbone, bucket=bucket)
    clock = clock or SystemClock()
    accounting = accounting if accounting is not None else Accounting()
    router = RevisionRouter(
        idle_timeout=idle_timeout,
        process_pools=process_pools,
        idempotency_bucket=None if idempotency_store is not None else bucket,
        backbone=backbone,
        idempotency_store=store,
        clock=clock,
        run_sync=run_sync,
        tracer=tracer,
        accounting=accounting,
    )
    router.add(revision, weight=100)
    invoker = ServingInvoker(
        app, router, clock=clock, idempotency_store=store, accounting=accounting
    )
    invoker.tracer = tracer
    budget = budget or RetryBudget()
    workers: dict[str, StreamWorker] = {}
    for consumer in plan.consumers:
        # Keyed by capability; a capability's further consumers by "capability/stream/durable".
        key = consumer.capability
        if key in workers:
            key = f"{key}/{consumer.stream}/{consumer.config.durable}"
        workers[key] = StreamWorker(
            invoker,
            backbone,
            consumer.capability,
            stream=consumer.stream,
            consumer=consumer.config,
            fetch_timeout=fetch_timeout,
            budget=budget,
            shape=shaper_for(consumer.trigger),
            tracer=tracer,
            trigger=trigger_kind(consumer.trigger),
        )
    # The workers honour a Thaw-Event-Id only when it is signed with this key (_identity).
    event_key = await load_event_key(backbone) if workers else b""
    # Its ticks run on the workers above; a test's FakeClock (with a wall clock read from
    # it, ``wall_clock``) drives them too.
    schedules = ScheduleRunner(
        app, backbone, clock=clock, wall_clock=wall_clock or time.time, tracer=tracer
    )
    responders = _answer_subjects(invoker, backbone) if isinstance(backbone, MemoryBackbone) else []
    key_in_context = EVENT_KEY.set(event_key)  # the worker tasks started below inherit it
    try:
        if warm:  # inside the try: a failing on_start still stops what did start
            await router.warm()
        async with anyio.create_task_group() as group:
            group.start_soon(router.run_reaper)
            for worker in workers.values():
                group.start_soon(worker.run)
            if schedules.schedules:
                group.start_soon(schedules.run)
            try:
                yield Host(app, backbone, invoker, plan, workers, budget)
            finally:
                for responding in responders:
                    responding.close()
                # A MemoryBackbone fetch is safe to cancel; on a FakeClock it parks until
                # a time that never comes, so leaving would take the whole drain_timeout.
                interrupt = isinstance(backbone, MemoryBackbone)
                for worker in workers.values():
                    worker.stop(interrupt_fetch=interrupt)
                with anyio.move_on_after(drain_timeout, shield=True):
                    for worker in workers.values():
                        await worker.wait_stopped()
                group.cancel_scope.cancel()
    finally:
        for responding in responders:
            responding.close()
        with anyio.CancelScope(shield=True):
            await router.stop_instances()  # every live instance's on_stop; revisions stay
        with contextlib.suppress(ValueError):  # left in another context than entered
            EVENT_KEY.reset(key_in_context)


def _answer_subjects(invoker: ServingInvoker, backbone: MemoryBackbone) -> list[Responding]:
    """Serve the app's ``subject`` triggers in process (JetStream: nats/subject_services)."""
    return [
        backbone.respond(trigger.subject, _responder(capability.via("subject"), invoker.clock))
        for capability in invoker.capabilities.values()
        for trigger in capability.spec.triggers
        if isinstance(trigger, SubjectTrigger)
    ]


def _responder(capability: ServedCapability, clock: Clock) -> Responder:
    timeout = capability.spec.policy.timeout

    async def answer(subject: str, data: bytes, headers: Mapping[str, str]) -> Reply:
        event = Event(
            id=headers.get(MSG_ID_HEADER) or uuid.uuid4().hex,
            data=data,
            subject=subject,
            headers=dict(headers),
            deadline=clock.now() + timeout,
            traceparent=headers.get(TRACEPARENT_HEADER, ""),
        )
        body, reply_headers = service_reply(await capability(event))
        return Reply(body, reply_headers)

    return answer
