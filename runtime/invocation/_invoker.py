"""The invoker: Event in, Outcome out. This module is the hot path.

At construction every capability is compiled into a ``CompiledCapability``:
its decoder, encoder, handler, calling shape, limits and policy values. Per
invocation the record only checks size and deadline, decodes, calls, encodes.
No reflection, no per-call timer (see ``_deadlines``), a Context only for
functions that ask for one.

Invariants:
- ``__call__`` never raises for anything the event or the function did: every
  failure becomes an Outcome. Only cancellation from outside (host shutdown)
  and BaseExceptions such as KeyboardInterrupt propagate.
- Errors the caller caused are ``Reject`` (never retried); errors the function
  raised are ``Retry`` with backoff until ``max_attempts``, then ``Reject``.
- With idempotency on, the side effect runs once per key: a duplicate returns
  the stored result, or waits for the running first call.
- Outcomes are what the runtime decides, never what a function hands back: a
  returned ``Ok``/``Retry``/``Reject`` is ``result_invalid`` and a raised one
  (``TypeError``: not an exception) is ``config_invalid``, both never retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import msgspec

from thaw._clock import Clock, SystemClock
from thaw._errors import (
    BackboneError,
    ConfigError,
    ContractError,
    DeadlineExceeded,
    DuplicateInProgress,
    HandlerFailed,
    IdempotencyKeyReused,
    MalformedPayload,
    Overloaded,
    PayloadTooLarge,
    Rejected,
    ResultNotReplayable,
    RetryLater,
    ThawError,
)
from thaw._event import Event, Ok, Outcome, Reject, Retry
from thaw._trace import SpanKind, Tracer, event_trace, log_fields
from thaw.backbone._contract import Backbone
from thaw.declarations._app import App, CapabilitySpec
from thaw.declarations._context import CapabilityEnv, Context, SyncRunner, run_sync_inline
from thaw.invocation._accounting import Accounted, Accounting
from thaw.invocation._deadlines import AsyncioWatchdog, resume
from thaw.invocation._idempotency import Claim, IdempotencyStore, MemoryIdempotencyStore
from thaw.invocation._shape import CapabilitiesByName

__all__ = ["Invoker", "CompiledCapability", "InvokerStatistics", "TracedCapability"]

_get_running_loop = asyncio._get_running_loop
_modules = sys.modules
_current_task = asyncio.current_task
_MAX_REASON = 512
_OVERLOAD_DELAY = 0.05
_DUPLICATE_DELAY = 0.5
_CLAIM_GRACE = 5.0  # a claim outlives the call's timeout by this much
_EMPTY = Ok(b"")
_OUTCOME_TYPES: frozenset[type] = frozenset((Ok, Retry, Reject))
_NOT_AN_EXCEPTION = "exceptions must derive from BaseException"  # CPython's TypeError text
_OUTCOMES_ARE_DECIDED = (
    "functions return their result and raise thaw errors (Rejected, RetryLater, ...); "
    "Outcomes (Ok, Retry, Reject) are what the runtime decides"
)


class _DeadlineHit(Exception):
    """Internal: the watched call ran past its deadline."""


class InvokerStatistics(msgspec.Struct, frozen=True):
    calls: dict[str, int]
    in_flight: dict[str, int]
    deadline_watches: int


class CompiledCapability:
    """One capability, precompiled for the invocation path: ``await cap(event) -> Outcome``."""

    __slots__ = (
        "_backoff",
        "_calls",
        "_decode",
        "_encode",
        "_env",
        "_faults",
        "_handler",
        "_idempotency",
        "_in_flight",
        "_limit",
        "_logger",
        "_max_attempts",
        "_max_payload",
        "_now",
        "_random",
        "_raw_output",
        "_shape",
        "_store",
        "_timeout",
        "_watchdog",
        "name",
        "spec",
    )

    def __init__(
        self,
        spec: CapabilitySpec,
        env: CapabilityEnv,
        *,
        store: IdempotencyStore | None,
        rand: Callable[[], float],
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self._env = env
        self._handler = spec.handler
        # 0: f()  1: f(payload)  2: f(ctx)  3: f(payload, ctx)
        self._shape = (1 if spec.takes_payload else 0) + (2 if spec.takes_context else 0)
        self._decode = _decoder_for(spec.input_type) if spec.takes_payload else None
        self._encode = msgspec.json.Encoder().encode
        self._raw_output = spec.output_type is bytes
        policy = spec.policy
        self._max_payload = policy.max_payload
        self._timeout = policy.timeout
        self._limit = policy.concurrency or 0
        self._in_flight = 0
        self._calls = 0
        self._faults = 0  # calls that failed through no fault of the caller (see _failed)
        self._max_attempts = policy.retry.max_attempts
        self._backoff = policy.retry.backoff
        self._idempotency = policy.idempotency
        self._store = store
        self._now = env.clock.now
        self._random = rand
        self._logger = env.logger
        self._watchdog: AsyncioWatchdog | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def faults(self) -> int:
        """Calls that failed by the function's or the runtime's fault: raised errors,
        timeouts (a ``Rejected`` is the function's answer, not a fault). A canary's
        error rate is faults over calls."""
        return self._faults

    async def __call__(self, event: Event) -> Outcome:
        data = event.data
        if len(data) > self._max_payload:
            return Reject(
                PayloadTooLarge.code,
                f"payload is {len(data)} bytes; capability {self.name!r} accepts at most "
                f"{self._max_payload}",
                event.attempt,
            )
        now = self._now()
        deadline = now + self._timeout
        if event.deadline is not None:
            if event.deadline <= now:
                return self._failed(event, DeadlineExceeded("the deadline passed before the call"))
            if event.deadline < deadline:
                deadline = event.deadline
        payload: Any = None
        if self._decode is not None:
            try:
                payload = self._decode(data)
            except msgspec.ValidationError as exc:
                return Reject(ContractError.code, _clip(str(exc)), event.attempt)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                # msgspec raises UnicodeDecodeError for invalid UTF-8 inside strings.
                reason = _clip(f"payload is not valid JSON: {exc}")
                return Reject(MalformedPayload.code, reason, event.attempt)
            except RecursionError:  # msgspec's depth limit: 2 KB of "[" reach it
                reason = "payload is not valid JSON: it is nested too deeply to decode"
                return Reject(MalformedPayload.code, reason, event.attempt)
            except Exception as exc:  # a contract's __post_init__ raising, say: never a crash
                reason = _clip(f"payload could not be decoded: {type(exc).__name__}: {exc}")
                return Reject(MalformedPayload.code, reason, event.attempt)
        if self._limit and self._in_flight >= self._limit:
            return Retry(
                _OVERLOAD_DELAY,
                f"capability {self.name!r} is at its concurrency limit of {self._limit}",
                Overloaded.code,
            )
        claim: tuple[str, int, bytes] | None = None
        if self._idempotency is not None:
            claimed = await self._claim(event, payload, deadline)
            if not isinstance(claimed, tuple):
                return claimed  # a stored result, or why we could not claim
            claim = claimed
        self._calls += 1
        self._in_flight += 1
        outcome: Outcome | None = None
        try:
            shape = self._shape
            if shape == 1:
                coro = self._handler(payload)
            elif shape == 3:
                coro = self._handler(payload, Context(self._env, event, deadline))
            elif shape == 0:
                coro = self._handler()
            else:
                coro = self._handler(Context(self._env, event, deadline))
            # asyncio._get_running_loop() costs ~250 ns inside a running loop, so ask
            # only when trio is loaded at all; without it we can only be on asyncio.
            if "trio" in _modules and _get_running_loop() is None:
                result = await self._call_in_scope(coro, deadline)
            else:
                try:
                    first = coro.send(None)
                except StopIteration as stop:
                    result = stop.value
                else:
                    result = await self._call_watched(coro, first, deadline)
        except _DeadlineHit:
            outcome = self._failed(
                event, DeadlineExceeded(f"cancelled after {self._timeout:g}s timeout or deadline")
            )
        except Exception as exc:
            outcome = self._failed(event, exc)
        except BaseException:
            if claim is not None:
                with anyio.CancelScope(shield=True):
                    await self._store_release(claim)
            raise
        finally:
            self._in_flight -= 1
        if outcome is None:
            if result is None:
                outcome = _EMPTY
            elif self._raw_output and type(result) is bytes:
                outcome = Ok(result)
            elif result.__class__ in _OUTCOME_TYPES:  # ~15 ns; type() costs a call more
                outcome = self._returned_outcome(event, result)
            else:
                try:
                    outcome = Ok(self._encode(result))
                except (TypeError, ValueError, RecursionError, msgspec.EncodeError) as exc:
                    outcome = Reject(
                        "result_invalid",
                        _clip(f"{self.name!r} returned a value that cannot be encoded: {exc}"),
                        event.attempt,
                    )
        if claim is not None:
            await self._settle(claim, outcome)
        return outcome

    async def _call_watched(
        self, coro: Coroutine[Any, Any, Any], first: Any, deadline: float
    ) -> Any:
        # current_task(loop) with the loop we saw last skips the ~250 ns running-loop
        # lookup; it answers None when another loop is running, and then we look it up.
        watchdog = self._watchdog
        task = _current_task(watchdog.loop) if watchdog is not None else None
        if task is None or watchdog is None:
            loop = _get_running_loop()
            assert loop is not None
            watchdog = self._watchdog = _watchdog_for(loop)
            task = _current_task(loop)
        assert task is not None
        watch = watchdog.watch(task, deadline - self._now())
        try:
            result = await resume(coro, first)
        except asyncio.CancelledError:
            if watch.fired and task.uncancel() == 0:
                raise _DeadlineHit from None
            raise
        finally:
            watch.disarm()
        if watch.fired:  # the function swallowed our cancellation and returned
            task.uncancel()
        return result

    async def _call_in_scope(self, coro: Coroutine[Any, Any, Any], deadline: float) -> Any:
        with anyio.CancelScope(deadline=anyio.current_time() + (deadline - self._now())) as scope:
            return await coro
        if scope.cancelled_caught:
            raise _DeadlineHit
        raise AssertionError("unreachable")  # pragma: no cover

    async def _claim(
        self, event: Event, payload: Any, deadline: float
    ) -> tuple[str, int, bytes] | Outcome:
        """Claim the idempotency key: (key, token, digest) to run, or the Outcome to answer now.

        The event id as key is bound to the payload's digest; the claim is fenced by the delivery
        (event id and attempt), so a redelivery takes over its own dead predecessor's.
        """
        policy = self._idempotency
        store = self._store
        assert policy is not None
        assert store is not None
        try:
            user_key = event.id if policy.key is None else policy.key(event, payload)
        except Exception as exc:
            return self._failed(event, exc)
        if not isinstance(user_key, str) or not user_key:
            return Reject(
                "idempotency_key_invalid",
                f"the idempotency key of {self.name!r} must be a non-empty str, got {user_key!r}",
                event.attempt,
            )
        key = f"{self._env.app}.{self.name}.{user_key}"
        hold = self._timeout + _CLAIM_GRACE
        # The event id names one request (an HTTP Idempotency-Key, a Nats-Msg-Id): another
        # payload under it is a mistake to refuse. A key the capability derives groups
        # payloads on purpose (one payment in two provider events), so it is not bound.
        digest = hashlib.sha256(event.data).digest()[:16] if policy.key is None else b""
        while True:
            try:
                claim = await store.claim(
                    key,
                    hold=hold,
                    ttl=policy.ttl,
                    digest=digest,
                    holder=event.id,
                    attempt=event.attempt,
                )
            except BackboneError as exc:  # the store is unreachable: the function has not run
                return self._failed(event, exc)
            state = claim.state
            if state == "claimed":
                return key, claim.token, digest
            if state != "busy":
                return self._settled(claim, user_key, event.attempt)
            remaining = deadline - self._now()
            if remaining <= 0:
                return Retry(
                    _DUPLICATE_DELAY,
                    f"a duplicate of key {user_key!r} is still running elsewhere",
                    DuplicateInProgress.code,
                )
            try:
                await store.wait_settled(key, timeout=remaining)
            except BackboneError as exc:
                return self._failed(event, exc)

    def _settled(self, claim: Claim, user_key: str, attempt: int) -> Outcome:
        """The answer to a duplicate: the stored result, or why there is none."""
        if claim.state == "done" and claim.replayable:
            return Ok(claim.result, replayed=True)
        if claim.state == "done":
            return Reject(
                ResultNotReplayable.code,
                f"{self.name!r} already ran for idempotency key {user_key!r}, but its result "
                "was too large to store, so it cannot be answered again (the function is not "
                "run twice)",
                attempt,
            )
        return Reject(
            IdempotencyKeyReused.code,
            f"idempotency key {user_key!r} of {self.name!r} was already used with another "
            "payload; use a new key for a new request",
            attempt,
        )

    async def peek_settled(self, event: Event) -> Outcome | None:
        """A finished run's answer for ``event`` from the idempotency store, or None.

        For a delivery that may not run any more (its attempts are spent): if an earlier
        delivery finished before it died, its stored result answers this one.
        """
        if self._idempotency is None or self._store is None:
            return None
        payload: Any = None
        if self._idempotency.key is not None and self._decode is not None:
            try:
                payload = self._decode(event.data)
            except Exception:  # any decoder failure: no key, so no stored answer to find
                return None
        try:
            user_key = (
                event.id if self._idempotency.key is None else self._idempotency.key(event, payload)
            )
            claim = await self._store.peek(f"{self._env.app}.{self.name}.{user_key}")
        except Exception:  # no answer from the store: the caller decides without one
            return None
        if claim is None or claim.state != "done":
            return None
        return self._settled(claim, str(user_key), event.attempt)

    async def _settle(self, claim: tuple[str, int, bytes], outcome: Outcome) -> None:
        """Store an Ok result for duplicates; otherwise free the key for the retry."""
        assert self._store is not None
        assert self._idempotency is not None
        # The function has run: a store failure now must not turn its Outcome into an
        # error (running it again would repeat the side effect). The claim then lapses
        # after its hold time, and a duplicate in the meantime waits or retries.
        try:
            if type(outcome) is Ok:
                await self._store.complete(
                    claim[0], claim[1], outcome.data, ttl=self._idempotency.ttl, digest=claim[2]
                )
            else:
                await self._store.release(claim[0], claim[1])
        except BackboneError as exc:
            self._logger.warning(
                "could not settle idempotency key %s of %s (%s); it lapses after its hold time",
                claim[0],
                self.name,
                exc,
            )

    async def _store_release(self, claim: tuple[str, int, bytes]) -> None:
        assert self._store is not None
        try:
            await self._store.release(claim[0], claim[1])
        except BackboneError as exc:
            self._logger.warning("could not release idempotency key %s: %s", claim[0], exc)

    def _returned_outcome(self, event: Event, result: object) -> Reject:
        """The function returned an Outcome: a mistake to name, never an Ok or a retry."""
        reason = f"capability {self.name!r} returned {type(result).__name__}(...): "
        return Reject("result_invalid", reason + _OUTCOMES_ARE_DECIDED, event.attempt)

    def _failed(self, event: Event, exc: Exception) -> Outcome:
        """Classify an exception into Retry or Reject (the one place that does)."""
        attempt = event.attempt
        if not isinstance(exc, Rejected):
            self._faults += 1
        if type(exc) is TypeError and str(exc) == _NOT_AN_EXCEPTION:
            # ``raise Reject(...)``: the same mistake on every attempt, so never retried.
            self._logger.error(
                "capability %s raised a value that is not an exception", self.name, exc_info=exc
            )
            reason = f"capability {self.name!r} raised a value that is not an exception: "
            return Reject(ConfigError.code, reason + _OUTCOMES_ARE_DECIDED, attempt)
        if isinstance(exc, ThawError):
            code, message = exc.code, exc.message
            if isinstance(exc, Rejected):
                chosen = exc.http_status if exc.http_status != Rejected.http_status else None
                return Reject(code, _clip(message), attempt, chosen)
            if not exc.retryable:
                return Reject(code, _clip(message), attempt)
        else:
            code, message = HandlerFailed.code, f"{type(exc).__name__}: {exc}"
            self._logger.error(
                "capability %s failed on attempt %d of event %s",
                self.name,
                attempt,
                event.id,
                exc_info=exc,
                extra=log_fields(self.name, event, self._env.revision),
            )
        if attempt >= self._max_attempts:
            return Reject(code, _clip(f"gave up after {attempt} attempts: {message}"), attempt)
        if isinstance(exc, RetryLater) and exc.delay is not None:
            delay = exc.delay
        else:
            delay = self._backoff.delay(attempt, self._random())
        return Retry(delay, _clip(message), code)


class TracedCapability(CompiledCapability):
    """A ``CompiledCapability`` that records each call as a span (an Invoker given a
    tracer compiles these; without one, the plain class runs and tracing costs nothing).

    The span is the FaaS invocation span (semantic conventions: ``faas.*``); the
    function's context sees it as its trace, so its publishes, calls and storage
    calls are its children."""

    __slots__ = ("_attributes", "_tracer")

    def __init__(
        self,
        spec: CapabilitySpec,
        env: CapabilityEnv,
        *,
        store: IdempotencyStore | None,
        rand: Callable[[], float],
        tracer: Tracer,
    ) -> None:
        super().__init__(spec, env, store=store, rand=rand)
        self._tracer = tracer
        policy = spec.policy
        self._attributes: dict[str, str | bool | int | float] = {
            "faas.invoked_name": spec.name,
            "faas.invoked_provider": "thaw",
            "thaw.app": env.app,
            "thaw.isolation": getattr(policy, "isolation", "shared"),
        }

    async def __call__(self, event: Event) -> Outcome:
        parent = event_trace(event)
        attributes = dict(self._attributes)
        attributes["faas.invocation_id"] = event.id
        attributes["faas.coldstart"] = self._calls == 0  # this instance's first call
        attributes["faas.trigger"] = _faas_trigger(event)
        attributes["thaw.attempt"] = event.attempt
        span = self._tracer.start_span(
            f"invoke {self.name}", kind=SpanKind.SERVER, parent=parent, attributes=attributes
        )
        traced = msgspec.structs.replace(event, traceparent=span.context.traceparent)
        try:
            outcome = await super().__call__(traced)
        except BaseException as exc:
            span.record_exception(exc)
            span.end()
            raise
        if type(outcome) is Reject:
            span.set_attribute("error.type", outcome.code)
            span.set_error(outcome.reason)
        elif type(outcome) is Retry:
            span.set_attribute("error.type", outcome.code)
            span.set_attribute("thaw.retry_delay", outcome.delay)
            span.set_error(outcome.reason)
        span.end()
        return outcome


def _faas_trigger(event: Event) -> str:
    """FaaS semantic conventions' ``faas.trigger``: http, pubsub, timer, datasource, other."""
    subject = event.subject
    if not subject:
        return "http" if event.headers else "other"
    if subject.startswith("$KV.") or subject.startswith("$O."):
        return "datasource"
    if ".schedule." in subject or subject.startswith("thaw.schedule"):
        return "timer"
    return "pubsub"


class Invoker(CapabilitiesByName[CompiledCapability]):
    """Compiles an App's capabilities and invokes them by name.

    ``backbone`` serves ``ctx.publish``/``ctx.kv``; ``idempotency_store`` defaults
    to an in-memory store; ``clock`` defaults to the monotonic clock; ``rand``
    draws the retry jitter (inject a constant in tests); ``run_sync`` serves
    ``ctx.run_sync`` (default: on the loop; hosts on CPython pass a thread pool).
    ``accounting`` (a host's): ``ctx.call`` between its capabilities is accounted there
    as trigger ``call``; None: not accounted.
    """

    def __init__(
        self,
        app: App,
        *,
        backbone: Backbone | None = None,
        idempotency_store: IdempotencyStore | None = None,
        clock: Clock | None = None,
        rand: Callable[[], float] = random.random,
        logger: logging.Logger | None = None,
        run_sync: SyncRunner = run_sync_inline,
        tracer: Tracer | None = None,
        accounting: Accounting | None = None,
        revision: str = "",
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.clock: Clock = clock or SystemClock()
        self.idempotency_store: IdempotencyStore = idempotency_store or MemoryIdempotencyStore(
            clock=self.clock
        )
        log = logger or logging.getLogger(f"thaw.app.{app.name}")
        self._capabilities: dict[str, CompiledCapability] = {
            name: _compile(
                spec,
                CapabilityEnv(
                    app=app.name,
                    capability=name,
                    backbone=backbone,
                    clock=self.clock,
                    logger=log,
                    access=spec.policy.access,
                    run_sync=run_sync,
                    tracer=tracer,
                    revision=revision,
                ),
                store=self.idempotency_store,
                rand=rand,
                tracer=tracer,
            )
            for name, spec in app.capabilities.items()
        }
        siblings: dict[str, Callable[[Event], Awaitable[Outcome]]] = dict(self._capabilities)
        if accounting is not None:  # ctx.call passes no host's capability: account it here
            siblings = {
                name: Accounted(compiled, accounting.series(compiled.spec, "call"))
                for name, compiled in self._capabilities.items()
            }
        for compiled in self._capabilities.values():
            compiled._env.siblings = siblings

    def statistics(self) -> InvokerStatistics:
        caps = self._capabilities.values()
        watches = {id(c._watchdog): c._watchdog for c in caps if c._watchdog is not None}
        return InvokerStatistics(
            calls={c.name: c.calls for c in caps},
            in_flight={c.name: c.in_flight for c in caps},
            deadline_watches=sum(w.pending() for w in watches.values()),
        )


def _compile(
    spec: CapabilitySpec,
    env: CapabilityEnv,
    *,
    store: IdempotencyStore | None,
    rand: Callable[[], float],
    tracer: Tracer | None,
) -> CompiledCapability:
    if tracer is None:
        return CompiledCapability(spec, env, store=store, rand=rand)
    return TracedCapability(spec, env, store=store, rand=rand, tracer=tracer)


_WATCHDOGS: dict[int, AsyncioWatchdog] = {}


def _watchdog_for(loop: asyncio.AbstractEventLoop) -> AsyncioWatchdog:
    """One watchdog per event loop, shared by every capability on it."""
    watchdog = _WATCHDOGS.get(id(loop))
    if watchdog is None or watchdog.loop is not loop:
        for key in [k for k, w in _WATCHDOGS.items() if w.loop.is_closed()]:
            del _WATCHDOGS[key]
        watchdog = _WATCHDOGS[id(loop)] = AsyncioWatchdog(loop)
    return watchdog


def _decoder_for(contract: Any) -> Callable[[bytes], Any]:
    if contract is bytes:
        return bytes
    return msgspec.json.Decoder(contract).decode


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
