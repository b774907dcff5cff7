"""Provisioning from capability specs: the streams, consumers and buckets an App needs.

``plan_for(app)`` is pure: it derives, from triggers and ``Access`` declarations,
one stream per app (``<APP>``, or the stream a trigger names) capturing every
subject its capabilities consume or publish, one durable pull consumer per
``stream`` trigger (AckWait, MaxDeliver from the retry policy, MaxAckPending
from the concurrency limit), the KV buckets and object stores the capabilities
use, the idempotency bucket, the webhook replay bucket (when a route verifies
signatures) and the dead-letter stream. A ``kv`` or ``objects`` trigger adds its
bucket and a durable consumer on the bucket's own stream (``KV_<bucket>`` filtered
to ``$KV.<bucket>.<key>``, ``OBJ_<bucket>`` filtered to ``$O.<bucket>.M.>``); these
consumers deliver from the start of the bucket, so changes made while no host ran
are processed when one starts. Each capability with such a trigger also gets a
durable consumer on ``THAW_REPLAY`` filtered to ``thaw.replay.<app>.<capability>``:
where ``thaw dlq replay`` sends its kv/objects dead letters, as the capability's
input, instead of writing stale data back into ``$KV``/``$O`` (see
``thaw.host._dead_letters``). ``apply_plan`` creates each one or confirms an
identical existing one; an existing definition that differs is reported
(``DefinitionConflict`` naming the fields), never silently changed, except a
stream's age limit: the dead-letter stream is kept 14 days by default and app
streams forever unless an age is configured (``thaw.host._retention``), and an
existing stream with another age is updated to it, or keeps its own when no
app-stream age is configured. A ``schedule`` trigger adds a durable consumer on
the app's tick stream ``<APP>-TICKS`` (``thaw.tick.<app>.>``, kept a week) filtered
to ``thaw.tick.<app>.<capability>``, where the scheduler publishes its ticks, and
the ``thaw_schedules`` bucket (see ``thaw.host._schedule``).

A ``stream`` trigger with ``bind=True`` names a stream someone else owns: the plan
requests no definition for it (nor adds subjects the app publishes to it) and only
lists it in ``bound``; ``apply_plan`` checks it exists and captures each bound
subject (``ConfigError`` naming the stream and what is missing) before creating the
consumers. A trigger's ``ack_wait``, ``max_ack_pending`` and ``deliver`` set its
consumer; ``consumer_settings`` (what an operator passes to ``thaw serve --consumer``)
override them per capability.
"""

from __future__ import annotations

import msgspec

from thaw._errors import ConfigError, StreamNotFound
from thaw.backbone._buckets import (
    kv_stream_name,
    kv_subject_prefix,
    object_stream_name,
    object_stream_subjects,
)
from thaw.backbone._contract import (
    Backbone,
    ConsumerConfig,
    KvConfig,
    ObjectStoreConfig,
    StreamConfig,
)
from thaw.backbone._subjects import subject_is_subset
from thaw.decisions._delivery import DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS
from thaw.declarations._app import App
from thaw.declarations._batches import BATCH_BUCKET_TTL, app_has_join, batch_bucket_for
from thaw.declarations._triggers import (
    HttpTrigger,
    KvTrigger,
    ObjectsTrigger,
    ScheduleTrigger,
    StreamTrigger,
    Trigger,
    Webhook,
    check_consumer_options,
)
from thaw.host._retention import (
    Retention,
    ensure_stream,
    format_duration,
    retention_from_environment,
)
from thaw.host._schedule import (
    SCHEDULE_BUCKET,
    SCHEDULE_BUCKET_TTL,
    TICK_DUPLICATE_WINDOW,
    TICK_MAX_AGE,
    tick_stream_name,
    tick_subject,
    tick_subjects,
)
from thaw.invocation._kv_idempotency import IDEMPOTENCY_BUCKET

__all__ = [
    "ProvisionPlan",
    "ConsumerPlan",
    "BoundStream",
    "ConsumerSettings",
    "plan_for",
    "apply_plan",
    "stream_name_for",
    "idempotency_bucket_for",
    "webhook_bucket_for",
    "webhook_replay_ttl",
    "REPLAY_STREAM",
    "replay_subject",
    "dead_letter_stream_config",
]

DEFAULT_ACK_WAIT = 30.0
DUPLICATE_WINDOW = 120.0
# Replays of kv/objects dead letters: the change as the capability's input, on a subject
# of Thaw's own, consumed by a second consumer of the capability (never $KV/$O subjects).
REPLAY_STREAM = "THAW_REPLAY"
REPLAY_SUBJECTS = ("thaw.replay.>",)


