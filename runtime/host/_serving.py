"""What a host's transports call: an app's capabilities, each reaching its revision's pool.

``ServingInvoker`` has the shape of an ``Invoker`` (``app``, ``capabilities``,
``capability(name)``, ``invoke``, ``clock``, ``idempotency_store``), so the HTTP
server, the stream workers, the request/reply services and the edge adapter serve
a host exactly as they would serve one invoker. Each ``ServedCapability`` routes
an event to a revision (``RevisionRouter.pick``: by weight, sticky by event id)
and to the pool of the capability's isolation there, which thaws an instance if
none is live (a cold start) and scales it to zero when idle.

The capabilities and triggers a host serves are those of its primary revision
(the one it was opened with): a revision added later with other capabilities
answers the ones the primary declares; its own new ones need a host opened on it.

``source_revision(app)`` wraps an App imported from source (``open_host(app)``)
as a revision without a snapshot: ``shared`` and ``process`` work, ``fresh``
needs module bodies to execute again and so a snapshot.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from time import perf_counter as _perf_counter
from typing import Any

import msgspec

from thaw._clock import Clock
from thaw._event import Event, Outcome
from thaw._trace import Tracer
from thaw.declarations._app import App, CapabilitySpec
from thaw.host._router import RevisionRouter
from thaw.invocation._accounting import Accounting, cpu_of_steps
from thaw.invocation._idempotency import IdempotencyStore
from thaw.invocation._shape import CapabilitiesByName
from thaw.snapshots._format import Manifest, SnapshotPayload, current_magic
from thaw.snapshots._revision import LoadTimings, Revision

__all__ = ["ServedCapability", "ServingInvoker", "ServingStatistics", "source_revision"]


class ServingStatistics(msgspec.Struct, frozen=True):
    calls: dict[str, int]
    in_flight: dict[str, int]


class ServedCapability:
    """One capability of a host: ``await capability(event) -> Outcome`` through the pools.

    While one revision has all the traffic and the capability's instance is live,
    calls go straight to that instance's compiled capability (the lane, found once
    per ``RevisionRouter.epoch``); otherwise through the router, which thaws.

    Every call is accounted here (``thaw.invocation._accounting``) under the trigger
    kind of this handle: ``via(trigger)`` gives the handle of one kind (a stream worker's,
    an HTTP route's); the plain one (``ServingInvoker.capability``) counts an event with
    a subject as ``subject`` and one without as ``http``.
    """

    __slots__ = (
        "name",
        "spec",
        "_account",
        "_epoch",
        "_instance",
        "_lane",
        "_router",
        "_series",
        "_vias",
    )

    def __init__(
        self,
        spec: CapabilitySpec,
        router: RevisionRouter,
        accounting: Accounting | None = None,
        trigger: str | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self._router = router
        self._epoch = -1
        self._lane: Callable[[Event], Awaitable[Outcome]] | None = None
        self._instance: Any = None
        accounting = accounting if accounting is not None else Accounting()
        self._account = accounting.account(spec)
        # None: the plain handle, whose series is looked up per event (see the docstring).
        self._series = self._account.series(trigger) if trigger else None
        self._vias: dict[str, ServedCapability] = {}

    def via(self, trigger: str) -> ServedCapability:
        """This capability as reached by one trigger kind (``TRIGGERS``), for accounting."""
        found = self._vias.get(trigger)
        if found is None:
            found = ServedCapability(self.spec, self._router, self._account.accounting, trigger)
            self._vias[trigger] = found
        return found

    async def __call__(self, event: Event) -> Outcome:
        account = self._account
        series = self._series or account.series("subject" if event.subject else "http")
        account.in_flight += 1
        countdown = account.cpu_countdown - 1
        if countdown:
            account.cpu_countdown = countdown
            weight = 0
        else:
            weight = account.cpu_sample()
        start = _perf_counter()
        try:
            if self._epoch == self._router.epoch:
                self._instance.touched = True
                call = self._lane(event)  # type: ignore[misc]
            else:
                call = self._route(event)
            if weight:  # this call's own steps, not what runs while it waits
                outcome = await cpu_of_steps(call, account, weight)
            else:
                outcome = await call
        finally:
            account.in_flight -= 1
        seconds = _perf_counter() - start
        series.record(outcome, seconds, len(event.data))
        return outcome

    async def _route(self, event: Event) -> Outcome:
        router = self._router
        epoch = router.epoch
        found = router.lane(self.name)
        if found is None:
            self._epoch = -1
            return await router.invoke(self.name, event)  # may thaw: the next call finds it
        self._lane, self._instance = found
        self._epoch = epoch
        self._instance.touched = True
        return await self._lane(event)

    async def peek_settled(self, event: Event) -> Outcome | None:
        """A finished earlier delivery's answer for ``event`` (see CompiledCapability)."""
        return await self._router.peek_settled(self.name, event)


class ServingInvoker(CapabilitiesByName[ServedCapability]):
    """An Invoker's shape over a ``RevisionRouter`` (see the module docstring)."""

    def __init__(
        self,
        app: App,
        router: RevisionRouter,
        *,
        clock: Clock,
        idempotency_store: IdempotencyStore,
        accounting: Accounting | None = None,
    ) -> None:
        self.app = app
        # What every invocation through this host cost (thaw.invocation._accounting).
        self.accounting = accounting if accounting is not None else Accounting()
        self.router = router
        self.clock = clock
        self.idempotency_store = idempotency_store
        self.tracer: Tracer | None = None  # the host's, for its HTTP server spans
        self._capabilities: dict[str, ServedCapability] = {
            name: ServedCapability(spec, router, self.accounting)
            for name, spec in app.capabilities.items()
        }

    def capability_via(self, name: str, trigger: str) -> ServedCapability:
        """Capability ``name`` as one trigger kind reaches it (its calls accounted so)."""
        return self.capability(name).via(trigger)

    def statistics(self) -> ServingStatistics:
        """Calls and calls running per capability, over the live ``shared``/``fresh``
        instances (a ``process`` instance counts in its own process)."""
        calls = dict.fromkeys(self._capabilities, 0)
        in_flight = dict.fromkeys(self._capabilities, 0)
        for loaded in self.router.loaded.values():
            for pool in loaded.pools.values():
                instance = getattr(pool, "instance", None)
                if instance is None:
                    continue
                for name, compiled in instance.invoker.capabilities.items():
                    if name in calls:
                        calls[name] += compiled.calls
                        in_flight[name] += compiled.in_flight
        return ServingStatistics(calls=calls, in_flight=in_flight)


def source_revision(app: App) -> Revision:
    """An App imported from source, as a revision (no snapshot: no ``fresh`` isolation)."""
    manifest = Manifest(
        app=app.name,
        entry_module="",
        app_attribute="",
        python=sys.version.split()[0],
        implementation=sys.implementation.cache_tag or "unknown",
        magic=current_magic(),
    )
    payload = SnapshotPayload(revision=f"source-{app.name}", manifest=manifest, modules=[])
    timings = LoadTimings(
        read=0.0, validate=0.0, unmarshal=0.0, preload=0.0, execute=0.0, modules={}, total=0.0
    )
    return Revision(payload=payload, namespace=None, app=app, timings=timings)
