"""Per-capability policies: timeout, bounded retries with backoff, idempotency, limits.

Policies are frozen values fixed at registration; the invoker compiles them into
its fast-path record once. ``Backoff.delay`` is a pure function of the attempt
number and a random draw, so retry timing is testable without a clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec

from thaw._errors import ConfigError
from thaw.backbone._subjects import subjects_overlap, validate_name, validate_subject
from thaw.declarations._slo import Objective

__all__ = ["Access", "Backoff", "RetryPolicy", "Idempotency", "Policy"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


ISOLATIONS = ("shared", "fresh", "process")


def _positive(name: str, value: float) -> None:
    if not _is_number(value):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive, finite number of seconds, got {value!r}")


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff with jitter: ``initial * multiplier**(n-1)``, capped, then jittered.

    ``jitter`` is the fraction of the delay that is randomised downwards
    (0: exact delays; 1: "full jitter", anywhere in [0, delay)).
    """

    initial: float = 0.5
    multiplier: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        _positive("Backoff.initial", self.initial)
        _positive("Backoff.maximum", self.maximum)
        if not (
            _is_number(self.multiplier)
            and math.isfinite(self.multiplier)
            and self.multiplier >= 1.0
        ):
            raise ConfigError(f"Backoff.multiplier must be >= 1, got {self.multiplier!r}")
        if not (_is_number(self.jitter) and 0.0 <= self.jitter <= 1.0):
            raise ConfigError(f"Backoff.jitter must be within [0, 1], got {self.jitter!r}")

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based); ``draw`` is in [0, 1)."""
        exponent = max(attempt - 1, 0)
        # Cap the exponent so huge attempt counts cannot overflow a float.
        try:
            base = self.initial * self.multiplier ** min(exponent, 256)
        except OverflowError:  # a large multiplier can still overflow: past any maximum
            base = self.maximum
        base = min(base, self.maximum)
        return base * (1.0 - self.jitter * draw)


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """At most ``max_attempts`` deliveries in all (1 = never retry)."""

    max_attempts: int = 5
    backoff: Backoff = Backoff()

    def __post_init__(self) -> None:
        if not (_is_int(self.max_attempts) and 1 <= self.max_attempts <= 10_000):
            raise ConfigError(
                f"RetryPolicy.max_attempts must be an int in [1, 10000], got {self.max_attempts!r}"
            )


IdempotencyKey = Callable[[Any, Any], str]


class Idempotency(msgspec.Struct, frozen=True, kw_only=True):
    """Run the side effect once per key; duplicates get the stored result.

    ``key(event, payload) -> str`` picks the key; the default is the event id
    (``Nats-Msg-Id`` on JetStream, ``Idempotency-Key`` over HTTP). Results are
    kept ``ttl`` seconds. A duplicate arriving while the first is still running
    waits for it (up to its deadline) instead of running again.

    With the default key, the key is bound to the payload: the same event id with
    another payload is refused (``idempotency_key_reused``, HTTP 422). A ``key``
    function groups payloads on purpose, so its keys are not bound. Results larger
    than the store keeps (512 KiB) are not stored: a duplicate then gets
    ``result_not_replayable`` (409), never a second run.
    """

    key: IdempotencyKey | None = None
    ttl: float = 24 * 3600.0

    def __post_init__(self) -> None:
        _positive("Idempotency.ttl", self.ttl)
        if self.key is not None and not callable(self.key):
            raise ConfigError("Idempotency.key must be a callable (event, payload) -> str")


class CanaryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When a host rolls a canary back on its own (``App(canary=...)``).

    A canary is a revision deployed with a weight below 100 beside the stable one.
    Each host serving it looks at the last ``window`` seconds of its own calls: once
    the canary has at least ``min_calls`` there and more than ``max_error_rate`` of
    them failed by a fault (not a ``Rejected`` answer), and its rate is above the
    stable revision's, the host rolls the deployment back to the stable revision and
    logs the decision with its numbers.
    """

    max_error_rate: float = 0.05
    window: float = 60.0
    min_calls: int = 20

    def __post_init__(self) -> None:
        _positive("CanaryPolicy.window", self.window)
        if not (_is_number(self.max_error_rate) and 0 <= self.max_error_rate < 1):
            raise ConfigError(
                "CanaryPolicy.max_error_rate must be from 0 to below 1, "
                f"got {self.max_error_rate!r}"
            )
        if not (_is_int(self.min_calls) and self.min_calls >= 1):
            raise ConfigError(
                f"CanaryPolicy.min_calls must be a positive int, got {self.min_calls!r}"
            )


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """What a function may touch: subjects it publishes to or sends requests to, KV
    buckets and object stores.

    Enforced by ``Context`` (anything else is refused with ``access_denied``) and
    used by hosts to provision streams for the ``publishes`` subjects, the buckets
    and the object stores. ``requests`` (for ``ctx.request``) are provisioned
    nothing: a stream capturing a request subject would answer the request itself,
    so a subject may not be in both. A trigger's bucket is not implied: a capability
    run by ``objects("uploads")`` that reads the upload lists ``objects=("uploads",)``.
    Subjects may use NATS wildcards (``payments.>``).
    """

    publishes: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()  # object-store buckets
    requests: tuple[str, ...] = ()  # subjects of ctx.request (core request/reply)

    def __post_init__(self) -> None:
        given: tuple[object, ...] = (self.publishes, self.buckets, self.objects, self.requests)
        if any(isinstance(value, str) for value in given):
            raise ConfigError(
                "Access.publishes, Access.buckets, Access.objects and Access.requests take "
                "tuples, not a string"
            )
        for subject in (*self.publishes, *self.requests):
            validate_subject(subject, wildcards=True)
        for asked in self.requests:
            for published in self.publishes:
                if subjects_overlap(asked, published):
                    raise ConfigError(
                        f"Access.requests {asked!r} overlaps Access.publishes {published!r}: "
                        "the stream provisioned for published subjects would answer the "
                        "requests itself; keep request subjects out of publishes"
                    )
        for bucket in self.buckets:
            validate_name("kv bucket", bucket)
        for bucket in self.objects:
            validate_name("object store bucket", bucket)


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the invoker enforces for one capability."""

    timeout: float = 10.0
    retry: RetryPolicy = RetryPolicy()
    idempotency: Idempotency | None = None
    concurrency: int | None = None
    max_payload: int = 1024 * 1024
    access: Access | None = None  # None: unrestricted
    max_result: int = 8 * 1024 * 1024
    """Bytes of an encoded result a transport serves; a larger one is the function's
    fault (HTTP: 500 ``result_too_large``, logged), never sent whole."""
    isolation: str = "shared"
    """How a host runs the capability's instances: ``shared`` (module state per
    revision), ``fresh`` (module bodies re-executed per instance) or ``process``
    (a forked child of the host; a crash is contained and answered with a Retry)."""
    idle_timeout: float | None = None
    """Seconds without events before the capability's instance is stopped (scale to
    zero); None: the app's ``idle_timeout``."""
    slo: tuple[Objective, ...] = ()
    """Service level objectives (``thaw.declarations._slo``), checked against the
    capability's triggers by ``App.capability``; hosts export where each stands."""

    def __post_init__(self) -> None:
        _positive("timeout", self.timeout)
        if self.concurrency is not None and not (
            _is_int(self.concurrency) and self.concurrency >= 1
        ):
            raise ConfigError(
                f"concurrency must be a positive int or None, got {self.concurrency!r}"
            )
        if not (_is_int(self.max_payload) and self.max_payload >= 0):
            raise ConfigError(f"max_payload must be a non-negative int, got {self.max_payload!r}")
        if not (_is_int(self.max_result) and self.max_result >= 1):
            raise ConfigError(f"max_result must be a positive int, got {self.max_result!r}")
        if self.isolation not in ISOLATIONS:
            raise ConfigError(
                f"isolation must be one of {', '.join(ISOLATIONS)}, got {self.isolation!r}"
            )
        if self.idle_timeout is not None:
            _positive("idle_timeout", self.idle_timeout)
        if not isinstance(self.slo, tuple):
            raise ConfigError(f"Policy.slo must be a tuple of objectives, got {self.slo!r}")