def replay_subject(app: str, capability: str) -> str:
    """Where replays of ``app``/``capability``'s kv/objects dead letters are published."""
    return f"thaw.replay.{app}.{capability}"


class ConsumerPlan(msgspec.Struct, frozen=True):
    capability: str
    stream: str
    config: ConsumerConfig
    trigger: Trigger | None = None  # what the consumer serves (kv/objects shape the input)


class BoundStream(msgspec.Struct, frozen=True):
    """A stream a trigger binds to: checked for ``subject``, never defined or changed."""

    stream: str
    subject: str
    capability: str


class ConsumerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-capability overrides of its stream consumers (None: what the trigger says)."""

    ack_wait: float | None = None
    max_ack_pending: int | None = None
    deliver: str | None = None

    def __post_init__(self) -> None:
        check_consumer_options(
            "consumer settings",
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
            deliver="all" if self.deliver is None else self.deliver,
        )


class ProvisionPlan(msgspec.Struct, frozen=True):
    streams: list[StreamConfig]
    consumers: list[ConsumerPlan]
    buckets: list[KvConfig]
    object_stores: list[ObjectStoreConfig] = []
    # Streams whose existing age limit provisioning leaves alone (app streams when no
    # app-stream age is configured; see thaw.host._retention).
    kept_ages: tuple[str, ...] = ()
    bound: tuple[BoundStream, ...] = ()  # someone else's streams, checked by apply_plan

    def describe(self) -> list[str]:
        lines = [f"bound stream {b.stream}: needs {b.subject}" for b in self.bound]
        lines += [
            f"stream {s.name}: {', '.join(s.subjects)}"
            + (f" (max age {format_duration(s.max_age)})" if s.max_age else "")
            for s in self.streams
        ]
        lines += [
            f"consumer {c.stream}/{c.config.durable} for {c.capability}: "
            f"filter {c.config.filter_subject}, ack_wait {c.config.ack_wait:g}s, "
            f"max_deliver {c.config.max_deliver}, max_ack_pending {c.config.max_ack_pending}"
            for c in self.consumers
        ]
        lines += [
            f"kv bucket {b.bucket}" + (f" (ttl {b.ttl:g}s)" if b.ttl else "") for b in self.buckets
        ]
        lines += [f"object store {o.bucket}" for o in self.object_stores]
        return lines


def idempotency_bucket_for(app: App) -> str:
    """Each app its own idempotency bucket, so apps with different TTLs never conflict."""
    return f"{IDEMPOTENCY_BUCKET}_{app.name}"


def webhook_bucket_for(app: App) -> str:
    """The replay store of an app's webhook signatures, apart from any idempotency TTL."""
    return f"thaw_webhooks_{app.name}"


WEBHOOK_REPLAY_MARGIN = 5.0  # seconds a replay record outlives what it guards


def webhook_replay_ttl(webhook: Webhook, *, timeout: float) -> float:
    """The longest a webhook route's replay record must live (its bucket's TTL is the
    largest of its routes'): a claim while the handler runs (``timeout``), and a used
    signature until it is stale (at most ``2 * tolerance`` after its use) or for
    ``replay_window``, whichever is longer."""
    return max(2 * webhook.tolerance, webhook.replay_window, timeout) + WEBHOOK_REPLAY_MARGIN


def stream_name_for(app: App) -> str:
    return app.name.upper().replace("-", "_")


def _minimal(subjects: list[str]) -> tuple[str, ...]:
    """Drop subjects another one in the list already covers (streams refuse overlaps)."""
    kept: list[str] = []
    for subject in dict.fromkeys(subjects):
        if any(subject != other and subject_is_subset(subject, other) for other in subjects):
            continue
        kept.append(subject)
    return tuple(kept)


def max_ack_pending_for(concurrency: int | None) -> int:
    """Twice what one host runs at once: a dead host's holdings never starve its successor."""
    return 2 * concurrency if concurrency else 1000


