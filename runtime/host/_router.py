"""Several live revisions of one app, with traffic weights (canary, blue/green, rollback).

A revision is preloaded (validated, modules executed) before it gets traffic:
``preload`` hands the load to the host's ``run_blocking`` (the core starts no
threads: a host on CPython passes ``thaw.adapters.threads.run_in_thread`` so the
event loop keeps serving the current revision meanwhile; Pyodide keeps the
default, ``run_inline``), and registers it with weight 0 unless told otherwise.
``set_weights`` shifts traffic; routing is sticky per event id (a hash, not a
random draw), so redeliveries of one event reach the same revision while
weights are unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import msgspec

from thaw._errors import ConfigError
from thaw._event import Event, Outcome, Retry
from thaw.host._instances import InstancePool
from thaw.snapshots._revision import Revision, load_revision

__all__ = ["BlockingRunner", "RevisionRouter", "RouterStatistics", "run_inline"]

T = TypeVar("T")
BlockingRunner = Callable[[Callable[[], Any]], Awaitable[Any]]
"""Runs blocking work (a snapshot load) and returns its result: in a thread, or inline."""


async def run_inline(work: Callable[[], T]) -> T:
    """The runner where there are no threads (Pyodide): the work runs on the event loop."""
    return work()


class RouterStatistics(msgspec.Struct, frozen=True):
    weights: dict[str, int]
    live_instances: dict[str, bool]


class RevisionRouter:
    """Routes invocations across preloaded revisions by weight."""

    def __init__(self, *, run_blocking: BlockingRunner = run_inline, **pool_options: Any) -> None:
        self._run_blocking = run_blocking
        self._pool_options = pool_options
        self._pools: dict[str, InstancePool] = {}
        self._weights: dict[str, int] = {}
        self._table: list[tuple[int, InstancePool]] = []
        self._total = 0

    @property
    def revisions(self) -> Mapping[str, Revision]:
        return {rid: pool.revision for rid, pool in self._pools.items()}

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
        if revision.revision_id in self._pools:
            raise ConfigError(f"revision {revision.revision_id} is already loaded")
        self._pools[revision.revision_id] = InstancePool(revision, **self._pool_options)
        self._weights[revision.revision_id] = 0
        self.set_weights({**self._weights, revision.revision_id: weight})
        return revision

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Set every revision's share of traffic; ids may be given as unique prefixes."""
        resolved: dict[str, int] = {rid: 0 for rid in self._pools}
        for key, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ConfigError(f"weight for {key!r} must be a non-negative int, got {weight!r}")
            resolved[self._resolve(key)] = weight
        self._weights = resolved
        self._table = []
        cumulative = 0
        for rid in sorted(resolved):
            if resolved[rid]:
                cumulative += resolved[rid]
                self._table.append((cumulative, self._pools[rid]))
        self._total = cumulative

    def _resolve(self, key: str) -> str:
        matches = [rid for rid in self._pools if rid.startswith(key)]
        if len(matches) != 1:
            known = ", ".join(rid[:12] for rid in self._pools) or "none"
            what = "matches no" if not matches else "matches more than one"
            raise ConfigError(f"{key!r} {what} loaded revision (loaded: {known})")
        return matches[0]

    def pick(self, key: str) -> InstancePool:
        """The pool that serves ``key`` (an event id) under the current weights."""
        if not self._table:
            raise ConfigError("no revision has traffic: preload one and give it a weight")
        if len(self._table) == 1:
            return self._table[0][1]
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        point = int.from_bytes(digest, "big") % self._total
        for cumulative, pool in self._table:
            if point < cumulative:
                return pool
        return self._table[-1][1]  # pragma: no cover - point < total always matches

    async def invoke(self, capability: str, event: Event) -> Outcome:
        try:
            pool = self.pick(event.id)
        except ConfigError as exc:
            return Retry(1.0, exc.message, "no_revision")
        return await pool.invoke(capability, event)

    async def retire(self, revision_id: str) -> None:
        """Stop sending traffic to a revision, stop its instance and forget its modules."""
        rid = self._resolve(revision_id)
        remaining = {k: v for k, v in self._weights.items() if k != rid}
        pool = self._pools.pop(rid)
        self.set_weights(remaining)
        await pool.aclose()
        pool.revision.unload()

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(
            weights=dict(self._weights),
            live_instances={rid: pool.live for rid, pool in self._pools.items()},
        )

    async def aclose(self) -> None:
        for rid in list(self._pools):
            await self.retire(rid)
