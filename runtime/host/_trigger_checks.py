"""Change-trigger conformance: ``kv`` and ``objects`` triggers end to end through a host.

Each ``check_*`` takes a ``ChangeEnv`` (a backbone and a unique name prefix),
declares a small App, runs it with ``open_host`` and changes a bucket. The list
the suite runs is ``CHANGE_TRIGGER_CHECKS`` (exported by ``thaw.testing``), and
``check_change_triggers`` runs it without a test framework. Capabilities run one
call at a time (``concurrency=1``) so the order they see is the bucket's order,
and every wait is for what the capabilities recorded, boundedly, never for a
fixed time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import anyio

from thaw.backbone._buckets import object_digest
from thaw.backbone._contract import Backbone, KvConfig, ObjectStoreConfig
from thaw.backbone.conformance._harness import WATCHDOG, eventually
from thaw.backbone.conformance._suite import run_checks
from thaw.declarations._app import App
from thaw.declarations._changes import KvChange, ObjectChange
from thaw.declarations._context import Context
from thaw.declarations._policy import Access, Backoff, RetryPolicy
from thaw.declarations._triggers import kv, objects
from thaw.host._dead_letters import list_dead_letters
from thaw.host._host import open_host

__all__ = [
    "CHANGE_TRIGGER_CHECKS",
    "ChangeEnv",
    "ChangeTriggerCheck",
    "check_change_triggers",
    "Seen",
    "uploads_app",
    "watcher_app",
    "check_a_failing_kv_capability_is_retried_then_dead_lettered",
    "check_a_failing_objects_capability_is_retried_then_dead_lettered",
    "check_kv_changes_made_while_no_host_ran_are_processed_when_one_starts",
    "check_kv_trigger_sees_puts_and_deletes_of_matching_keys",
    "check_objects_trigger_runs_on_put_with_the_info_and_reads_the_data",
    "check_objects_trigger_with_deletes_sees_deletions_and_old_uploads",
    "check_unreadable_object_info_is_dead_lettered_with_the_reason",
]

FAST = RetryPolicy(max_attempts=2, backoff=Backoff(initial=0.01, maximum=0.01, jitter=0.0))


@dataclass(frozen=True)
class ChangeEnv:
    """What a change-trigger check runs on: a backbone and a name prefix unique per check."""

    backbone: Backbone
    prefix: str  # letters and digits


class Seen:
    """What a capability recorded, and a way to wait for the n-th record."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed: anyio.Event | None = None

    def add(self, item: Any) -> None:
        self.items.append(item)
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_for(self, count: int) -> list[Any]:
        with anyio.fail_after(WATCHDOG):
            while len(self.items) < count:
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
        return self.items


def watcher_app(prefix: str, seen: Seen, *, key: str = ">", fail: bool = False) -> App:
    app = App(f"{prefix}kv")

    @app.capability(kv(f"{prefix}_cfg", key=key), concurrency=1, retry=FAST)
    async def on_change(change: KvChange) -> None:
        seen.add(change)
        if fail:
            raise RuntimeError("cannot apply the change")

    return app


def uploads_app(prefix: str, seen: Seen, *, deletes: bool = False, fail: bool = False) -> App:
    app = App(f"{prefix}up")
    bucket = f"{prefix}_files"

    @app.capability(
        objects(bucket, deletes=deletes),
        concurrency=1,
        retry=FAST,
        access=Access(objects=(bucket,)),
    )
    async def on_upload(change: ObjectChange, ctx: Context) -> None:
        store = await ctx.objects(change.bucket)
        data = b"" if change.deleted else await store.get(change.name)
        seen.add((change, data))
        if fail:
            raise RuntimeError("cannot process the upload")

    return app


# -- the checks ------------------------------------------------------------


async def check_kv_trigger_sees_puts_and_deletes_of_matching_keys(env: ChangeEnv) -> None:
    seen = Seen()
    app = watcher_app(env.prefix, seen, key="users.>")
    name = f"{env.prefix}_cfg"
    async with open_host(app, env.backbone, fetch_timeout=0.1):
        bucket = await env.backbone.kv(name)
        first = await bucket.put("users.ann", b"v1")
        await seen.wait_for(1)
        await bucket.put("orders.1", b"not watched")
        second = await bucket.put("users.ann", b"v2")
        await seen.wait_for(2)
        await bucket.delete("users.ann")
        await seen.wait_for(3)
    assert seen.items == [
        KvChange(bucket=name, key="users.ann", operation="PUT", revision=first, value=b"v1"),
        KvChange(bucket=name, key="users.ann", operation="PUT", revision=second, value=b"v2"),
        KvChange(bucket=name, key="users.ann", operation="DEL", revision=second + 1),
    ]


async def check_kv_changes_made_while_no_host_ran_are_processed_when_one_starts(
    env: ChangeEnv,
) -> None:
    seen = Seen()
    app = watcher_app(env.prefix, seen)
    bucket = await env.backbone.add_kv(KvConfig(bucket=f"{env.prefix}_cfg"))
    await bucket.put("a", b"1")  # before the app was ever deployed
    await bucket.put("b", b"2")
    async with open_host(app, env.backbone, fetch_timeout=0.1):
        await seen.wait_for(2)
    await bucket.put("c", b"3")  # while no host runs
    await bucket.delete("a")
    async with open_host(app, env.backbone, fetch_timeout=0.1):
        await seen.wait_for(4)
    assert [(c.key, c.operation, c.value) for c in seen.items] == [
        ("a", "PUT", b"1"),
        ("b", "PUT", b"2"),
        ("c", "PUT", b"3"),
        ("a", "DEL", b""),
    ]