def plan_for(
    app: App,
    *,
    ack_wait: float = DEFAULT_ACK_WAIT,
    retention: Retention | None = None,
    consumer_settings: dict[str, ConsumerSettings] | None = None,
) -> ProvisionPlan:
    """The plan; ``retention`` None: the ages the environment sets (``_retention``).

    ``consumer_settings`` maps a capability to overrides of its stream consumers;
    naming a capability without a ``stream`` trigger is a ``ConfigError``.
    """
    ages = retention if retention is not None else retention_from_environment()
    overrides = consumer_settings or {}
    for name in overrides:
        spec_of = app.capabilities.get(name)
        if spec_of is None or not any(isinstance(t, StreamTrigger) for t in spec_of.triggers):
            raise ConfigError(
                f"consumer settings for {name!r}: app {app.name!r} has no capability of that "
                "name with a stream trigger"
            )
    bound: list[BoundStream] = []
    default_stream = stream_name_for(app)
    subjects: dict[str, list[str]] = {}
    consumers: list[ConsumerPlan] = []
    buckets: dict[str, KvConfig] = {}
    idempotency_ttl = 0.0
    webhook_ttl = 0.0
    object_stores: dict[str, ObjectStoreConfig] = {}
    durables: set[tuple[str, str]] = set()
    for spec in app.capabilities.values():  # first the subjects capabilities consume
        policy = spec.policy
        for trigger in spec.triggers:
            durable = f"{app.name}-{spec.name}"
            consumer_wait, pending_limit = ack_wait, max_ack_pending_for(policy.concurrency)
            deliver = "all"
            if isinstance(trigger, StreamTrigger):
                stream = trigger.stream or default_stream
                if trigger.bind:
                    bound.append(BoundStream(stream, trigger.subject, spec.name))
                else:
                    subjects.setdefault(stream, []).append(trigger.subject)
                durable = trigger.durable or durable
                filter_subject = trigger.subject
                override = overrides.get(spec.name, ConsumerSettings())
                consumer_wait = override.ack_wait or trigger.ack_wait or ack_wait
                pending_limit = override.max_ack_pending or trigger.max_ack_pending or pending_limit
                deliver = override.deliver or trigger.deliver
            elif isinstance(trigger, KvTrigger):
                buckets.setdefault(trigger.bucket, KvConfig(bucket=trigger.bucket))
                stream = kv_stream_name(trigger.bucket)
                filter_subject = kv_subject_prefix(trigger.bucket) + trigger.key
            elif isinstance(trigger, ObjectsTrigger):
                object_stores.setdefault(trigger.bucket, ObjectStoreConfig(bucket=trigger.bucket))
                stream = object_stream_name(trigger.bucket)
                filter_subject = object_stream_subjects(trigger.bucket)[1]  # the meta subjects
            elif isinstance(trigger, ScheduleTrigger):  # its ticks, published by the scheduler
                stream = tick_stream_name(app.name)
                filter_subject = tick_subject(app.name, spec.name)
                durable = f"{durable}-tick"
            else:
                continue
            base, n = durable, 1
            while (stream, durable) in durables:  # two triggers of one capability, one stream
                n += 1
                durable = f"{base}-{n}"
            durables.add((stream, durable))
            consumers.append(
                ConsumerPlan(
                    capability=spec.name,
                    stream=stream,
                    config=ConsumerConfig(
                        durable=durable,
                        filter_subject=filter_subject,
                        ack_wait=consumer_wait,
                        # Attempts are counted by the worker (see StreamWorker): at the
                        # server a message is never given up, so one whose last delivery
                        # died with its host is still there to be dead-lettered.
                        max_deliver=-1,
                        # Room for a killed predecessor's unacked messages, so a restarted
                        # host gets new work at once instead of after their AckWait.
                        max_ack_pending=pending_limit,
                        deliver=deliver,
                    ),
                    trigger=trigger,
                )
            )
    bound_names = {b.stream for b in bound}
    for name in bound_names & set(subjects):
        raise ConfigError(
            f"stream {name!r} is bound (bind=True) by one trigger and owned by another; "
            "bind every trigger on it, or none"
        )
    replays = _replay_consumers(app, consumers)
    consumers += replays
    consumed = {name: list(held) for name, held in subjects.items()}
    for b in bound:
        consumed.setdefault(b.stream, []).append(b.subject)
    for spec in app.capabilities.values():  # then what they publish and the state they use
        policy = spec.policy
        if policy.access is not None:
            for subject in policy.access.publishes:
                owner = next(
                    (
                        name
                        for name, held in consumed.items()
                        if any(subject_is_subset(subject, h) for h in held)
                    ),
                    default_stream,
                )
                if owner not in bound_names:  # a bound stream captures it already
                    subjects.setdefault(owner, []).append(subject)
            for bucket in policy.access.buckets:
                buckets.setdefault(bucket, KvConfig(bucket=bucket))
            for bucket in policy.access.objects:
                object_stores.setdefault(bucket, ObjectStoreConfig(bucket=bucket))
        if policy.idempotency is not None:
            idempotency_ttl = max(idempotency_ttl, policy.idempotency.ttl)
        for trigger in spec.triggers:
            if isinstance(trigger, HttpTrigger) and trigger.webhook is not None:
                ttl = webhook_replay_ttl(trigger.webhook, timeout=policy.timeout)
                webhook_ttl = max(webhook_ttl, ttl)
    streams = [
        StreamConfig(
            name=name,
            subjects=_minimal(held),
            duplicate_window=DUPLICATE_WINDOW,
            max_age=ages.streams or 0.0,
        )
        for name, held in subjects.items()
    ]
    kept_ages = tuple(subjects) if ages.streams is None else ()
    streams.append(dead_letter_stream_config(ages))
    if replays:
        streams.append(
            StreamConfig(
                name=REPLAY_STREAM,
                subjects=REPLAY_SUBJECTS,
                duplicate_window=DUPLICATE_WINDOW,
                max_age=ages.dead_letters,
            )
        )
    if any(isinstance(c.trigger, ScheduleTrigger) for c in consumers):
        streams.append(_tick_stream_config(app))
        buckets[SCHEDULE_BUCKET] = KvConfig(bucket=SCHEDULE_BUCKET, ttl=SCHEDULE_BUCKET_TTL)
    if idempotency_ttl:
        name = idempotency_bucket_for(app)
        buckets[name] = KvConfig(bucket=name, ttl=idempotency_ttl)
    if webhook_ttl:
        name = webhook_bucket_for(app)
        buckets[name] = KvConfig(bucket=name, ttl=webhook_ttl)
    if app_has_join(c.config.filter_subject for c in consumers):  # fan-out batches
        name = batch_bucket_for(app.name)
        buckets[name] = KvConfig(bucket=name, ttl=BATCH_BUCKET_TTL)
    return ProvisionPlan(
        streams=streams,
        consumers=consumers,
        buckets=list(buckets.values()),
        object_stores=list(object_stores.values()),
        kept_ages=kept_ages,
        bound=tuple(bound),
    )


