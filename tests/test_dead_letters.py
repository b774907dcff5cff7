"""Dead-letter tooling: list, show, replay (honouring idempotency) and purge."""

from __future__ import annotations

import anyio
import msgspec
import pytest
from dead_letter_changes import check_replayed_changes_rerun_the_capability

from thaw import App, ConfigError, Context, Event, Idempotency, Rejected, RetryPolicy, stream
from thaw._errors import MessageNotFound
from thaw.host._dead_letters import (
    list_dead_letters,
    purge_dead_letters,
    replay_dead_letter,
    show_dead_letter,
)
from thaw.host._host import open_host
from thaw.host._provision import apply_plan, plan_for
from thaw.lowlevel import DEAD_LETTER_STREAM, Invoker, StreamWorker
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio


class Job(msgspec.Struct, frozen=True):
    name: str


def jobs_app(state: dict[str, bool], effects: list[str]) -> App:
    app = App("jobs")

    @app.capability(
        stream("jobs.run"), retry=RetryPolicy(max_attempts=1), idempotency=Idempotency()
    )
    async def run(job: Job, ctx: Context) -> str:
        if state.get("broken"):
            raise Rejected("the job store is down for maintenance", code="store_down")
        effects.append(job.name)
        return job.name

    @app.capability(stream("jobs.other"))
    async def other(raw: bytes) -> None:
        raise Rejected("never works", code="other_broken")

    return app


async def drain(app: App, backbone: MemoryBackbone) -> None:
    invoker = Invoker(app, backbone=backbone)
    for consumer in plan_for(app).consumers:
        worker = StreamWorker(
            invoker, backbone, consumer.capability, stream=consumer.stream, consumer=consumer.config
        )
        await worker.run_until_idle()


async def test_list_show_replay_and_purge() -> None:
    backbone = MemoryBackbone()
    state = {"broken": True}
    effects: list[str] = []
    app = jobs_app(state, effects)
    await apply_plan(plan_for(app), backbone)
    await backbone.publish("jobs.run", b'{"name":"a"}', msg_id="evt-a")
    await backbone.publish("jobs.run", b'{"name":"b"}', msg_id="evt-b")
    await backbone.publish("jobs.other", b"x", msg_id="evt-x")
    await drain(app, backbone)
    letters = await list_dead_letters(backbone)
    assert [(d.capability, d.code, d.event_id) for d in letters] == [
        ("run", "store_down", "evt-a"),
        ("run", "store_down", "evt-b"),
        ("other", "other_broken", "evt-x"),
    ]
    only_run = await list_dead_letters(backbone, app="jobs", capability="run")
    assert len(only_run) == 2
    first = await show_dead_letter(backbone, only_run[0].seq)
    assert first.original_subject == "jobs.run"
    assert first.message == "the job store is down for maintenance"
    assert first.attempts == 1

    state["broken"] = False  # the dependency is back: replay
    await replay_dead_letter(backbone, only_run[0].seq)
    await replay_dead_letter(backbone, only_run[1].seq)
    await drain(app, backbone)
    assert effects == ["a", "b"]
    remaining = await list_dead_letters(backbone)
    assert [d.capability for d in remaining] == ["other"]
    with pytest.raises(MessageNotFound):
        await show_dead_letter(backbone, only_run[0].seq)

    assert await purge_dead_letters(backbone, capability="other") == 1
    assert await list_dead_letters(backbone) == []


