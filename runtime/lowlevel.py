"""For adapter and host authors: what a transport, a backbone or a host is built from.

Who imports this: someone writing an adapter (a transport that turns its events
into ``Invoker.invoke`` calls and Outcomes back into acks, naks and answers), a
backbone (the ``Backbone`` contract, its rules and errors), or a host (``open_host``,
provisioning, dead letters). Function authors need nothing here: they import
from ``thaw``; tests import the in-memory parts from ``thaw.testing``.

What is here, and the rule that keeps it small: a name is exported only if code in
``thaw.adapters``, the benchmarks or the examples uses it, or if it is a type in the
signature of such a name (so an adapter author can annotate what they get back).
Every public name lives in exactly one of ``thaw``, ``thaw.lowlevel`` and
``thaw.testing``; ``tests/test_exports.py`` pins all three lists.
"""

from thaw._clock import Clock
from thaw._errors import (
    BackboneError,
    BucketNotFound,
    ConsumerNotFound,
    DefinitionConflict,
    MessageNotFound,
    NoResponders,
    NoStreamForSubject,
    StreamNotFound,
)

# Exported elsewhere, importable here only while adapters still import them from
# this module (no ``__all__`` entry, so no second public home; test_exports checks
# that an adapter still needs each one). New code imports them from ``thaw`` and
# ``thaw.testing``.
from thaw._errors import KeyExists as KeyExists
from thaw._errors import ObjectNotFound as ObjectNotFound
from thaw._errors import WrongRevision as WrongRevision
from thaw._headers import ERROR_CODE_HEADER, ERROR_HEADER, MSG_ID_HEADER, TRACEPARENT_HEADER
from thaw._histogram import AGE_BOUNDS, LATENCY_BOUNDS
from thaw._trace import TraceContext, parse_traceparent, start_trace
from thaw.backbone._buckets import (
    object_data,
    object_stream_name,
    object_stream_subjects,
    validate_object_name,
)
from thaw.backbone._contract import (
    Backbone,
    ConsumerConfig,
    ConsumerInfo,
    DeliveredMessage,
    KeyValue,
    KvConfig,
    KvEntry,
    Message,
    ObjectInfo,
    ObjectStore,
    ObjectStoreConfig,
    PubAck,
    StoredMessage,
    StreamConfig,
    StreamInfo,
)
from thaw.backbone._registry import available_backbones, load_server, open_backbone
from thaw.backbone._rules import (
    consumer_update_allowed,
    definition_conflict,
    validate_consumer_config,
    validate_fetch,
    validate_kv_config,
    validate_stream_config,
)
from thaw.backbone._subjects import (
    parse_ack_subject,
    subject_matches,
    validate_kv_key,
    validate_name,
    validate_subject,
)
from thaw.backbone.memory._backbone import MemoryBackbone as MemoryBackbone
from thaw.decisions._delivery import DEAD_LETTER_STREAM, Ack, DeadLetter, Nak, StreamAction
from thaw.decisions._http import (
    PROTOCOL_ERRORS,
    HttpAnswer,
    answer_outcome,
    keep_alive,
    problem,
    problem_answer,
)
from thaw.decisions._reply import Reply, Requester, service_reply
from thaw.declarations._app import CapabilitySpec
from thaw.declarations._cron import CronSpec
from thaw.declarations._loader import load_app
from thaw.declarations._policy import Policy
from thaw.declarations._triggers import (
    HttpTrigger,
    KvTrigger,
    ObjectsTrigger,
    ScheduleTrigger,
    StreamTrigger,
    SubjectTrigger,
    Trigger,
)
from thaw.host._cold_starts import COLD_START_BUCKETS, ColdStartSeries
from thaw.host._dead_letters import DeadLetterRecord, list_dead_letters
from thaw.host._host import Host, HostStatistics, open_host
from thaw.host._instances import PoolStatistics
from thaw.host._provision import ConsumerPlan, ProvisionPlan, apply_plan, plan_for
from thaw.host._router import BlockingRunner, RouterStatistics, run_inline
from thaw.host._worker import StreamWorker, WorkerStatistics
from thaw.invocation._accounting import (
    MAX_FUNCTION_CODES,
    TRIGGERS,
    Accounted,
    Accounting,
    CapabilityAccount,
    TriggerSeries,
)
from thaw.invocation._budget import BudgetStatistics, RetryBudget
from thaw.invocation._idempotency import Claim, IdempotencyStore
from thaw.invocation._invoker import CompiledCapability, Invoker, InvokerStatistics
from thaw.invocation._shape import Capability, CapabilityInvoker

__all__ = [
    # invoking: the one call every transport makes, and what it is compiled from
    "CapabilitySpec",
    "Clock",
    "Capability",
    "CapabilityInvoker",
    "CompiledCapability",
    "Invoker",
    "InvokerStatistics",
    "Policy",
    "load_app",
    # triggers, as an adapter reads them off a capability
    "CronSpec",
    "HttpTrigger",
    "KvTrigger",
    "ObjectsTrigger",
    "ScheduleTrigger",
    "StreamTrigger",
    "SubjectTrigger",
    "Trigger",
    # decisions: Outcome -> transport action, pure
    "Ack",
    "DeadLetter",
    "HttpAnswer",
    "Nak",
    "PROTOCOL_ERRORS",
    "Reply",
    "Requester",
    "StreamAction",
    "answer_outcome",
    "keep_alive",
    "problem",
    "problem_answer",
    "service_reply",
    # wire names and trace context
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "MSG_ID_HEADER",
    "TRACEPARENT_HEADER",
    "TraceContext",
    "parse_traceparent",
    "start_trace",
    # the backbone contract, its rules and its errors
    "Backbone",
    "BackboneError",
    "BucketNotFound",
    "ConsumerConfig",
    "ConsumerInfo",
    "ConsumerNotFound",
    "DefinitionConflict",
    "DeliveredMessage",
    "KeyValue",
    "KvConfig",
    "KvEntry",
    "Message",
    "MessageNotFound",
    "NoResponders",
    "NoStreamForSubject",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreConfig",
    "PubAck",
    "StoredMessage",
    "StreamConfig",
    "StreamInfo",
    "StreamNotFound",
    "available_backbones",
    "consumer_update_allowed",
    "definition_conflict",
    "load_server",
    "object_data",
    "object_stream_name",
    "object_stream_subjects",
    "open_backbone",
    "parse_ack_subject",
    "subject_matches",
    "validate_consumer_config",
    "validate_fetch",
    "validate_kv_config",
    "validate_kv_key",
    "validate_name",
    "validate_object_name",
    "validate_stream_config",
    "validate_subject",
    # hosting: workers, provisioning, idempotency, retry budget, dead letters
    "BlockingRunner",
    "BudgetStatistics",
    "Claim",
    "ConsumerPlan",
    "DEAD_LETTER_STREAM",
    "DeadLetterRecord",
    "COLD_START_BUCKETS",
    "ColdStartSeries",
    "Host",
    "HostStatistics",
    "IdempotencyStore",
    "PoolStatistics",
    "RouterStatistics",
    "ProvisionPlan",
    "RetryBudget",
    "StreamWorker",
    "WorkerStatistics",
    "apply_plan",
    "list_dead_letters",
    "open_host",
    "plan_for",
    "run_inline",
    # accounting: what each invocation costs, rendered by /metrics
    "AGE_BOUNDS",
    "Accounted",
    "Accounting",
    "CapabilityAccount",
    "LATENCY_BOUNDS",
    "MAX_FUNCTION_CODES",
    "TRIGGERS",
    "TriggerSeries",
]
