"""Deployments: which revisions of an app serve, at which weights, shared by every host.

The record lives in the KV bucket ``thaw_deployments`` under the app's name (a
``Deployment``); the snapshots it names live in the object store
``thaw_snapshots`` as ``<app>/<revision>``, with their size and SHA-256 in the
record, so a host fetching one verifies it. Every change is a compare-and-set
update of the record (``_change``: read, compute, ``create``/``update(last=...)``,
again on a conflict, a bounded number of times), so two concurrent ``thaw
deploy``s never lose one; the record keeps the last ``HISTORY`` changes.

Weights: ``deploy(..., weight=100)`` gives the new revision all traffic and makes
it the ``stable`` one; the earlier revisions stay in the record at weight 0 (hosts
keep them loaded, for a fast rollback). A lower weight makes a canary: the new
revision gets that share and the stable revision the rest (one canary at a time:
an earlier canary goes to 0). ``rollback`` gives everything to the stable revision
while a canary runs, else to the revision before the last full rollout (``previous``),
or to a named one. A record names at most ``MAX_REVISIONS`` revisions;
deploying past that drops the oldest without traffic, and deletes its snapshot.

Hosts poll the record (``watch_deployment``; the backbone contract has no KV
watch): a change reaches every host within ``poll`` seconds. Hosts write what
they serve into ``thaw_hosts`` (``HostReport``, a TTL so a dead host's report
lapses); ``revision_report`` gathers them for ``thaw revisions``.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import anyio
import msgspec

from thaw._errors import ConfigError, KeyExists, ThawError, WrongRevision
from thaw.backbone._contract import Backbone, KvConfig, ObjectStoreConfig
from thaw.snapshots._format import SnapshotError, decode_snapshot

__all__ = [
    "DEPLOYMENT_BUCKET",
    "HOSTS_BUCKET",
    "SNAPSHOT_STORE",
    "DeployedRevision",
    "Deployment",
    "DeploymentChange",
    "DeploymentError",
    "HostReport",
    "RevisionCounts",
    "deploy",
    "ensure_deployment_stores",
    "fetch_snapshot",
    "read_deployment",
    "revision_report",
    "rollback",
    "set_weights",
    "watch_deployment",
    "write_host_report",
]

log = logging.getLogger("thaw.deployments")

DEPLOYMENT_BUCKET = "thaw_deployments"
SNAPSHOT_STORE = "thaw_snapshots"
HOSTS_BUCKET = "thaw_hosts"
HOST_REPORT_TTL = 30.0  # seconds a host's report outlives its last write
HISTORY = 20
MAX_REVISIONS = 8
_CONFLICT_ATTEMPTS = 20


class DeploymentError(ThawError):
    """A deployment cannot be read, changed or followed as asked."""

    code = "deployment_invalid"


class DeployedRevision(msgspec.Struct, frozen=True, kw_only=True):
    revision: str
    weight: int
    snapshot: str  # the object's name in SNAPSHOT_STORE
    size: int
    sha256: str
    deployed_at: str
    note: str = ""


class DeploymentChange(msgspec.Struct, frozen=True, kw_only=True):
    at: str
    action: str  # deploy | weights | rollback | auto_rollback
    weights: dict[str, int]
    note: str = ""


class Deployment(msgspec.Struct, frozen=True, kw_only=True):
    app: str
    revisions: list[DeployedRevision] = []
    stable: str = ""  # the revision that has (or shares with a canary) the traffic
    previous: str = ""  # the stable revision before the last full rollout
    generation: int = 0
    history: list[DeploymentChange] = []

    def weights(self) -> dict[str, int]:
        return {r.revision: r.weight for r in self.revisions}

    def canary(self) -> str | None:
        """The revision under trial: one besides ``stable`` with some but not all traffic."""
        for entry in reversed(self.revisions):
            if entry.revision != self.stable and 0 < entry.weight < 100:
                return entry.revision
        return None


class RevisionCounts(msgspec.Struct, frozen=True):
    calls: int = 0
    faults: int = 0


class HostReport(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    app: str
    at: str
    weights: dict[str, int]
    counts: dict[str, RevisionCounts] = {}
    pending: dict[str, str] = {}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


async def ensure_deployment_stores(backbone: Backbone) -> None:
    """Create (or confirm) the record bucket, the snapshot store and the hosts bucket."""
    await backbone.add_kv(KvConfig(bucket=DEPLOYMENT_BUCKET))
    await backbone.add_object_store(ObjectStoreConfig(bucket=SNAPSHOT_STORE))
    await backbone.add_kv(KvConfig(bucket=HOSTS_BUCKET, ttl=HOST_REPORT_TTL))


_decode = msgspec.json.Decoder(Deployment).decode
_encode = msgspec.json.Encoder().encode


async def read_deployment(backbone: Backbone, app: str) -> tuple[Deployment | None, int]:
    """The app's record and its KV revision (0: none yet)."""
    bucket = await backbone.kv(DEPLOYMENT_BUCKET)
    entry = await bucket.get(app)
    if entry is None or entry.operation != "PUT":
        return None, 0
    try:
        record = _decode(entry.value)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DeploymentError(
            f"the deployment record of app {app!r} is damaged ({exc}); deploy again to replace it"
        ) from None
    if record.app != app:
        raise DeploymentError(f"the deployment record under {app!r} names app {record.app!r}")
    return record, entry.revision


