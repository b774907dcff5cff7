"""The error hierarchy: one base, split by who is at fault, each with a stable code.

Invariants: ``code`` strings never change once released (adapters, dead-letter
headers and users' alerting match on them); ``http_status`` and ``retryable``
are hints that adapters translate in exactly one place each. Messages end with
what to fix, and the path of the bad field where there is one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

__all__ = [
    "ThawError",
    "CallerError",
    "MalformedPayload",
    "BatchInvalid",
    "ContractError",
    "PayloadTooLarge",
    "UnknownCapability",
    "Rejected",
    "ClaimCheckFailed",
    "FunctionError",
    "AccessDenied",
    "HandlerFailed",
    "DeadlineExceeded",
    "RetryLater",
    "RuntimeFault",
    "ConfigError",
    "AppLoadError",
    "Overloaded",
    "DuplicateInProgress",
    "IdempotencyKeyReused",
    "ResultNotReplayable",
    "DeliveriesExhausted",
    "BackboneError",
    "StreamNotFound",
    "ConsumerNotFound",
    "BucketNotFound",
    "MessageNotFound",
    "KeyExists",
    "WrongRevision",
    "ObjectNotFound",
    "DefinitionConflict",
    "NoStreamForSubject",
    "NoResponders",
]


class ThawError(Exception):
    """Base of every error Thaw raises or reports."""

    code: ClassVar[str] = "thaw_error"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Codes become metric labels, header values and problem types: refuse a bad one
        # where the class is written, not on the first event that raises it.
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code", "thaw_error")
        if not valid_code(code):
            raise ConfigError(f"error class {cls.__qualname__}: {_code_rule(code)}")


CODE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


def valid_code(code: object) -> bool:
    """Whether ``code`` is a stable error code: 1-64 of a-z 0-9 _, starting with a letter."""
    return isinstance(code, str) and CODE_PATTERN.match(code) is not None


def _code_rule(code: object) -> str:
    return (
        f"code {str(code)[:70]!r} is not a valid error code "
        "(1-64 of a-z 0-9 _, starting with a letter, such as card_declined)"
    )


# -- the caller's fault: bad input; never retried ---------------------------------


class CallerError(ThawError):
    """The input was wrong; retrying the same input cannot succeed."""

    code = "caller_error"
    http_status = 400


class MalformedPayload(CallerError):
    """The payload bytes are not valid for the wire format (e.g. broken JSON)."""

    code = "payload_malformed"
    http_status = 400


class ContractError(CallerError):
    """The payload parsed but does not match the capability's input contract."""

    code = "contract_invalid"
    http_status = 422


class PayloadTooLarge(CallerError):
    code = "payload_too_large"
    http_status = 413


class UnknownCapability(CallerError):
    code = "capability_unknown"
    http_status = 404

    @classmethod
    def naming(cls, app: str, name: str, known: Iterable[str]) -> UnknownCapability:
        listed = ", ".join(sorted(known)) or "none"
        return cls(f"app {app!r} has no capability {name!r} (it has: {listed})")


class Rejected(CallerError):
    """Raised by a function to refuse an event for good (it goes to the dead-letter path).

    ``code`` is yours to choose (a short snake_case word such as ``card_declined``);
    an invalid one becomes ``rejected``, and the message says why. ``http_status``
    must be 400-599 (otherwise 422, and the message says why).
    """

    code = "rejected"
    http_status = 422

    def __init__(self, message: str, *, code: str = "rejected", http_status: int = 422) -> None:
        # Raised inside a function, so a bad code or status cannot be an exception of its
        # own: it is replaced (a fixed code keeps metric labels and headers bounded).
        if not valid_code(code):
            message, code = f"{message} [{_code_rule(code)}]", "rejected"
        if type(http_status) is not int or not 400 <= http_status <= 599:
            message = f"{message} [http_status {str(http_status)[:20]!r} is not 400-599]"
            http_status = 422
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # per-instance code chosen by the function
        self.http_status = http_status  # type: ignore[misc]


class BatchInvalid(CallerError):
    """A fan-out child or join signal whose batch headers are malformed, out of range,
    or name a batch that does not exist: dead-lettered without running the capability."""

    code = "batch_invalid"
    retryable = False