async def check_objects_trigger_runs_on_put_with_the_info_and_reads_the_data(
    env: ChangeEnv,
) -> None:
    seen = Seen()
    app = uploads_app(env.prefix, seen)
    name = f"{env.prefix}_files"
    uploads = {
        "report 2026.pdf": b"%PDF" + bytes(1000),
        "ünïcødé/ファイル.txt": "grüße".encode(),
        "a/b/c/": b"",
    }
    async with open_host(app, env.backbone, fetch_timeout=0.1):
        store = await env.backbone.object_store(name)
        for object_name, data in uploads.items():
            await store.put(object_name, data)
        await seen.wait_for(3)
        await store.delete("report 2026.pdf")  # not wanted: acked, never run
        await store.put("last", b"!")
        await seen.wait_for(4)
    got = {change.name: (change, data) for change, data in seen.items}
    assert list(got) == [*uploads, "last"]
    for object_name, data in uploads.items():
        change, read = got[object_name]
        assert read == data
        assert (change.bucket, change.size, change.digest, change.deleted) == (
            name,
            len(data),
            object_digest(data),
            False,
        )
    revisions = [change.revision for change, _ in seen.items]
    assert revisions == sorted(revisions)


async def check_objects_trigger_with_deletes_sees_deletions_and_old_uploads(env: ChangeEnv) -> None:
    seen = Seen()
    app = uploads_app(env.prefix, seen, deletes=True)
    store = await env.backbone.add_object_store(ObjectStoreConfig(bucket=f"{env.prefix}_files"))
    await store.put("early", b"uploaded before any host ran")
    async with open_host(app, env.backbone, fetch_timeout=0.1):
        await seen.wait_for(1)
        await store.delete("early")
        await seen.wait_for(2)
    (put, data), (deleted, _) = seen.items
    assert (put.name, put.deleted, data) == ("early", False, b"uploaded before any host ran")
    assert (deleted.name, deleted.deleted, deleted.size) == ("early", True, 0)


async def check_a_failing_kv_capability_is_retried_then_dead_lettered(env: ChangeEnv) -> None:
    seen = Seen()
    app = watcher_app(env.prefix, seen, fail=True)
    async with open_host(app, env.backbone, fetch_timeout=0.1):
        bucket = await env.backbone.kv(f"{env.prefix}_cfg")
        revision = await bucket.put("flag", b"on")
        await seen.wait_for(2)

        async def dead_lettered() -> bool:
            return bool(await list_dead_letters(env.backbone, app=app.name))

        await eventually(dead_lettered)
    (record,) = await list_dead_letters(env.backbone, app=app.name)
    assert (record.capability, record.attempts) == ("on_change", 2)
    assert (record.original_stream, record.original_seq) == (f"KV_{env.prefix}_cfg", revision)
    assert record.original_subject == f"$KV.{env.prefix}_cfg.flag"
    assert seen.items[0] == seen.items[1]  # the same change, delivered twice


async def check_a_failing_objects_capability_is_retried_then_dead_lettered(env: ChangeEnv) -> None:
    seen = Seen()
    app = uploads_app(env.prefix, seen, fail=True)
    async with open_host(app, env.backbone, fetch_timeout=0.1):
        store = await env.backbone.object_store(f"{env.prefix}_files")
        await store.put("bad.csv", b"x,y")
        await seen.wait_for(2)

        async def dead_lettered() -> bool:
            return bool(await list_dead_letters(env.backbone, app=app.name))

        await eventually(dead_lettered)
    (record,) = await list_dead_letters(env.backbone, app=app.name)
    assert (record.capability, record.attempts) == ("on_upload", 2)
    assert record.original_stream == f"OBJ_{env.prefix}_files"


async def check_unreadable_object_info_is_dead_lettered_with_the_reason(env: ChangeEnv) -> None:
    seen = Seen()
    app = uploads_app(env.prefix, seen)
    async with open_host(app, env.backbone, fetch_timeout=0.1):
        # Someone writes garbage where object info belongs.
        await env.backbone.publish(f"$O.{env.prefix}_files.M.Z2FyYmFnZQ==", b"\xff not json")

        async def dead_lettered() -> bool:
            return bool(await list_dead_letters(env.backbone, app=app.name))

        await eventually(dead_lettered)
    (record,) = await list_dead_letters(env.backbone, app=app.name)
    assert record.attempts == 1  # malformed input is never retried
    assert record.code == "payload_malformed"
    assert seen.items == []


ChangeTriggerCheck = Callable[[ChangeEnv], Awaitable[None]]
CHANGE_TRIGGER_CHECKS: tuple[ChangeTriggerCheck, ...] = (
    check_kv_trigger_sees_puts_and_deletes_of_matching_keys,
    check_kv_changes_made_while_no_host_ran_are_processed_when_one_starts,
    check_objects_trigger_runs_on_put_with_the_info_and_reads_the_data,
    check_objects_trigger_with_deletes_sees_deletions_and_old_uploads,
    check_a_failing_kv_capability_is_retried_then_dead_lettered,
    check_a_failing_objects_capability_is_retried_then_dead_lettered,
    check_unreadable_object_info_is_dead_lettered_with_the_reason,
)


async def check_change_triggers(
    open_env: Callable[[], AbstractAsyncContextManager[ChangeEnv]],
    *,
    checks: Sequence[ChangeTriggerCheck] = CHANGE_TRIGGER_CHECKS,
) -> None:
    """Run the change-trigger checks, each on a fresh ``ChangeEnv`` from ``open_env()``."""
    await run_checks(checks, open_env)
