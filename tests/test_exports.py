"""The public surface is pinned: an API change shows up as a diff here."""

from __future__ import annotations

import runtime
import runtime.lowlevel
import runtime.testing


def test_function_author_surface() -> None:
    assert sorted(runtime.__all__) == sorted(
        [
            "Access",
            "App",
            "Backoff",
            "CallerError",
            "ConfigError",
            "Context",
            "ContractError",
            "DeadlineExceeded",
            "Event",
            "FunctionError",
            "Idempotency",
            "KeyExists",
            "MalformedPayload",
            "Ok",
            "Outcome",
            "Reject",
            "Rejected",
            "Retry",
            "RetryLater",
            "RetryPolicy",
            "RuntimeFault",
            "ThawError",
            "WrongRevision",
            "http",
            "kv",
            "objects",
            "schedule",
            "stream",
            "subject",
        ]
    )


def test_testing_surface() -> None:
    assert sorted(runtime.testing.__all__) == [
        "FakeClock",
        "MemoryBackbone",
        "MemoryIdempotencyStore",
        "invoke",
        "make_event",
    ]


def test_every_exported_name_exists() -> None:
    for module in (runtime, runtime.lowlevel, runtime.testing):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], module.__name__
        assert len(set(module.__all__)) == len(module.__all__), module.__name__


def test_adapter_author_surface() -> None:
    assert sorted(runtime.lowlevel.__all__) == [
        "Ack",
        "AppLoadError",
        "Backbone",
        "BackboneError",
        "BucketNotFound",
        "BudgetStatistics",
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
        "IDEMPOTENCY_BUCKET",
        "IdempotencyStore",
        "Invoker",
        "InvokerStatistics",
        "KeyExists",
        "KeyValue",
        "KvConfig",
        "KvEntry",
        "KvIdempotencyStore",
        "KvTrigger",
        "MSG_ID_HEADER",
        "MalformedPayload",
        "MemoryBackbone",
        "MemoryIdempotencyStore",
        "Message",
        "MessageNotFound",
        "Nak",
        "NoStreamForSubject",
        "ObjectsTrigger",
        "Overloaded",
        "PayloadTooLarge",
        "Policy",
        "PubAck",
        "RetryBudget",
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