class ClaimCheckFailed(CallerError):
    """A claim check's object is missing, changed (size or SHA-256 differ) or the claim
    expired: retrying the same reference cannot succeed. ``reason`` is ``"missing"``,
    ``"changed"`` or ``"expired"``."""

    code = "claim_check_failed"
    http_status = 422
    retryable = False

    def __init__(self, message: str, *, reason: str = "changed") -> None:
        super().__init__(message)
        self.reason = reason


# -- the function's fault: may succeed on retry ------------------------------------


class FunctionError(ThawError):
    """The function failed; the event may succeed on a later attempt."""

    code = "function_error"
    http_status = 500
    retryable = True


class AccessDenied(FunctionError):
    """A function touched a subject or bucket outside its declared ``Access``."""

    code = "access_denied"
    retryable = False


class HandlerFailed(FunctionError):
    """The function raised an exception Thaw did not expect."""

    code = "handler_error"


class DeadlineExceeded(FunctionError):
    """The function did not finish before its deadline and was cancelled."""

    code = "deadline_exceeded"
    http_status = 504


class RetryLater(FunctionError):
    """Raised by a function to ask for another attempt, optionally after ``delay`` seconds."""

    code = "retry_requested"
    http_status = 503

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


# -- the runtime's (or operator's) fault -------------------------------------------


class RuntimeFault(ThawError):
    """Thaw or its environment is misconfigured or unavailable."""

    code = "runtime_fault"
    http_status = 500


class ConfigError(RuntimeFault):
    """An App, capability, trigger, policy or CLI option is invalid."""

    code = "config_invalid"


class AppLoadError(RuntimeFault):
    """An app could not be found or imported from the given path."""

    code = "app_load_failed"


class Overloaded(RuntimeFault):
    """The capability is at its concurrency limit; try again shortly."""

    code = "overloaded"
    http_status = 503
    retryable = True


class DuplicateInProgress(RuntimeFault):
    """Another worker holds the idempotency claim for this key and has not finished."""

    code = "duplicate_in_progress"
    http_status = 409
    retryable = True


class IdempotencyKeyReused(CallerError):
    """The idempotency key was first used with another payload (a key names one request)."""

    code = "idempotency_key_reused"
    http_status = 422


class ResultNotReplayable(RuntimeFault):
    """The key's function already ran, but its result was too large to store for duplicates."""

    code = "result_not_replayable"
    http_status = 409


class DeliveriesExhausted(RuntimeFault):
    """A delivery came after the capability's last attempt: earlier ones never finished.

    Their process died or was cut off from the broker while it held the message, so
    nothing settled them; the message is dead-lettered instead of run again.
    """

    code = "deliveries_exhausted"


class BackboneError(RuntimeFault):
    """The messaging/state backbone refused or failed an operation."""

    code = "backbone_error"
    http_status = 503
    retryable = True


class StreamNotFound(BackboneError):
    code = "stream_not_found"


class ConsumerNotFound(BackboneError):
    code = "consumer_not_found"


class BucketNotFound(BackboneError):
    code = "bucket_not_found"


class MessageNotFound(BackboneError):
    """No stored message has that sequence (expired, deleted or never existed)."""

    code = "message_not_found"
    retryable = False


class NoStreamForSubject(BackboneError):
    """A publish went to a subject that no stream captures (JetStream: no responders)."""

    code = "no_stream_for_subject"


class NoResponders(BackboneError):
    """A request went to a subject nobody serves (core NATS: "no responders")."""

    code = "no_responders"


class DefinitionConflict(BackboneError):
    """An existing stream/consumer/bucket differs from the requested definition."""

    code = "definition_conflict"
    retryable = False


class KeyExists(BackboneError):
    """``create`` found a live value under the key.

    Retryable: escaping a function, it means a read-modify-write lost a race, and
    running the function again reads the winner's value.
    """

    code = "kv_key_exists"


class WrongRevision(BackboneError):
    """A compare-and-set update saw a different revision than expected (retryable, as above)."""

    code = "kv_wrong_revision"


class ObjectNotFound(BackboneError):
    """The object store has no (live) object under that name."""

    code = "object_not_found"
    http_status = 404
    retryable = False
