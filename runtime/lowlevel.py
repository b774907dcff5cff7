"""For adapter and host authors: the invoker, the backbone contract, pure decisions.

Function authors should not need anything here; see ``runtime``.
"""

from ._app import CapabilitySpec
from ._backbone import (
    Backbone,
    ConsumerConfig,
    ConsumerInfo,
    KeyValue,
    KvConfig,
    KvEntry,
    Message,
    PubAck,
    StoredMessage,
    StreamConfig,
    StreamInfo,
)
from ._backbones import available_backbones, load_server, open_backbone
from ._budget import BudgetStatistics, RetryBudget
from ._clock import Clock, SystemClock
from ._context import MSG_ID_HEADER, TRACEPARENT_HEADER
from ._cron import CronSpec, parse_cron
from ._dead_letters import (
    DeadLetterRecord,
    list_dead_letters,
    purge_dead_letters,
    replay_dead_letter,
    show_dead_letter,
)
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
from ._errors import (
    AccessDenied,
    AppLoadError,
    BackboneError,
    BucketNotFound,
    ConsumerNotFound,
    DefinitionConflict,
    DuplicateInProgress,
    HandlerFailed,
    KeyExists,
    MalformedPayload,
    MessageNotFound,
    NoStreamForSubject,
    Overloaded,
    PayloadTooLarge,
    StreamNotFound,
    UnknownCapability,
    WrongRevision,
)
from ._host import Host, HostStatistics, open_host
from ._http_decisions import (
    PROTOCOL_ERRORS,
    HttpAnswer,
    Problem,
    answer_outcome,
    keep_alive,
    problem,
    problem_answer,
    reason_phrase,
    retry_after_seconds,
    status_for,
)
from ._idempotency import Claim, IdempotencyStore, MemoryIdempotencyStore
from ._instances import Instance, InstancePool, Isolation, PoolStatistics
from ._invoker import CompiledCapability, Invoker, InvokerStatistics
from ._kv_idempotency import IDEMPOTENCY_BUCKET, KvIdempotencyStore
from ._loader import load_app
from ._memory_backbone import MemoryBackbone
from ._memory_streams import validate_consumer_config, validate_fetch, validate_stream_config
from ._policy import Policy
from ._provision import ConsumerPlan, ProvisionPlan, apply_plan, plan_for
from ._revision import LoadTimings, Revision, RevisionLoadError, load_revision
from ._revisions import RevisionRouter
from ._schedule import ScheduleRunner, Tick, next_tick
from ._snapshot_build import BuildResult, build_snapshot
from ._snapshot_format import SnapshotError
from ._subjects import subject_matches, validate_kv_key, validate_name, validate_subject
from ._trace import TraceContext, parse_traceparent, start_trace
from ._triggers import (
    HttpTrigger,
    KvTrigger,
    ObjectsTrigger,
    ScheduleTrigger,
    StreamTrigger,
    SubjectTrigger,
    Trigger,
)
from ._worker import StreamWorker, WorkerStatistics, ensure_dead_letter_stream

__all__ = [
    "validate_consumer_config",
    "validate_fetch",
    "validate_kv_key",
    "validate_name",
    "validate_stream_config",
    "load_server",
    "HttpAnswer",
    "Problem",
    "PROTOCOL_ERRORS",
    "answer_outcome",
    "keep_alive",
    "problem",
    "problem_answer",
    "reason_phrase",
    "retry_after_seconds",
    "status_for",
    "available_backbones",
    "open_backbone",
    "DeadLetterRecord",
    "list_dead_letters",
    "purge_dead_letters",
    "replay_dead_letter",
    "show_dead_letter",
    "Host",
    "HostStatistics",
    "open_host",
    "Instance",
    "InstancePool",
    "Isolation",
    "PoolStatistics",
    "ConsumerPlan",
    "ProvisionPlan",
    "apply_plan",
    "plan_for",
    "LoadTimings",
    "Revision",
    "RevisionLoadError",
    "load_revision",
    "RevisionRouter",
    "ScheduleRunner",
    "Tick",
    "next_tick",
    "BuildResult",
    "build_snapshot",
    "SnapshotError",
    "EVENT_ID_HEADER",
    "AccessDenied",
    "BudgetStatistics",
    "IDEMPOTENCY_BUCKET",
    "KvIdempotencyStore",
    "RetryBudget",
    "Ack",
    "AppLoadError",
    "Backbone",
    "BackboneError",
    "BucketNotFound",
    "CapabilitySpec",
    "Claim",
    "Clock",
    "CompiledCapability",
    "ConsumerConfig",
    "ConsumerInfo",
    "ConsumerNotFound",
    "CronSpec",
    "DEAD_LETTER_STREAM",
    "DEAD_LETTER_SUBJECTS",
    "DeadLetter",
    "DefinitionConflict",
    "DuplicateInProgress",
    "HandlerFailed",
    "HttpTrigger",
    "IdempotencyStore",
    "Invoker",
    "InvokerStatistics",
    "KeyExists",
    "KeyValue",
    "KvConfig",
    "KvEntry",
    "KvTrigger",
    "MSG_ID_HEADER",
    "MalformedPayload",
    "MessageNotFound",
    "MemoryBackbone",
    "MemoryIdempotencyStore",
    "Message",
    "Nak",
    "NoStreamForSubject",
    "ObjectsTrigger",
    "Overloaded",
    "PayloadTooLarge",
    "Policy",
    "PubAck",
    "ScheduleTrigger",
    "StoredMessage",
    "StreamAction",
    "StreamConfig",
    "StreamInfo",
    "StreamNotFound",
    "StreamTrigger",
    "StreamWorker",
    "SubjectTrigger",
    "SystemClock",
    "TRACEPARENT_HEADER",
    "TraceContext",
    "Trigger",
    "UnknownCapability",
    "WorkerStatistics",
    "WrongRevision",
    "dead_letter_headers",
    "dead_letter_subject",
    "decide_stream",
    "ensure_dead_letter_stream",
    "load_app",
    "parse_cron",
    "parse_traceparent",
    "start_trace",
    "subject_matches",
    "validate_subject",
]