async def _change(
    backbone: Backbone, app: str, change: Callable[[Deployment | None], Deployment]
) -> Deployment:
    bucket = await backbone.kv(DEPLOYMENT_BUCKET)
    for _ in range(_CONFLICT_ATTEMPTS):
        try:
            current, revision = await read_deployment(backbone, app)
        except DeploymentError:  # a damaged record: a deploy replaces it
            damaged = await bucket.get(app)
            current, revision = None, damaged.revision if damaged is not None else 0
        updated = change(current)
        updated = msgspec.structs.replace(
            updated,
            generation=(current.generation if current else 0) + 1,
            history=updated.history[-HISTORY:],
        )
        try:
            if revision == 0:
                await bucket.create(app, _encode(updated))
            else:
                await bucket.update(app, _encode(updated), last=revision)
        except (KeyExists, WrongRevision):
            continue  # someone else changed it first: compute again from theirs
        return updated
    raise DeploymentError(f"the deployment of app {app!r} kept changing under us; try again")


def _normalised(
    revisions: list[DeployedRevision], weights: Mapping[str, int]
) -> list[DeployedRevision]:
    return [msgspec.structs.replace(r, weight=weights.get(r.revision, 0)) for r in revisions]


async def deploy(
    backbone: Backbone, snapshot: bytes, *, weight: int = 100, note: str = ""
) -> Deployment:
    """Store a snapshot and give its revision ``weight`` percent of its app's traffic."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise DeploymentError(f"a weight is a whole percentage from 0 to 100, got {weight!r}")
    try:
        payload = decode_snapshot(snapshot, source="the snapshot")
    except SnapshotError as exc:
        raise DeploymentError(f"cannot deploy it: {exc.message}") from None
    app, rid = payload.manifest.app, payload.revision
    await ensure_deployment_stores(backbone)
    name = f"{app}/{rid}"
    store = await backbone.object_store(SNAPSHOT_STORE)
    await store.put(name, snapshot)
    entry = DeployedRevision(
        revision=rid,
        weight=weight,
        snapshot=name,
        size=len(snapshot),
        sha256=hashlib.sha256(snapshot).hexdigest(),
        deployed_at=_now(),
        note=note,
    )

    seen: list[Deployment | None] = []

    def change(current: Deployment | None) -> Deployment:
        seen.append(current)
        old = [r for r in (current.revisions if current else []) if r.revision != rid]
        known = {r.revision for r in old}
        stable = current.stable if current is not None and current.stable in known else ""
        if weight == 100 or not stable:  # a full rollout (or nothing to share with)
            weights, new_stable = {rid: 100}, rid
        else:  # a canary beside the stable revision; any earlier canary stops
            weights, new_stable = {rid: weight, stable: 100 - weight}, stable
        kept = [*_normalised(old, weights), msgspec.structs.replace(entry, weight=weights[rid])]
        while len(kept) > MAX_REVISIONS:  # the oldest without traffic go first
            idle = next((r for r in kept if r.weight == 0 and r.revision != new_stable), None)
            if idle is None:
                break
            kept.remove(idle)
        history = [
            *(current.history if current else []),
            DeploymentChange(
                at=_now(), action="deploy", weights={r.revision: r.weight for r in kept}, note=note
            ),
        ]
        previous = stable if weight == 100 and stable else (current.previous if current else "")
        return Deployment(
            app=app, revisions=kept, stable=new_stable, previous=previous, history=history
        )

    updated = await _change(backbone, app, change)
    before = seen[-1]  # the record the successful change was computed from
    named = {r.snapshot for r in updated.revisions}
    for dropped in [r for r in (before.revisions if before else []) if r.snapshot not in named]:
        try:  # no record names it any more: no host will fetch it again
            await store.delete(dropped.snapshot)
        except ThawError as exc:  # the deploy stands; a later deploy's pruning is no retry
            log.warning(
                "app %s: could not delete the snapshot of dropped revision %s: %s",
                app,
                dropped.revision[:12],
                exc,
            )
    return updated


def _resolve(record: Deployment, key: str) -> str:
    matches = [r.revision for r in record.revisions if r.revision.startswith(key)]
    if len(matches) != 1:
        known = ", ".join(r.revision[:12] for r in record.revisions) or "none"
        what = "matches no" if not matches else "matches more than one"
        raise DeploymentError(f"{key!r} {what} revision of app {record.app!r} (it has: {known})")
    return matches[0]


async def set_weights(
    backbone: Backbone, app: str, weights: Mapping[str, int], *, note: str = ""
) -> Deployment:
    """Set revisions' weights (unique id prefixes; the ones not named get 0)."""
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise DeploymentError(f"weight for {key!r} must be from 0 to 100, got {value!r}")
    if not any(weights.values()):
        raise DeploymentError("at least one revision needs a weight above 0")

    def change(current: Deployment | None) -> Deployment:
        if current is None:
            raise DeploymentError(f"app {app!r} is not deployed")
        resolved = {_resolve(current, key): value for key, value in weights.items()}
        revisions = _normalised(current.revisions, resolved)
        stable = next((r for r, w in resolved.items() if w == 100), current.stable)
        history = [
            *current.history,
            DeploymentChange(at=_now(), action="weights", weights=dict(resolved), note=note),
        ]
        return msgspec.structs.replace(current, revisions=revisions, stable=stable, history=history)

    return await _change(backbone, app, change)


