"""ctx.request over a real nats-server: the BFF's back ends as NATS services in another host."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats_fixtures import nats_server  # noqa: F401

from thaw import DeadlineExceeded, Event, Ok, Reject
from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone
from thaw.adapters.nats.subject_services import open_subject_services
from thaw.lowlevel import Invoker, NoResponders, load_app

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bff"
pytestmark = pytest.mark.anyio


@pytest.fixture
async def backbone(nats_server: EmbeddedServer) -> AsyncIterator[JetStreamBackbone]:  # noqa: F811
    backbone = await JetStreamBackbone.connect(nats_server.url)
    try:
        yield backbone
    finally:
        await backbone.aclose()


@pytest.fixture
def bff(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    load_app(str(EXAMPLE))
    module = sys.modules["app"]
    monkeypatch.setattr(module, "BACKENDS", "nats")
    monkeypatch.setitem(module.DELAYS, "recommendations", 0.0)
    # The example gives each back-end call 0.15 s; here a call crosses two connections
    # on a shared machine. Half the page's 1 s each side: answered parts need far less,
    # and after a late part's deadline the page still has 0.5 s to finish.
    monkeypatch.setattr(module, "PART_DEADLINE", 0.5)
    return module


async def test_the_page_calls_back_ends_served_by_another_connection(
    backbone: JetStreamBackbone,
    nats_server: EmbeddedServer,  # noqa: F811
    bff,  # type: ignore[no-untyped-def]
) -> None:
    services = await JetStreamBackbone.connect(nats_server.url)  # "another host"
    try:
        back_ends = Invoker(bff.app, backbone=services)
        front = Invoker(bff.app, backbone=backbone)
        async with open_subject_services(back_ends, services.client):
            outcome = await front.invoke("page", Event(id="n1", data=b'{"user":"u1"}'))
            assert isinstance(outcome, Ok)
            page = msgspec.json.decode(outcome.data)
            assert page["profile"] == {"name": "Ada Lovelace", "tier": "gold"}
            assert (page["partial"], page["missing"]) == (False, [])

            bff.DELAYS["recommendations"] = 5.0
            late = msgspec.json.decode(
                (await front.invoke("page", Event(id="n2", data=b'{"user":"u1"}'))).data  # type: ignore[union-attr]
            )
            assert (late["partial"], late["missing"]) == (True, ["recommendations"])
            bff.DELAYS["recommendations"] = 0.0

            unknown = await front.invoke("page", Event(id="n3", data=b'{"user":"zz"}'))
            assert isinstance(unknown, Reject)
            assert (unknown.code, unknown.status) == ("user_unknown", 404)
    finally:
        await services.aclose()


async def test_requests_without_responders_or_in_time_raise_clear_errors(
    backbone: JetStreamBackbone,
) -> None:
    with pytest.raises(NoResponders, match="nobody answers requests on 'bff.none'"):
        await backbone.request("bff.none", b"{}", timeout=1)
    subscription = await backbone.client.subscribe("bff.silent")  # never answers
    try:
        with pytest.raises(DeadlineExceeded, match="no reply on 'bff.silent' within 0.05s"):
            await backbone.request("bff.silent", b"{}", timeout=0.05)
    finally:
        await subscription.unsubscribe()


async def test_a_provisioned_host_answers_its_own_pages_over_nats(
    backbone: JetStreamBackbone,
    bff,  # type: ignore[no-untyped-def]
) -> None:
    # What `thaw serve examples/bff` does with BFF_BACKENDS=nats: provision, then answer
    # the subject triggers; nothing provisioned may capture the request subjects.
    from thaw.adapters.nats.subject_services import open_host_subject_services
    from thaw.lowlevel import open_host, plan_for

    captured = [subject for config in plan_for(bff.app).streams for subject in config.subjects]
    assert not any(subject.startswith("bff.") for subject in captured), captured
    async with (
        open_host(bff.app, backbone, fetch_timeout=0.2) as host,
        open_host_subject_services(host),
    ):
        outcome = await host.invoke("page", Event(id="n9", data=b'{"user":"u2"}'))
    assert isinstance(outcome, Ok)
    page = msgspec.json.decode(outcome.data)
    assert page["profile"] == {"name": "Grace Hopper", "tier": "silver"}
    assert (page["partial"], page["missing"]) == (False, [])
