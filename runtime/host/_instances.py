"""Instances and the instance pool: thawing a preloaded revision, and scaling to zero.

An **instance** is a thawed revision: an App whose ``on_start`` hooks have run,
with an invoker compiled for it. Isolation levels:

- ``shared`` (default): instances use the revision's modules, executed once at
  load; module state lives per revision, like a warm container. A thaw is just
  ``on_start``, so it is the cheap one.
- ``fresh``: every instance re-executes the module bodies into its own
  namespace; no module state leaks between instances, at the price of running
  the module bodies on each cold start.
- ``process``: see ``thaw.adapters.process.pool`` (Linux only, opt-in).

The pool keeps at most one live instance per revision (an async function serves
concurrent events; the invoker enforces per-capability concurrency limits). A
burst of events for a cold revision thaws once: the first event thaws, the
others wait for it. ``drop_idle`` stops an instance unused for ``idle_timeout``
seconds and not serving (scale to zero); the preloaded revision stays. Calls that
bypass ``invoke`` (a host's fast lane calls the live instance's compiled
capability directly, to save the pool's bookkeeping per call) mark the instance
``touched``: the reaper counts it as used at its next look (so such an instance
lives up to one reaper period longer), and a call running on it (counted by the
capability itself) keeps it. An event still waiting for a busy idempotency claim
does not hold an instance: if it is stopped meanwhile, the event's call runs after
``on_stop`` (on a ``shared`` instance, whatever ``on_stop`` closed then fails the
call, which is retried).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Literal

import anyio
import msgspec

from thaw._clock import Clock, SystemClock
from thaw._errors import ConfigError, RuntimeFault
from thaw._event import Event, Outcome, Retry
from thaw._trace import Tracer
from thaw.backbone._contract import Backbone
from thaw.declarations._app import App
from thaw.declarations._context import SyncRunner, run_sync_inline
from thaw.host._cold_starts import ColdStarts
from thaw.invocation._accounting import Accounting
from thaw.invocation._idempotency import IdempotencyStore, MemoryIdempotencyStore
from thaw.invocation._invoker import Invoker
from thaw.snapshots._revision import ModuleNamespace, Revision

__all__ = [
    "Instance",
    "InstancePool",
    "PoolStatistics",
    "Isolation",
    "InstanceStartFailed",
    "run_stop_hooks",
]

Isolation = Literal["shared", "fresh", "process"]
log = logging.getLogger("thaw.instances")
_START_RETRY_DELAY = 1.0


class InstanceStartFailed(RuntimeFault):
    code = "instance_start_failed"
    http_status = 503
    retryable = True


class PoolStatistics(msgspec.Struct, frozen=True):
    revision: str
    isolation: str
    live: bool
    thaws: int
    drops: int
    in_flight: int


class Instance:
    """A thawed revision, ready to invoke."""

    __slots__ = ("app", "invoker", "namespace", "last_used", "in_flight", "stopped", "touched")

    def __init__(self, app: App, invoker: Invoker, namespace: ModuleNamespace | None) -> None:
        self.app = app
        self.invoker = invoker
        self.namespace = namespace
        self.last_used = 0.0
        self.in_flight = 0  # calls through InstancePool.invoke
        self.stopped = False
        # Set by callers that call the instance's compiled capabilities directly (a
        # host's fast lane, see thaw.host._serving): the reaper then counts it as used
        # at its next look, and its calls in flight by the capabilities' own counters.
        self.touched = False

    def busy(self) -> bool:
        """Whether a call runs on this instance now."""
        if self.in_flight:
            return True
        return any(c.in_flight for c in self.invoker.capabilities.values())

    async def start(self) -> None:
        for hook in self.app.start_hooks:
            await hook()

    async def stop(self) -> None:
        """Run ``on_stop`` hooks (all of them, even if one fails) and forget fresh modules."""
        if self.stopped:
            return
        self.stopped = True
        try:
            await run_stop_hooks(self.app, log)
        finally:
            if self.namespace is not None:
                self.namespace.unregister()


async def run_stop_hooks(app: App, logger: logging.Logger) -> None:
    """Run ``on_stop`` hooks, last registered first; one failing is logged, the rest still run."""
    for hook in reversed(app.stop_hooks):
        try:
            await hook()
        except Exception:
            logger.exception("on_stop hook %r of app %s failed", hook, app.name)


class InstancePool:
    """Thaws instances of one revision on demand and drops them when idle."""

    def __init__(
        self,
        revision: Revision,
        *,
        isolation: Isolation = "shared",
        idle_timeout: float = 300.0,
        backbone: Backbone | None = None,
        idempotency_store: IdempotencyStore | None = None,
        clock: Clock | None = None,
        rand: Callable[[], float] = random.random,
        cold_starts: ColdStarts | None = None,
        on_change: Callable[[], None] | None = None,
        run_sync: SyncRunner = run_sync_inline,
        tracer: Tracer | None = None,
        accounting: Accounting | None = None,
    ) -> None:
        if isolation not in ("shared", "fresh"):
            raise ConfigError(
                f"isolation {isolation!r} is not served by InstancePool; use 'shared' or "
                "'fresh' (or thaw.adapters.process.pool.ProcessPool for 'process')"
            )
        if not idle_timeout > 0:
            raise ConfigError(f"idle_timeout must be positive, got {idle_timeout!r}")
        self.revision = revision
        self.isolation = isolation
        self.idle_timeout = idle_timeout
        self._clock: Clock = clock or SystemClock()
        self._backbone = backbone
        self._rand = rand
        self._run_sync = run_sync
        self._tracer = tracer
        self._accounting = accounting  # the host's: its instances' ctx.call are counted there
        self._cold_starts = cold_starts
        self._on_change = on_change  # told when the live instance comes or goes
        # One store per pool, so idempotency survives instances coming and going.
        self._store = idempotency_store or MemoryIdempotencyStore(clock=self._clock)
        # Compiled once per revision: a shared thaw reuses it (and every isolation asks
        # it for stored results, which only need the store and the key rules).
        self._reference_invoker = self._invoker_for(revision.app)
        self._shared_invoker = self._reference_invoker if isolation == "shared" else None
        self._instance: Instance | None = None
        self._thawing: list[anyio.Event] | None = None
        self._thaws = 0
        self._drops = 0
        self._retired = (0, 0)  # calls and faults of stopped fresh instances

    def _invoker_for(self, app: App) -> Invoker:
        return Invoker(
            app,
            backbone=self._backbone,
            idempotency_store=self._store,
            clock=self._clock,
            rand=self._rand,
            run_sync=self._run_sync,
            tracer=self._tracer,
            accounting=self._accounting,
            revision=self.revision.revision_id,
        )

    @property
    def live(self) -> bool:
        return self._instance is not None

    def health(self) -> tuple[int, int]:
        """Calls and faults of this pool's instances so far (see CompiledCapability.faults)."""
        calls, faults = self._retired
        invokers = {id(self._reference_invoker): self._reference_invoker}
        if self._instance is not None:
            invokers[id(self._instance.invoker)] = self._instance.invoker
        for invoker in invokers.values():
            for compiled in invoker.capabilities.values():
                calls += compiled.calls
                faults += compiled.faults
        return calls, faults

    @property
    def instance(self) -> Instance | None:
        """The live instance, if any (it may be stopped by the next ``drop_idle``)."""
        return self._instance

    def statistics(self) -> PoolStatistics:
        instance = self._instance
        return PoolStatistics(
            revision=self.revision.revision_id,
            isolation=self.isolation,
            live=instance is not None,
            thaws=self._thaws,
            drops=self._drops,
            in_flight=_in_flight(instance) if instance else 0,
        )

    async def invoke(self, capability: str, event: Event) -> Outcome:
        """Invoke on the live instance, thawing one first if there is none (a cold start)."""
        instance = self._instance
        if instance is None:
            started = time.perf_counter()
            try:
                instance, thawed = await self._thaw()
            except InstanceStartFailed as exc:
                return Retry(_START_RETRY_DELAY, exc.message, exc.code)
            if thawed and self._cold_starts is not None:
                self._cold_starts.observe(capability, self.isolation, time.perf_counter() - started)
        compiled = instance.invoker.capabilities.get(capability)
        if compiled is None:
            return await instance.invoker.invoke(capability, event)  # the unknown-name Reject
        instance.in_flight += 1
        try:
            return await compiled(event)
        finally:
            instance.in_flight -= 1
            instance.last_used = self._clock.now()

    async def peek_settled(self, capability: str, event: Event) -> Outcome | None:
        """The stored outcome of ``event`` if an earlier delivery finished it (no thaw)."""
        compiled = self._reference_invoker.capabilities.get(capability)
        return None if compiled is None else await compiled.peek_settled(event)

    async def thaw(self) -> Instance:
        """The live instance, thawing it if needed; concurrent callers share one thaw."""
        return (await self._thaw())[0]

    async def _thaw(self) -> tuple[Instance, bool]:
        """The live instance and whether this call thawed it."""
        while self._instance is None:
            waiters = self._thawing
            if waiters is None:
                break
            # Someone else is thawing: wait for them (an Event only when there is contention).
            done = anyio.Event()
            waiters.append(done)
            await done.wait()
        else:
            return self._instance, False
        self._thawing = waiters = []
        try:
            instance = await self._new_instance()
            self._instance = instance
            self._thaws += 1
            if self._on_change is not None:
                self._on_change()
            return instance, True
        finally:
            self._thawing = None
            for done in waiters:
                done.set()

    async def _new_instance(self) -> Instance:
        namespace: ModuleNamespace | None = None
        try:
            if self._shared_invoker is not None:
                instance = Instance(self.revision.app, self._shared_invoker, None)
            else:
                app, namespace = self.revision.execute_fresh()
                instance = Instance(app, self._invoker_for(app), namespace)
            await instance.start()
        except Exception as exc:
            if namespace is not None:
                namespace.unregister()
            log.exception("starting an instance of %r failed", self.revision)
            raise InstanceStartFailed(
                f"starting an instance of app {self.revision.manifest.app!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        instance.last_used = self._clock.now()
        return instance

    async def drop_idle(self) -> bool:
        """Stop the instance if idle for ``idle_timeout`` and not serving; True if dropped."""
        instance = self._instance
        if instance is None:
            return False
        if instance.touched:  # used through a fast lane since the last look: used now
            instance.touched = False
            instance.last_used = self._clock.now()
            return False
        if instance.busy() or self._clock.now() - instance.last_used < self.idle_timeout:
            return False
        await self.scale_to_zero()
        return True

    async def scale_to_zero(self) -> None:
        """Stop the live instance now (in-flight calls finish on it); the revision stays."""
        instance, self._instance = self._instance, None
        if instance is not None:
            self._drops += 1
            if instance.invoker is not self._reference_invoker:  # a fresh one: keep its counts
                calls, faults = self._retired
                for compiled in instance.invoker.capabilities.values():
                    calls += compiled.calls
                    faults += compiled.faults
                self._retired = (calls, faults)
            if self._on_change is not None:
                self._on_change()
            with anyio.CancelScope(shield=True):
                await instance.stop()

    async def run_reaper(self, *, interval: float | None = None) -> None:
        """Drop idle instances until cancelled (run it in the host's task group)."""
        period = interval if interval is not None else max(self.idle_timeout / 4, 0.01)
        while True:
            await self._clock.sleep_until(self._clock.now() + period)
            await self.drop_idle()

    async def aclose(self) -> None:
        await self.scale_to_zero()


def _in_flight(instance: Instance) -> int:
    """Calls running on the instance's capabilities (an idempotency wait is not one)."""
    return sum(c.in_flight for c in instance.invoker.capabilities.values())
