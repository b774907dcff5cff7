"""examples/notification_fanout: rules fan out to per-channel capabilities, once each."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest

from thaw.lowlevel import list_dead_letters, load_app, open_host, plan_for
from thaw.testing import MemoryBackbone, TestHost

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "notification_fanout"
pytestmark = pytest.mark.anyio


def module():  # type: ignore[no-untyped-def]
    import sys

    load_app(str(EXAMPLE))
    return sys.modules["notification_fanout.app"]


async def wait_for(condition, limit: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(limit):
        while not condition():
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(0.01)  # retries wait out a (short) backoff in real time


def settled(host) -> int:  # type: ignore[no-untyped-def]
    return sum(w.statistics().acked + w.statistics().dead_lettered for w in host.workers.values())


def test_each_channel_has_its_own_consumer_and_policy() -> None:
    app = module().app
    consumers = {c.capability: c.config for c in plan_for(app).consumers}
    assert set(consumers) == {"route", "email", "push", "sms"}
    # One host runs 2 sms at once (its worker's slots); the consumer leaves room for a
    # killed predecessor's 2. Attempts are counted by the worker, not by MaxDeliver.
    assert consumers["sms"].max_ack_pending == 4
    assert all(c.max_deliver == -1 for c in consumers.values())
    specs = app.capabilities
    assert specs["email"].policy.retry.max_attempts == 6
    assert specs["push"].policy.retry.max_attempts == 3


async def test_fan_out_once_per_channel_with_retries_and_dead_letters() -> None:
    fanout = module()
    fanout.SENT.clear()
    fanout.FAIL_NEXT.clear()
    fanout.FAIL_NEXT["email"] = 1  # the email provider fails once: retried
    backbone = MemoryBackbone()
    async with open_host(fanout.app, backbone, fetch_timeout=0.02) as host:
        events = [
            {"id": "e1", "type": "order.shipped", "user": "u1", "data": {"order": "A-1"}},
            {"id": "e1", "type": "order.shipped", "user": "u1", "data": {"order": "A-1"}},
            {"id": "e2", "type": "payment.failed", "user": "u2", "data": {"order": "B-2"}},
            {"id": "e3", "type": "unknown.thing", "user": "u1"},
        ]
        for number, event in enumerate(events):  # e1 twice, as a different message
            await backbone.publish("domain.events", msgspec.json.encode(event), msg_id=f"m{number}")
        # route: 4 messages; email: e1 (after one retry) + e2; push: e1; sms: e2 (rejected)
        await wait_for(lambda: settled(host) >= 8)
    assert sorted(n.event_id for n in fanout.SENT["email"]) == ["e1", "e2"]  # e1 retried
    assert [n.event_id for n in fanout.SENT["push"]] == ["e1"]
    assert fanout.SENT["sms"] == []
    assert host.workers["email"].statistics().naked == 1
    codes = sorted(d.code for d in await list_dead_letters(backbone))
    assert codes == ["event_type_unknown", "phone_invalid"]


async def test_through_the_test_host_events_in_notices_and_dead_letters_out() -> None:
    fanout = module()
    fanout.SENT.clear()
    fanout.FAIL_NEXT.clear()
    fanout.FAIL_NEXT["email"] = 1  # the first email fails: RetryLater(delay=0.05)
    shipped = {"id": "e1", "type": "order.shipped", "user": "u1", "data": {"order": "A-1"}}
    async with TestHost(fanout.app) as th:
        await th.publish("domain.events", shipped, msg_id="m1")
        await th.publish("domain.events", shipped, msg_id="m2")  # the same event, sent twice
        await th.publish(
            "domain.events",
            {"id": "e2", "type": "payment.failed", "user": "u2", "data": {"order": "B-2"}},
        )
        await th.publish("domain.events", {"id": "e3", "type": "unknown.thing", "user": "u1"})
        await th.settle()
        assert len(fanout.SENT["email"]) == 1  # the other waits out its backoff on the clock
        await th.advance(1)
        assert sorted(n.event_id for n in fanout.SENT["email"]) == ["e1", "e2"]
        assert [n.event_id for n in fanout.SENT["push"]] == ["e1"]
        assert fanout.SENT["sms"] == []
        notices = sorted(m.subject for m in await th.published("notify.>"))
        assert notices == ["notify.email", "notify.email", "notify.push", "notify.sms"]
        codes = sorted(d.headers["Thaw-Error-Code"] for d in await th.dead_letters())
        assert codes == ["event_type_unknown", "phone_invalid"]
