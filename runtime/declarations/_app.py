"""App and capability declarations.

An ``App`` is a named set of capabilities. ``@app.capability(*triggers, ...)``
reads the function's input and output contracts from its annotations, validates
triggers and policies, and records a frozen ``CapabilitySpec``. Nothing here
runs per invocation; the invoker compiles specs into its fast-path records.

Function shapes accepted (all ``async def``)::

    async def f() -> Out
    async def f(payload: In) -> Out
    async def f(ctx: Context) -> Out
    async def f(payload: In, ctx: Context) -> Out

``In``/``Out`` are msgspec-compatible types (Structs, dicts, lists, scalars);
``bytes`` as ``In`` receives the raw data; ``-> None`` answers an empty body.
``Out`` is never an Outcome (``Ok``/``Retry``/``Reject``): those are what the
runtime decides. A function annotated to return one is refused here; one that
returns or raises one anyway gets a non-retryable answer from the invoker.
The body is not scanned for ``return Reject(...)``: that would read and parse
the source of every capability at import, on the thaw path, and a snapshot's
modules may have no source to read.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

from thaw._errors import ConfigError
from thaw._event import Ok, Reject, Retry
from thaw.declarations._batches import (
    MAX_JOIN_TIMEOUT,
    JoinMark,
    OnTimeout,
    fan_out,
    join_subject,
    join_wrapper,
)
from thaw.declarations._context import Context
from thaw.declarations._policy import (
    Access,
    CanaryPolicy,
    Idempotency,
    Policy,
    RetryPolicy,
    _positive,
)
from thaw.declarations._slo import Objective, check_objectives
from thaw.declarations._triggers import HttpTrigger, SubjectTrigger, Trigger, stream

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # bytes of input a capability takes unless it says more

__all__ = ["App", "CapabilitySpec", "Hook"]

Handler = Callable[..., Coroutine[Any, Any, Any]]
Hook = Callable[[], Awaitable[None]]
F = TypeVar("F", bound=Handler)
_PARAMETER = re.compile(r"\{[^{}]*\}")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}\Z")
_TRIGGER_TYPES = typing.get_args(Trigger)
_OUTCOME_TYPES = (Ok, Retry, Reject)


class CapabilitySpec(msgspec.Struct, frozen=True, kw_only=True):
    """One capability: a function plus everything the runtime needs to call it."""

    name: str
    handler: Handler
    triggers: tuple[Trigger, ...]
    policy: Policy
    input_type: Any  # a msgspec-compatible type, or None when the function takes no payload
    output_type: Any  # None when the function returns nothing
    takes_payload: bool
    takes_context: bool
    description: str = ""


class App:
    """A named set of capabilities: ``app = App("payments")``."""

    def __init__(
        self, name: str, *, idle_timeout: float = 300.0, canary: CanaryPolicy | None = None
    ) -> None:
        """``idle_timeout``: seconds without events after which a host stops an
        instance (scale to zero; the loaded revision stays); capabilities may
        override it. ``canary``: when a host rolls a failing canary back on its own
        (None: the default ``CanaryPolicy()``)."""
        _check_name("app", name)
        _positive("idle_timeout", idle_timeout)
        if canary is not None and not isinstance(canary, CanaryPolicy):
            raise ConfigError(f"canary must be a CanaryPolicy, got {canary!r}")
        self.name = name
        self.idle_timeout = float(idle_timeout)
        self.canary = canary or CanaryPolicy()
        self._capabilities: dict[str, CapabilitySpec] = {}
        self._on_start: list[Hook] = []
        self._on_stop: list[Hook] = []

    def __repr__(self) -> str:
        return f"App({self.name!r}, capabilities={list(self._capabilities)})"

    @property
    def capabilities(self) -> Mapping[str, CapabilitySpec]:
        return self._capabilities

    @property
    def start_hooks(self) -> tuple[Hook, ...]:
        return tuple(self._on_start)

    @property
    def stop_hooks(self) -> tuple[Hook, ...]:
        return tuple(self._on_stop)

    def capability(
        self,
        *triggers: Trigger,
        name: str | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        idempotency: Idempotency | None = None,
        concurrency: int | None = None,
        max_payload: int | None = None,
        max_result: int = 8 * 1024 * 1024,
        access: Access | None = None,
        isolation: str = "shared",
        idle_timeout: float | None = None,
        slo: Objective | Sequence[Objective] | None = None,
    ) -> Callable[[F], F]:
        """Declare an async function as a capability of this app.

        ``timeout`` (seconds) bounds every call; ``retry`` bounds attempts and sets
        the backoff; ``idempotency`` makes duplicates return the first result;
        ``concurrency`` caps calls in flight (beyond it: ``Retry`` with code
        ``overloaded``); ``max_payload`` caps input bytes (default 1 MiB, or the
        largest ``max_body`` of its http routes), ``max_result`` the bytes
        of an answer (larger: ``result_too_large``); ``access`` lists the
        subjects and KV buckets the function may touch (None: anything);
        ``isolation`` is how a host runs its instances (``shared``, ``fresh`` or
        ``process``), ``idle_timeout`` overrides the app's scale-to-zero time.
        ``slo`` is one objective or a list (``Latency(0.99, within=0.2)`` for sync
        paths, ``Age``/``Completion`` for async ones, ``Availability``): hosts export
        where each stands, ``thaw slo APP`` prints it (docs/slo.md).
        """
        for trigger in triggers:
            if not isinstance(trigger, _TRIGGER_TYPES):
                raise ConfigError(
                    f"{trigger!r} is not a trigger; use thaw.http(...), stream(...), "
                    "subject(...), schedule(...), objects(...) or kv(...)"
                )
        if max_payload is None:  # a route that takes large bodies makes its capability take them
            bodies = [t.max_body for t in triggers if isinstance(t, HttpTrigger) and t.max_body]
            max_payload = max([DEFAULT_MAX_PAYLOAD, *bodies])
        policy = Policy(
            timeout=timeout,
            retry=retry if retry is not None else RetryPolicy(),
            idempotency=idempotency,
            concurrency=concurrency,
            max_payload=max_payload,
            max_result=max_result,
            access=access,
            isolation=isolation,
            idle_timeout=idle_timeout,
        )

        sync, asynchronous = _paths(triggers)

        def register(function: F) -> F:
            chosen = function.__name__ if name is None else name
            objectives = check_objectives(
                f"capability {chosen!r}", slo, sync=sync, asynchronous=asynchronous
            )
            declared = msgspec.structs.replace(policy, slo=objectives) if objectives else policy
            spec = _build_spec(function, chosen, tuple(triggers), declared)
            self._add(spec)
            return function

        return register

    def join(
        self,
        *,
        name: str | None = None,
        timeout: float = 3600.0,
        on_timeout: OnTimeout = "run",
        call_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        idempotency: Idempotency | None = None,
        concurrency: int | None = None,
        access: Access | None = None,
    ) -> Callable[[F], F]:
        """Declare the join of a fan-out: ``async def report(batch: Batch[T][, ctx])``.

        It runs once when every child of a ``ctx.fan_out(..., join=report)`` batch has
        reported, or ``timeout`` seconds after the fan-out with what has reported:
        ``on_timeout="run"`` calls it with ``timed_out=True`` and ``missing`` filled,
        ``"dead_letter"`` dead-letters the batch (code ``batch_timed_out``). It is a
        capability with a stream trigger on ``thaw.join.<app>.<name>``; the other
        options are ``capability``'s (``call_timeout`` is its ``timeout``). Like
        every capability it is at-least-once: key ``idempotency`` by the batch id.
        """
        _positive("timeout", timeout)
        if timeout > MAX_JOIN_TIMEOUT:
            raise ConfigError(f"join timeout {timeout!r} is above {MAX_JOIN_TIMEOUT:g} s (a week)")
        if on_timeout not in ("run", "dead_letter"):
            raise ConfigError(f"on_timeout must be 'run' or 'dead_letter', got {on_timeout!r}")

        if retry is not None and retry.max_attempts < 2:
            raise ConfigError("a join needs retry max_attempts >= 2: its deadline is a redelivery")

        def register(function: F) -> F:
            chosen = function.__name__ if name is None else name
            _check_name("capability", chosen)
            if not inspect.iscoroutinefunction(function):
                raise ConfigError(f"join {chosen!r} must be an 'async def' function")
            arity = len(inspect.signature(function).parameters)
            if arity not in (1, 2):
                raise ConfigError(f"join {chosen!r} takes (batch: Batch[T]) or (batch, ctx)")
            wrapper = join_wrapper(function, app=self.name, name=chosen, takes_context=arity == 2)
            self.capability(
                stream(join_subject(self.name, chosen)),
                name=chosen,
                timeout=call_timeout,
                retry=retry,
                idempotency=idempotency,
                concurrency=concurrency,
                access=access,
            )(wrapper)
            mark = JoinMark(self.name, chosen, float(timeout), on_timeout)
            # ctx.fan_out(..., join=function) starts a batch through this
            function.__thaw_fan_out__ = functools.partial(fan_out, mark=mark)  # type: ignore[attr-defined]
            return function

        return register

    def on_start(self, hook: Hook) -> Hook:
        """Run ``hook`` when an instance starts (create clients and per-instance state here)."""
        if not inspect.iscoroutinefunction(hook):
            raise ConfigError(f"on_start hook {hook!r} must be an async function")
        self._on_start.append(hook)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        """Run ``hook`` when an instance stops (close what on_start opened)."""
        if not inspect.iscoroutinefunction(hook):
            raise ConfigError(f"on_stop hook {hook!r} must be an async function")
        self._on_stop.append(hook)
        return hook

    def _add(self, spec: CapabilitySpec) -> None:
        if spec.name in self._capabilities:
            raise ConfigError(f"app {self.name!r} already has a capability named {spec.name!r}")
        routes = {
            (t.method, _route_shape(t)): name
            for name, other in self._capabilities.items()
            for t in other.triggers
            if isinstance(t, HttpTrigger)
        }
        for trigger in spec.triggers:
            if not isinstance(trigger, HttpTrigger):
                continue
            shape = (trigger.method, _route_shape(trigger))
            if shape in routes:
                raise ConfigError(
                    f"route {trigger.method} {trigger.path} is already served by capability "
                    f"{routes[shape]!r}"
                )
            routes[shape] = spec.name
        self._capabilities[spec.name] = spec


def _check_path_params(where: str, triggers: tuple[Trigger, ...], input_type: Any) -> None:
    """A route's path parameters must have somewhere to go: the fields of a Struct
    payload, a dict payload, or ``ctx.params`` (bytes or no payload). Refused here,
    at import, instead of answering 422 to every request (or dropping the value)."""
    if input_type is bytes or input_type is Any:
        return
    info = msgspec.inspect.type_info(input_type)
    for trigger in triggers:
        if not isinstance(trigger, HttpTrigger) or not trigger.params:
            continue
        route = f"route {trigger.method} {trigger.path}"
        names = [name for name, _ in trigger.params]
        if isinstance(info, msgspec.inspect.DictType):
            continue
        if isinstance(info, msgspec.inspect.StructType):
            fields = {f.encode_name for f in info.fields}
            lost = [name for name in names if name not in fields]
            if lost:
                raise ConfigError(
                    f"{where}: {route} has path parameter {lost[0]!r}, which is not a field of "
                    f"{getattr(input_type, '__name__', input_type)}: add the field, or take "
                    "bytes and read ctx.params"
                )
            continue
        raise ConfigError(
            f"{where}: {route} has path parameter {names[0]!r}, but the payload type "
            f"{input_type!r} cannot hold it: take a Struct with that field, a dict, or bytes "
            "(then read ctx.params)"
        )


def _paths(triggers: tuple[Trigger, ...]) -> tuple[bool, bool]:
    """Whether a capability has sync paths (routes that answer, subject requests, or
    no trigger: then it is called with ``ctx.call``) and async ones (messages). An
    ``http(enqueue=...)`` route is neither: it publishes, and the capability consuming
    that subject (its ``stream(...)`` trigger) is what runs and is measured."""
    sync = not triggers or any(
        isinstance(t, SubjectTrigger) or (isinstance(t, HttpTrigger) and t.enqueue is None)
        for t in triggers
    )
    asynchronous = any(not isinstance(t, SubjectTrigger | HttpTrigger) for t in triggers)
    return sync, asynchronous


def _route_shape(trigger: HttpTrigger) -> str:
    """The path with parameter names erased: /items/{id} and /items/{key:int} collide."""
    return _PARAMETER.sub("{}", trigger.path)


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{kind} name {name!r} must start with a letter and hold only letters, digits, "
            "'_' and '-' (at most 64 characters)"
        )


def _refuse_outcome_output(where: str, output_type: Any) -> None:
    returned = [t for t in (output_type, *typing.get_args(output_type)) if t in _OUTCOME_TYPES]
    if returned:
        raise ConfigError(
            f"{where} is annotated to return {' | '.join(t.__name__ for t in returned)}: "
            "functions return their result and raise thaw errors (Rejected, RetryLater, ...); "
            "Outcomes (Ok, Retry, Reject) are what the runtime decides"
        )


def _build_spec(
    function: Handler, name: str, triggers: tuple[Trigger, ...], policy: Policy
) -> CapabilitySpec:
    _check_name("capability", name)
    where = f"capability {name!r} ({getattr(function, '__qualname__', function)!r})"
    if not inspect.iscoroutinefunction(function):
        raise ConfigError(f"{where} must be an 'async def' function")
    try:
        # include_extras keeps Annotated[..., msgspec.Meta(...)] constraints on the contract.
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as exc:
        raise ConfigError(f"{where}: cannot resolve its annotations: {exc}") from exc
    parameters = list(inspect.signature(function).parameters.values())
    takes_payload = takes_context = False
    input_type: Any = None
    for parameter in parameters:
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            raise ConfigError(f"{where}: parameter {parameter.name!r} must be positional")
        annotation = hints.get(parameter.name, inspect.Parameter.empty)
        if annotation is Context:
            if takes_context:
                raise ConfigError(f"{where} takes two Context parameters")
            takes_context = True
        elif takes_payload or takes_context:
            raise ConfigError(
                f"{where}: expected (payload, ctx: Context); parameter {parameter.name!r} "
                "is extra or out of order"
            )
        else:
            if annotation is inspect.Parameter.empty:
                raise ConfigError(
                    f"{where}: annotate the payload parameter {parameter.name!r} with its "
                    "contract type (a msgspec Struct, dict, bytes, ...)"
                )
            takes_payload = True
            input_type = annotation
    output_type = hints.get("return", Any)
    if output_type is type(None):
        output_type = None
    _refuse_outcome_output(where, output_type)
    for kind, contract in (("input", input_type), ("output", output_type)):
        if contract is None or contract is Any:
            continue
        try:
            msgspec.json.Decoder(contract)
            # Decoder accepts any class as a "custom type" that needs a dec_hook, which
            # the invoker never passes; schema generation refuses those, nested ones too.
            msgspec.json.schema(contract)
        except TypeError as exc:
            reason = str(exc).strip().splitlines()[-1]
            raise ConfigError(
                f"{where}: its {kind} type {contract!r} is not a supported contract type: {reason}"
            ) from exc
    if takes_payload:
        _check_path_params(where, triggers, input_type)
    return CapabilitySpec(
        name=name,
        handler=function,
        triggers=triggers,
        policy=policy,
        input_type=input_type,
        output_type=output_type,
        takes_payload=takes_payload,
        takes_context=takes_context,
        description=inspect.getdoc(function) or "",
    )
