"""Several live revisions of one app, with traffic weights (canary, blue/green, rollback).

A revision is preloaded (validated, modules executed) before it gets traffic:
``preload`` hands the load to the host's ``run_blocking`` (the core starts no
threads: a host on CPython passes ``thaw.adapters.threads.run_in_thread`` so the
event loop keeps serving the current revision meanwhile; Pyodide keeps the
default, ``run_inline``), and registers it with weight 0 unless told otherwise.
``set_weights`` shifts traffic; routing is sticky per event id (a hash, not a
random draw), so redeliveries of one event reach the same revision while
weights are unchanged.

Each loaded revision (``LoadedRevision``) has one pool per isolation its
capabilities declare (``Policy.isolation``): an ``InstancePool`` for ``shared``
and for ``fresh``, and for ``process`` whatever ``process_pools`` makes (the
core cannot fork: a host on Linux passes ``thaw.adapters.process.pool``'s
factory; without one a ``process`` capability is a ``ConfigError`` at load, never
a silent downgrade). A pool's idle time is the longest of its capabilities'
(``Policy.idle_timeout``, else the app's ``idle_timeout``, else the router's
override): an instance serving several capabilities stays while any of them
would keep it. ``run_reaper`` scales idle instances to zero for every pool.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio
import msgspec

from thaw._clock import Clock, SystemClock
from thaw._errors import ConfigError
from thaw._event import Event, Outcome, Retry
from thaw.host._cold_starts import ColdStarts, ColdStartSeries
from thaw.host._instances import InstancePool, InstanceStartFailed, PoolStatistics
from thaw.snapshots._revision import Revision, load_revision

__all__ = [
    "BlockingRunner",
    "LoadedRevision",
    "Pool",
    "ProcessPools",
    "RevisionHealth",
    "RevisionRouter",
    "RouterStatistics",
    "run_inline",
]

T = TypeVar("T")
BlockingRunner = Callable[[Callable[[], Any]], Awaitable[Any]]
"""Runs blocking work (a snapshot load) and returns its result: in a thread, or inline."""

REAPER_MAX_PERIOD = 30.0  # seconds between idle checks at most (an instance may outlive
# its idle time by up to a quarter of it, and never by more than this)


class Pool(Protocol):
    """What serves one isolation of a revision (InstancePool, ProcessPool)."""

    @property
    def live(self) -> bool: ...

    @property
    def idle_timeout(self) -> float: ...

    async def invoke(self, capability: str, event: Event) -> Outcome: ...

    async def thaw(self) -> object: ...

    def health(self) -> tuple[int, int]: ...

    async def peek_settled(self, capability: str, event: Event) -> Outcome | None: ...

    async def drop_idle(self) -> bool: ...

    async def scale_to_zero(self) -> None: ...

    async def aclose(self) -> None: ...

    def statistics(self) -> PoolStatistics: ...


ProcessPools = Callable[..., Pool]
"""Makes the ``process`` pool of a revision: ``make(revision, idle_timeout=..., clock=...,
idempotency_bucket=..., idempotency_store=..., cold_starts=...)``."""


async def run_inline(work: Callable[[], T]) -> T:
    """The runner where there are no threads (Pyodide): the work runs on the event loop."""
    return work()


class RevisionHealth(msgspec.Struct, frozen=True):
    """A loaded revision's calls and faults so far (a canary's error rate)."""

    revision: str
    calls: int
    faults: int


class RouterStatistics(msgspec.Struct, frozen=True):
    weights: dict[str, int]
    live_instances: dict[str, bool]
    pools: list[PoolStatistics] = []
    cold_starts: list[ColdStartSeries] = []
    health: list[RevisionHealth] = []


class LoadedRevision:
    """A loaded revision and its pools, one per isolation its capabilities use."""

    __slots__ = ("revision", "cold_starts", "pools", "_by_capability", "_default")

    def __init__(
        self,
        revision: Revision,
        *,
        idle_timeout: float | None,
        process_pools: ProcessPools | None,
        idempotency_bucket: str | None = None,
        on_change: Callable[[], None] | None = None,
        **pool_options: Any,
    ) -> None:
        self.revision = revision
        self.cold_starts = ColdStarts(revision.revision_id)
        app = revision.app
        idle: dict[str, float] = {}
        by_isolation: dict[str, list[str]] = {}
        for name, spec in app.capabilities.items():
            isolation = spec.policy.isolation
            by_isolation.setdefault(isolation, []).append(name)
            own = idle_timeout or spec.policy.idle_timeout or app.idle_timeout
            idle[isolation] = max(idle.get(isolation, 0.0), own)
        by_isolation.setdefault("shared", [])  # unknown names answer from here
        idle.setdefault("shared", idle_timeout or app.idle_timeout)
        if "fresh" in by_isolation and revision.namespace is None:
            names = ", ".join(by_isolation["fresh"])
            raise ConfigError(
                f"capabilities {names} of app {app.name!r} declare isolation 'fresh', which "
                "executes the app's modules again per instance: serve the app from a snapshot "
                "(`thaw serve` builds one; in code, load_revision)"
            )
        self.pools: dict[str, Pool] = {}
        for isolation in by_isolation:
            if isolation == "process":
                if process_pools is None:
                    names = ", ".join(by_isolation["process"])
                    raise ConfigError(
                        f"capabilities {names} of app {app.name!r} declare isolation "
                        "'process', which needs a host that can fork (thaw serve on Linux); "
                        "this host has no process pools"
                    )
                self.pools[isolation] = process_pools(
                    revision,
                    idle_timeout=idle[isolation],
                    clock=pool_options.get("clock"),
                    idempotency_bucket=idempotency_bucket,
                    idempotency_store=pool_options.get("idempotency_store"),
                    cold_starts=self.cold_starts,
                )
            else:
                self.pools[isolation] = InstancePool(
                    revision,
                    isolation=isolation,  # type: ignore[arg-type]
                    idle_timeout=idle[isolation],
                    cold_starts=self.cold_starts,
                    on_change=on_change,
                    **pool_options,
                )
        self._default = self.pools["shared"]
        self._by_capability: dict[str, Pool] = {
            name: self.pools[isolation]
            for isolation, names in by_isolation.items()
            for name in names
        }

    def __repr__(self) -> str:
        return f"<LoadedRevision {self.revision!r} pools={list(self.pools)}>"

    @property
    def live(self) -> bool:
        return any(pool.live for pool in self.pools.values())

    def health(self) -> RevisionHealth:
        calls = faults = 0
        for pool in self.pools.values():
            pool_calls, pool_faults = pool.health()
            calls += pool_calls
            faults += pool_faults
        return RevisionHealth(self.revision.revision_id, calls, faults)

    def pool_for(self, capability: str) -> Pool:
        return self._by_capability.get(capability, self._default)

    async def invoke(self, capability: str, event: Event) -> Outcome:
        return await self._by_capability.get(capability, self._default).invoke(capability, event)

    async def peek_settled(self, capability: str, event: Event) -> Outcome | None:
        return await self.pool_for(capability).peek_settled(capability, event)

    async def warm(self) -> None:
        """Thaw an instance in every pool now; a failing ``on_start`` raises what it raised."""
        for pool in self.pools.values():
            try:
                await pool.thaw()
            except InstanceStartFailed as exc:
                if isinstance(exc.__cause__, Exception):
                    raise exc.__cause__ from None
                raise

    async def drop_idle(self) -> None:
        for pool in self.pools.values():
            await pool.drop_idle()

    async def scale_to_zero(self) -> None:
        for pool in self.pools.values():
            await pool.scale_to_zero()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for pool in self.pools.values():
                await pool.aclose()


class RevisionRouter:
    """Routes invocations across preloaded revisions by weight.

    ``idle_timeout`` overrides every app's and capability's idle time (None: theirs);
    ``process_pools`` serves ``process`` capabilities; ``idempotency_bucket`` is where
    ``process`` instances claim (the other pools use ``idempotency_store``, passed
    with the other pool options).
    """

    def __init__(
        self,
        *,
        run_blocking: BlockingRunner = run_inline,
        idle_timeout: float | None = None,
        process_pools: ProcessPools | None = None,
        idempotency_bucket: str | None = None,
        **pool_options: Any,
    ) -> None:
        if idle_timeout is not None and not idle_timeout > 0:
            raise ConfigError(f"idle_timeout must be positive, got {idle_timeout!r}")
        self._run_blocking = run_blocking
        self._idle_timeout = idle_timeout
        self._process_pools = process_pools
        self._idempotency_bucket = idempotency_bucket
        self._pool_options = pool_options
        self._clock: Clock = pool_options.get("clock") or SystemClock()
        self._loaded: dict[str, LoadedRevision] = {}
        self._weights: dict[str, int] = {}
        self._table: list[tuple[int, LoadedRevision]] = []
        # The revision a Rollout is loading beside the ones that serve (/readyz shows it).
        self.preloading: str | None = None
        self._total = 0
        self._only: LoadedRevision | None = None
        # Changes whenever a lane found by ``lane`` may no longer be right: weights,
        # revisions, or a live instance coming or going.
        self.epoch = 0

    @property
    def revisions(self) -> Mapping[str, Revision]:
        return {rid: loaded.revision for rid, loaded in self._loaded.items()}

    @property
    def loaded(self) -> Mapping[str, LoadedRevision]:
        return self._loaded

    @property
    def weights(self) -> Mapping[str, int]:
        return dict(self._weights)

    async def preload(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        weight: int = 0,
    ) -> Revision:
        """Load a snapshot through ``run_blocking`` and register it with ``weight``."""
        revision: Revision = await self._run_blocking(partial(load_revision, source))
        return self.add(revision, weight=weight)

    def add(self, revision: Revision, *, weight: int = 0) -> Revision:
        if revision.revision_id in self._loaded:
            raise ConfigError(f"revision {revision.revision_id} is already loaded")
        self._loaded[revision.revision_id] = LoadedRevision(
            revision,
            idle_timeout=self._idle_timeout,
            process_pools=self._process_pools,
            idempotency_bucket=self._idempotency_bucket,
            on_change=self._changed,
            **self._pool_options,
        )
        self._weights[revision.revision_id] = 0
        self.set_weights({**self._weights, revision.revision_id: weight})
        return revision

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Set every revision's share of traffic; ids may be given as unique prefixes."""
        resolved: dict[str, int] = {rid: 0 for rid in self._loaded}
        for key, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ConfigError(f"weight for {key!r} must be a non-negative int, got {weight!r}")
            resolved[self._resolve(key)] = weight
        table: list[tuple[int, LoadedRevision]] = []
        cumulative = 0
        for rid in sorted(resolved):
            if resolved[rid]:
                cumulative += resolved[rid]
                table.append((cumulative, self._loaded[rid]))
        self._weights = resolved
        self._table = table
        self._total = cumulative
        self._only = table[0][1] if len(table) == 1 else None
        self._changed()

    def _changed(self) -> None:
        self.epoch += 1

    def lane(self, capability: str) -> tuple[Callable[[Event], Awaitable[Outcome]], Any] | None:
        """The live compiled capability every event of ``capability`` reaches now, and its
        instance, when there is one: one revision has all the traffic and the
        capability's pool (``shared`` or ``fresh``) has a live instance. Valid while
        ``epoch`` stays the same; the caller marks the instance ``touched``."""
        only = self._only
        if only is None:
            return None
        pool = only.pool_for(capability)
        if not isinstance(pool, InstancePool):
            return None
        instance = pool.instance
        if instance is None:
            return None
        compiled = instance.invoker.capabilities.get(capability)
        return None if compiled is None else (compiled, instance)

    def _resolve(self, key: str) -> str:
        matches = [rid for rid in self._loaded if rid.startswith(key)]
        if len(matches) != 1:
            known = ", ".join(rid[:12] for rid in self._loaded) or "none"
            what = "matches no" if not matches else "matches more than one"
            raise ConfigError(f"{key!r} {what} loaded revision (loaded: {known})")
        return matches[0]

    def pick(self, key: str) -> LoadedRevision:
        """The revision that serves ``key`` (an event id) under the current weights."""
        only = self._only
        if only is not None:
            return only
        if not self._table:
            raise ConfigError("no revision has traffic: preload one and give it a weight")
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        point = int.from_bytes(digest, "big") % self._total
        for cumulative, loaded in self._table:
            if point < cumulative:
                return loaded
        return self._table[-1][1]  # pragma: no cover - point < total always matches

    async def invoke(self, capability: str, event: Event) -> Outcome:
        only = self._only
        if only is not None:
            return await only.invoke(capability, event)
        try:
            loaded = self.pick(event.id)
        except ConfigError as exc:
            return Retry(1.0, exc.message, "no_revision")
        return await loaded.invoke(capability, event)

    async def peek_settled(self, capability: str, event: Event) -> Outcome | None:
        try:
            loaded = self.pick(event.id)
        except ConfigError:
            return None
        return await loaded.peek_settled(capability, event)

    async def retire(self, revision_id: str) -> None:
        """Stop sending traffic to a revision, stop its instances and forget its modules."""
        rid = self._resolve(revision_id)
        remaining = {k: v for k, v in self._weights.items() if k != rid}
        loaded = self._loaded.pop(rid)
        self.set_weights(remaining)
        await loaded.aclose()
        loaded.revision.unload()

    def reaper_period(self) -> float:
        """How often ``run_reaper`` looks: a quarter of the shortest idle time, bounded."""
        shortest = min(
            (
                pool.idle_timeout
                for loaded in self._loaded.values()
                for pool in loaded.pools.values()
            ),
            default=REAPER_MAX_PERIOD * 4,
        )
        return min(max(shortest / 4, 0.01), REAPER_MAX_PERIOD)

    async def run_reaper(self) -> None:
        """Scale idle instances of every loaded revision to zero, until cancelled."""
        while True:
            await self._clock.sleep_until(self._clock.now() + self.reaper_period())
            for loaded in list(self._loaded.values()):
                await loaded.drop_idle()

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(
            weights=dict(self._weights),
            live_instances={rid: loaded.live for rid, loaded in self._loaded.items()},
            pools=[
                p.statistics() for loaded in self._loaded.values() for p in loaded.pools.values()
            ],
            cold_starts=[
                s for loaded in self._loaded.values() for s in loaded.cold_starts.series()
            ],
            health=[loaded.health() for loaded in self._loaded.values()],
        )

    async def warm(self) -> None:
        """Thaw every loaded revision's instances now, instead of on their first events."""
        for loaded in list(self._loaded.values()):
            await loaded.warm()

    async def stop_instances(self) -> None:
        """Stop every live instance (``on_stop``); the revisions stay loaded."""
        for loaded in list(self._loaded.values()):
            await loaded.aclose()

    async def aclose(self) -> None:
        for rid in list(self._loaded):
            await self.retire(rid)
