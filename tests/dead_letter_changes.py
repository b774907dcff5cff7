"""The scenario of kv/objects dead letters being replayed, for any backbone.

Before, a replay re-published the dead letter to its original subject, which for
a change is the bucket's own (``$KV.<bucket>.<key>``, ``$O.<bucket>.M.<name>``):
the old value went back over the newer one, and an object's old metadata over
chunks that were gone, so a later get hung. Now the replay re-runs the
capability and leaves the bucket alone. Used by ``test_dead_letters.py``
(MemoryBackbone) and ``test_dead_letters_nats.py`` (JetStream).
"""

from __future__ import annotations

import anyio

from thaw import App, Context, KvChange, ObjectChange, Rejected, RetryPolicy, kv, objects
from thaw.host._dead_letters import DeadLetterRecord, list_dead_letters, replay_dead_letter
from thaw.lowlevel import Backbone, open_host

__all__ = ["check_replayed_changes_rerun_the_capability"]

WAIT_LIMIT = 20.0  # seconds; a bound, not a pace
POLL = 0.01


def change_app(name: str, state: dict[str, bool], seen: list[tuple[str, str, bytes]]) -> App:
    app = App(name)
    once = RetryPolicy(max_attempts=1)

    @app.capability(objects(f"{name}_files"), retry=once)
    async def stored(change: ObjectChange, ctx: Context) -> None:
        if state["broken"]:
            raise Rejected("the archive is down", code="archive_down")
        store = await ctx.objects(change.bucket)
        seen.append(("object", change.name, await store.get(change.name)))

    @app.capability(kv(f"{name}_keys"), retry=once)
    async def changed(change: KvChange) -> None:
        if state["broken"]:
            raise Rejected("the index is down", code="index_down")
        seen.append(("key", change.key, change.value))

    return app


async def _wait_letters(backbone: Backbone, app: str, count: int) -> list[DeadLetterRecord]:
    with anyio.fail_after(WAIT_LIMIT):
        while True:  # no event says "dead-lettered" across backbones: ask, boundedly
            letters = await list_dead_letters(backbone, app=app)
            if len(letters) >= count:
                return letters
            await anyio.sleep(POLL)


async def check_replayed_changes_rerun_the_capability(backbone: Backbone, name: str) -> None:
    state = {"broken": True}
    seen: list[tuple[str, str, bytes]] = []
    app = change_app(name, state, seen)
    async with open_host(app, backbone, fetch_timeout=0.05):
        files = await backbone.object_store(f"{name}_files")
        keys = await backbone.kv(f"{name}_keys")
        await files.put("report", b"first version")
        await keys.put("k", b"old")
        first = await _wait_letters(backbone, name, 2)
        # Newer data: new chunks replace the old ones, which the store purges.
        await files.put("report", b"second version, longer than the first")
        await keys.put("k", b"new")
        await _wait_letters(backbone, name, 4)
        state["broken"] = False
        for letter in first:
            await replay_dead_letter(backbone, letter.seq)
        with anyio.fail_after(WAIT_LIMIT):
            while True:
                if len(seen) >= 2:
                    break
                await anyio.sleep(POLL)
            # The buckets read fine and hold the newer data (a get of a corrupted
            # object hung: the bound above and here turns that into a failure).
            assert await files.get("report") == b"second version, longer than the first"
            entry = await keys.get("k")
            assert entry is not None and entry.value == b"new"
    # Each capability ran once more, with the change it had failed on; the object's
    # input names it and the capability read what the store holds now.
    assert sorted(seen) == [
        ("key", "k", b"old"),
        ("object", "report", b"second version, longer than the first"),
    ]
    left = await list_dead_letters(backbone, app=name)
    assert sorted(d.capability for d in left) == ["changed", "stored"]  # the newer two
