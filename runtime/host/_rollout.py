"""Keeping a host's revisions in step with what is deployed: preload, shift, retire.

``Rollout.apply(weights)`` takes the desired traffic of one app (revision id ->
weight, from its deployment record) and moves the host's ``RevisionRouter`` there:

1. every revision with a weight that is not loaded yet is fetched (its snapshot
   bytes, through ``fetch``) and loaded through ``run_blocking`` (a thread on
   CPython, so the current revision keeps serving), with weight 0;
2. only when every revision with a weight is loaded are the weights applied, all
   at once: a host never routes to a revision it could not load, and a revision
   that fails to load here leaves the previous weights in place (logged; the next
   ``apply`` tries again);
3. loaded revisions the record no longer names are retired: their instances stop
   after the calls they hold, their modules are forgotten.

Routing stays sticky by event id (``RevisionRouter.pick``), so a redelivery reaches
the revision its first delivery reached while the weights are unchanged.
``preloading`` names the revision being loaded (readiness reports it); ``state``
is what the last ``apply`` achieved, for ``thaw revisions`` and the host's reports.

``follow_deployment`` is what a host serving deployed apps runs: it applies each
version of the record (polled, see ``thaw.host._deployments``), writes what the host
serves and each revision's calls and faults in the policy's window into
``thaw_hosts``, and judges the canary (``canary_verdict``): over its budget, the host
rolls the deployment back with a compare-and-set change that does nothing if the
canary is no longer the canary (another host, or an operator, acted first).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import anyio
import msgspec

from thaw._clock import Clock
from thaw._errors import ThawError
from thaw.backbone._contract import Backbone
from thaw.declarations._app import App
from thaw.declarations._policy import CanaryPolicy
from thaw.host._canary import WindowCounts, canary_verdict
from thaw.host._deployments import (
    Deployment,
    HostReport,
    RevisionCounts,
    rollback,
    watch_deployment,
    write_host_report,
)
from thaw.host._router import BlockingRunner, RevisionRouter, run_inline
from thaw.snapshots._revision import Revision, load_revision

__all__ = ["Rollout", "RolloutState", "follow_deployment"]

log = logging.getLogger("thaw.rollout")


class RolloutState(msgspec.Struct, frozen=True):
    """What a host serves of one app after the last ``apply``."""

    weights: dict[str, int]  # loaded revision -> weight
    pending: dict[str, str] = {}  # revision wanted but not loadable here -> why
    generation: int = 0  # how many times weights were applied


class Rollout:
    """Moves one app's ``RevisionRouter`` to the deployed weights (see the module doc)."""

    def __init__(
        self,
        router: RevisionRouter,
        fetch: Callable[[str], Awaitable[bytes]],
        *,
        run_blocking: BlockingRunner = run_inline,
        load: Callable[..., Revision] = load_revision,
        app: str = "",
    ) -> None:
        self.router = router
        self._fetch = fetch
        self._run_blocking = run_blocking
        self._load = load
        self.app = app
        self.preloading: str | None = None
        self.state = RolloutState(weights=dict(router.weights))
        self.record: Deployment | None = None  # the last record applied (follow_deployment)

    async def apply(self, weights: Mapping[str, int]) -> RolloutState:
        """Load what ``weights`` names, then shift traffic to it, then retire the rest."""
        wanted = {rid: weight for rid, weight in weights.items() if weight > 0}
        pending: dict[str, str] = {}
        for rid in weights:
            if rid in self.router.loaded:
                continue
            try:
                await self._preload(rid)
            except ThawError as exc:
                pending[rid] = f"[{exc.code}] {exc.message}"
                log.error("app %s: revision %s cannot be loaded here: %s", self.app, rid, exc)
        if not wanted:
            pending.setdefault("", "the deployment gives no revision any traffic")
        if any(rid in pending for rid in wanted) or not wanted:
            self.state = RolloutState(
                weights=dict(self.router.weights),
                pending=pending,
                generation=self.state.generation,
            )
            return self.state  # the previous weights stay: nothing routes to a missing revision
        before = dict(self.router.weights)
        self.router.set_weights({rid: wanted.get(rid, 0) for rid in self.router.loaded})
        for rid in [rid for rid in self.router.loaded if rid not in weights]:
            await self.router.retire(rid)
        after = dict(self.router.weights)
        if after != before:
            log.info("app %s: traffic %s (was %s)", self.app, _describe(after), _describe(before))
        self.state = RolloutState(
            weights=after, pending=pending, generation=self.state.generation + 1
        )
        return self.state

    async def _preload(self, rid: str) -> None:
        self.preloading = self.router.preloading = rid
        try:
            blob = await self._fetch(rid)
            revision: Revision = await self._run_blocking(partial(self._load, blob))
        finally:
            self.preloading = self.router.preloading = None
        if revision.revision_id != rid:
            revision.unload()
            raise _Mismatch(
                f"the snapshot stored for revision {rid} holds revision {revision.revision_id}"
            )
        self.router.add(revision, weight=0)
        log.info("app %s: revision %s loaded (no traffic yet)", self.app, rid[:12])

    def not_ready(self) -> str | None:
        """A reason while no loaded revision has traffic, else None (a preload is not one:
        the current revision serves meanwhile)."""
        if any(self.router.weights.values()):
            return None
        return f"app {self.app!r} has no revision with traffic yet"

    def describe(self) -> dict[str, Any]:
        return {
            "weights": dict(self.state.weights),
            "pending": dict(self.state.pending),
            "preloading": self.preloading,
        }


