"""The shape transports call: an invoker of capabilities, each ``await capability(event)``.

An ``Invoker`` (one app, compiled) and a host's ``ServingInvoker`` (capabilities
routed through revisions and instance pools) both have it, so an adapter (HTTP,
stream workers, request/reply, edge) serves either without knowing which.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

from thaw._clock import Clock
from thaw._errors import UnknownCapability
from thaw._event import Event, Outcome, Reject
from thaw.declarations._app import App, CapabilitySpec
from thaw.invocation._idempotency import IdempotencyStore

__all__ = ["Capability", "CapabilityInvoker", "CapabilitiesByName"]


class Capability(Protocol):
    """One capability, ready to call per event."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> CapabilitySpec: ...

    async def __call__(self, event: Event) -> Outcome: ...

    async def peek_settled(self, event: Event) -> Outcome | None:
        """A finished earlier run's answer for ``event`` from the idempotency store."""
        ...


class CapabilityInvoker(Protocol):
    """An app's capabilities by name (``Invoker``, ``ServingInvoker``)."""

    @property
    def app(self) -> App: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def idempotency_store(self) -> IdempotencyStore: ...

    @property
    def capabilities(self) -> Mapping[str, Capability]: ...

    def capability(self, name: str) -> Capability: ...

    async def invoke(self, name: str, event: Event) -> Outcome: ...


C = TypeVar("C", bound=Capability)


class CapabilitiesByName(Generic[C]):
    """Lookup and ``invoke`` by name over ``_capabilities``: what ``Invoker`` and a host's
    ``ServingInvoker`` share (each fills ``app`` and ``_capabilities``)."""

    app: App
    _capabilities: dict[str, C]

    @property
    def capabilities(self) -> Mapping[str, C]:
        return self._capabilities

    def capability(self, name: str) -> C:
        """The capability ``name`` (adapters keep it and call it per event)."""
        try:
            return self._capabilities[name]
        except KeyError:
            raise UnknownCapability.naming(self.app.name, name, self._capabilities) from None

    async def invoke(self, name: str, event: Event) -> Outcome:
        """Invoke capability ``name``; an unknown name is a ``Reject``, not an exception."""
        capability = self._capabilities.get(name)
        if capability is None:
            error = UnknownCapability.naming(self.app.name, name, self._capabilities)
            return Reject(error.code, error.message, event.attempt)
        return await capability(event)