def dead_letter_stream_config(retention: Retention | None = None) -> StreamConfig:
    """``THAW_DLQ`` with its age limit (``retention`` None: the environment's)."""
    ages = retention if retention is not None else retention_from_environment()
    return StreamConfig(
        name=DEAD_LETTER_STREAM,
        subjects=DEAD_LETTER_SUBJECTS,
        duplicate_window=DUPLICATE_WINDOW,
        max_age=ages.dead_letters,
    )


def _tick_stream_config(app: App) -> StreamConfig:
    """The app's ticks: the window drops a tick every host publishes; a week's age."""
    return StreamConfig(
        name=tick_stream_name(app.name),
        subjects=(tick_subjects(app.name),),
        duplicate_window=TICK_DUPLICATE_WINDOW,
        max_age=TICK_MAX_AGE,
    )


def _replay_consumers(app: App, consumers: list[ConsumerPlan]) -> list[ConsumerPlan]:
    """One replay consumer per capability that a kv or objects trigger runs.

    Its deliveries are the capability's input already (``trigger=None``: no shaper),
    with the delivery settings of the capability's first change consumer.
    """
    replays: dict[str, ConsumerPlan] = {}
    for plan in consumers:
        if plan.capability in replays or not isinstance(plan.trigger, KvTrigger | ObjectsTrigger):
            continue
        replays[plan.capability] = ConsumerPlan(
            capability=plan.capability,
            stream=REPLAY_STREAM,
            config=msgspec.structs.replace(
                plan.config,
                durable=f"{app.name}-{plan.capability}-replay",
                filter_subject=replay_subject(app.name, plan.capability),
            ),
        )
    return list(replays.values())


async def check_bound(plan: ProvisionPlan, backbone: Backbone) -> None:
    """``ConfigError`` unless each bound stream exists and captures its trigger's subject."""
    for b in plan.bound:
        where = f"bound stream {b.stream!r} (capability {b.capability!r})"
        try:
            info = await backbone.stream_info(b.stream)
        except StreamNotFound:
            raise ConfigError(
                f"{where} does not exist; create it, or drop bind=True to let the host own it"
            ) from None
        if not any(subject_is_subset(b.subject, held) for held in info.config.subjects):
            raise ConfigError(
                f"{where} does not capture subject {b.subject!r}: its subjects are "
                f"{list(info.config.subjects)}"
            )


async def apply_plan(plan: ProvisionPlan, backbone: Backbone) -> None:
    await check_bound(plan, backbone)
    for stream in plan.streams:  # an age that differs is changed (or kept), not a conflict
        await ensure_stream(backbone, stream, keep_age=stream.name in plan.kept_ages)
    for bucket in plan.buckets:  # before the consumers: kv triggers consume their streams
        await backbone.add_kv(bucket)
    for store in plan.object_stores:
        await backbone.add_object_store(store)
    for consumer in plan.consumers:
        await backbone.add_consumer(consumer.stream, consumer.config)