class _Mismatch(ThawError):
    code = "revision_mismatch"


def _describe(weights: Mapping[str, int]) -> str:
    return ", ".join(f"{rid[:12]}={weight}" for rid, weight in sorted(weights.items())) or "none"


class _Window:
    """Samples of each revision's (calls, faults); counts over the last ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._samples: list[tuple[float, dict[str, tuple[int, int]]]] = []

    def add(self, now: float, counts: dict[str, tuple[int, int]]) -> None:
        self._samples.append((now, counts))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.seconds:
            self._samples.pop(0)

    def counts(self, revision: str) -> WindowCounts:
        if not self._samples:
            return WindowCounts(0, 0)
        first = self._samples[0][1].get(revision, (0, 0))
        last = self._samples[-1][1].get(revision, (0, 0))
        if last[0] < first[0]:  # reloaded here: counted from zero again
            first = (0, 0)
        return WindowCounts(last[0] - first[0], last[1] - first[1])


async def follow_deployment(
    rollout: Rollout,
    backbone: Backbone,
    app: App,
    *,
    host_id: str,
    clock: Clock,
    poll: float = 1.0,
) -> None:
    """Until cancelled: apply each version of the app's deployment record, report what
    this host serves (``thaw_hosts``), and roll back a canary over its error budget
    (``App.canary``; the decision and its evidence are logged and kept in the record's
    history)."""
    policy = app.canary
    window = _Window(policy.window)

    async def apply_changes() -> None:
        async for record in watch_deployment(backbone, app.name, poll=poll):
            await rollout.apply(record.weights())
            rollout.record = record

    async def report_and_judge() -> None:
        while True:
            await clock.sleep_until(clock.now() + poll)
            health = {h.revision: (h.calls, h.faults) for h in rollout.router.statistics().health}
            window.add(clock.now(), health)
            counts = {
                rid: RevisionCounts(c.calls, c.faults)
                for rid in health
                for c in [window.counts(rid)]
            }
            try:
                await write_host_report(
                    backbone,
                    HostReport(
                        host=host_id,
                        app=app.name,
                        at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                        weights=dict(rollout.router.weights),
                        counts=counts,
                        pending=dict(rollout.state.pending),
                    ),
                )
            except ThawError as exc:
                log.warning("app %s: cannot write this host's report: %s", app.name, exc)
            await _judge_canary(rollout, backbone, app, window, policy)

    async with anyio.create_task_group() as group:
        group.start_soon(apply_changes)
        group.start_soon(report_and_judge)


async def _judge_canary(
    rollout: Rollout, backbone: Backbone, app: App, window: _Window, policy: CanaryPolicy
) -> None:
    record = rollout.record
    canary = record.canary() if record is not None else None
    if record is None or canary is None or canary not in rollout.router.loaded:
        return
    verdict = canary_verdict(policy, window.counts(canary), window.counts(record.stable))
    if verdict.action != "rollback":
        return
    log.error(
        "app %s: rolling canary %s back to %s: %s",
        app.name,
        canary[:12],
        record.stable[:12],
        verdict.reason,
    )
    try:
        await rollback(
            backbone,
            app.name,
            note=f"automatic: canary {canary[:12]} {verdict.reason}",
            action="auto_rollback",
            only_if_canary=canary,
        )
    except ThawError as exc:
        log.error("app %s: the automatic rollback failed: %s", app.name, exc)