async def rollback(
    backbone: Backbone,
    app: str,
    revision: str | None = None,
    *,
    note: str = "",
    action: str = "rollback",
    only_if_canary: str | None = None,
) -> Deployment:
    """All traffic to ``revision``; by default, with a canary running, to the stable
    revision, else to the one before the last full rollout. ``only_if_canary``: do it
    only while that revision is still the canary (an automatic rollback that lost a race
    with an operator changes nothing)."""

    def change(current: Deployment | None) -> Deployment:
        if current is None:
            raise DeploymentError(f"app {app!r} is not deployed")
        if only_if_canary is not None and current.canary() != only_if_canary:
            return current
        if revision:
            target = _resolve(current, revision)
        elif current.canary() is not None:
            target = current.stable
        else:
            target = current.previous
        if not target or target not in current.weights():
            raise DeploymentError(
                f"app {app!r} has no earlier revision to roll back to: name one "
                f"(it has: {', '.join(r.revision[:12] for r in current.revisions)})"
            )
        weights = {r.revision: (100 if r.revision == target else 0) for r in current.revisions}
        history = [
            *current.history,
            DeploymentChange(at=_now(), action=action, weights=weights, note=note),
        ]
        return msgspec.structs.replace(
            current,
            revisions=_normalised(current.revisions, weights),
            stable=target,
            previous=current.stable if target != current.stable else current.previous,
            history=history,
        )

    return await _change(backbone, app, change)


async def fetch_snapshot(backbone: Backbone, app: str, revision: str) -> bytes:
    """The snapshot of ``revision``, checked against the record's size and SHA-256."""
    record, _ = await read_deployment(backbone, app)
    entry = next((r for r in (record.revisions if record else []) if r.revision == revision), None)
    if entry is None:
        raise DeploymentError(f"revision {revision} of app {app!r} is not deployed")
    store = await backbone.object_store(SNAPSHOT_STORE)
    blob = await store.get(entry.snapshot)
    if len(blob) != entry.size or hashlib.sha256(blob).hexdigest() != entry.sha256:
        raise DeploymentError(
            f"the stored snapshot of revision {revision[:12]} of app {app!r} does not match "
            "its deployment record (size or SHA-256): deploy it again"
        )
    return blob


async def watch_deployment(
    backbone: Backbone, app: str, *, poll: float = 1.0
) -> AsyncIterator[Deployment]:
    """Each new version of the app's record (the current one first), polled every ``poll``
    seconds; a damaged or unreadable record is logged and skipped, never the end."""
    if not poll > 0:
        raise ConfigError(f"poll must be positive, got {poll!r}")
    seen = -1
    failing = ""  # the last error logged: each different one once, not at every poll
    while True:
        try:
            record, revision = await read_deployment(backbone, app)
            failing = ""
        except ThawError as exc:
            if exc.message != failing:
                log.error("app %s: cannot read its deployment: %s", app, exc)
                failing = exc.message
            record, revision = None, seen
        if record is not None and revision != seen:
            seen = revision
            yield record
        await anyio.sleep(poll)


async def write_host_report(backbone: Backbone, report: HostReport) -> None:
    bucket = await backbone.kv(HOSTS_BUCKET)
    await bucket.put(f"{report.app}.{report.host}", msgspec.json.encode(report))


async def revision_report(backbone: Backbone, app: str) -> list[HostReport]:
    """The live hosts' reports for ``app`` (damaged ones are skipped)."""
    try:
        bucket = await backbone.kv(HOSTS_BUCKET)
    except ThawError:
        return []
    reports: list[HostReport] = []
    for key in await bucket.keys():
        if not key.startswith(f"{app}."):
            continue
        entry = await bucket.get(key)
        if entry is None or entry.operation != "PUT":
            continue
        try:
            reports.append(msgspec.json.decode(entry.value, type=HostReport))
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue
    return reports