async def test_replay_of_work_that_had_completed_does_not_run_it_again() -> None:
    backbone = MemoryBackbone()
    effects: list[str] = []
    app = jobs_app({}, effects)
    async with open_host(app, backbone, fetch_timeout=0.01) as host:
        await host.invoke("run", Event(id="evt-done", data=b'{"name":"once"}'))
    # Forge a dead letter for that completed event, as if its ack had been lost.
    await backbone.publish(
        "thaw.dlq.jobs.run",
        b'{"name":"once"}',
        headers={
            "Thaw-App": "jobs",
            "Thaw-Capability": "run",
            "Thaw-Original-Subject": "jobs.run",
            "Thaw-Original-Stream": "JOBS",
            "Thaw-Original-Seq": "1",
            "Thaw-Event-Id": "evt-done",
        },
    )
    letters = await list_dead_letters(backbone)
    await replay_dead_letter(backbone, letters[0].seq)
    async with open_host(app, backbone, fetch_timeout=0.01) as host:
        with anyio.fail_after(10):
            while host.statistics().workers["run"].acked < 1:
                await anyio.wait_all_tasks_blocked()
                await anyio.lowlevel.checkpoint()
    assert effects == ["once"]  # answered from the idempotency store, not run again
    assert (await backbone.stream_info(DEAD_LETTER_STREAM)).messages == 0


async def test_empty_or_missing_dead_letter_stream() -> None:
    assert await list_dead_letters(MemoryBackbone()) == []


async def test_a_dead_letter_keeps_the_messages_own_headers_for_its_replay() -> None:
    backbone = MemoryBackbone()
    state = {"broken": True}
    app = jobs_app(state, [])
    seen: list[dict[str, str]] = []

    @app.capability(stream("jobs.headers"), retry=RetryPolicy(max_attempts=1))
    async def headers(ctx: Context) -> None:
        seen.append(dict(ctx.event.headers))
        if state["broken"]:
            raise Rejected("not yet", code="not_yet")

    await apply_plan(plan_for(app), backbone)
    sent = {"Payment-Event-Type": "payment.succeeded", "nats-rollup": "sub"}
    await backbone.publish("jobs.headers", b"{}", msg_id="evt-h", headers=sent)
    await drain(app, backbone)
    [letter] = await list_dead_letters(backbone, capability="headers")
    record = await show_dead_letter(backbone, letter.seq)
    assert record.headers["Payment-Event-Type"] == "payment.succeeded"
    assert "nats-rollup" not in record.headers  # it would act on the dead-letter stream
    assert record.headers["Thaw-Error-Code"] == "not_yet"

    state["broken"] = False
    await replay_dead_letter(backbone, letter.seq)
    await drain(app, backbone)
    replayed = seen[-1]
    assert replayed["Payment-Event-Type"] == "payment.succeeded"
    assert replayed["Thaw-Event-Id"] == "evt-h"
    assert not any(key.startswith("Thaw-Error") for key in replayed)


async def test_replayed_kv_and_objects_dead_letters_rerun_the_capability() -> None:
    await check_replayed_changes_rerun_the_capability(MemoryBackbone(), "chg")


@pytest.mark.parametrize(
    ("subject", "headers", "error"),
    [
        ("$JS.API.STREAM.DELETE.JOBS", {}, "system subject"),  # an API call, if published
        ("$SYS.REQ.SERVER.PING", {}, "system subject"),
        ("$KV..k", {}, "kv bucket"),
        ("$KV.bad bucket.k", {}, "kv bucket"),
        ("$KV.cfg.k", {"Thaw-App": ""}, "does not name its app"),
        ("$O.files.M.bmFtZQ", {"Thaw-Capability": ""}, "does not name its app"),
    ],
)
async def test_a_forged_dead_letter_is_never_replayed_to_a_system_subject(
    subject: str, headers: dict[str, str], error: str
) -> None:
    backbone = MemoryBackbone()
    await apply_plan(plan_for(jobs_app({}, [])), backbone)
    forged = {
        "Thaw-App": "jobs",
        "Thaw-Capability": "run",
        "Thaw-Original-Subject": subject,
        "Thaw-Original-Stream": "X",
        "Thaw-Original-Seq": "1",
    } | headers
    await backbone.publish("thaw.dlq.jobs.run", b"{}", headers=forged)
    [letter] = await list_dead_letters(backbone)
    with pytest.raises(ConfigError, match=error):
        await replay_dead_letter(backbone, letter.seq)
    assert (await backbone.stream_info("JOBS")).config.name == "JOBS"  # still there
    assert [d.seq for d in await list_dead_letters(backbone)] == [letter.seq]  # kept
