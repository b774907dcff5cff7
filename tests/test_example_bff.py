"""examples/bff: a page model from three concurrent calls, partial when one is late."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

from thaw import App, Context, Event, Ok, Reject, fan_out
from thaw.lowlevel import Invoker, load_app

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bff"
pytestmark = pytest.mark.anyio


def bff():  # type: ignore[no-untyped-def]
    load_app(str(EXAMPLE))
    return sys.modules["app"]


async def test_full_page_when_every_part_is_in_time() -> None:
    module = bff()
    module.DELAYS["recommendations"] = 0.0
    outcome = await Invoker(module.app).invoke("page", Event(id="p1", data=b'{"user":"u1"}'))
    assert isinstance(outcome, Ok)
    page = msgspec.json.decode(outcome.data)
    assert page["profile"] == {"name": "Ada Lovelace", "tier": "gold"}
    assert [o["id"] for o in page["orders"]] == ["A-1", "A-2"]
    assert page["recommendations"] == ["B-7", "C-3"]
    assert (page["partial"], page["missing"]) == (False, [])


async def test_late_part_is_left_out_and_marked() -> None:
    module = bff()
    module.DELAYS["recommendations"] = 5.0  # far past the 0.15 s part deadline
    try:
        outcome = await Invoker(module.app).invoke("page", Event(id="p2", data=b'{"user":"u1"}'))
    finally:
        module.DELAYS["recommendations"] = 0.0
    assert isinstance(outcome, Ok)
    page = msgspec.json.decode(outcome.data)
    assert page["profile"]["name"] == "Ada Lovelace"
    assert page["recommendations"] is None
    assert (page["partial"], page["missing"]) == (True, ["recommendations"])


async def test_unknown_user_is_a_404_reject() -> None:
    module = bff()
    outcome = await Invoker(module.app).invoke("page", Event(id="p3", data=b'{"user":"zz"}'))
    assert isinstance(outcome, Reject)
    assert (outcome.code, outcome.status) == ("user_unknown", 404)


async def test_call_to_an_unknown_capability_and_fan_out_of_nothing() -> None:
    module = bff()
    app = App("caller")

    @app.capability()
    async def caller(ctx: Context) -> str:
        outcome = await ctx.call("nope")
        assert isinstance(outcome, Reject)
        return outcome.code

    assert await Invoker(app).invoke("caller", Event(id="c")) == Ok(b'"capability_unknown"')
    assert (await fan_out({})).partial is False
    assert module.app.name == "bff"


# -- the back ends over request/reply (BFF_BACKENDS=nats) --------------------------------


@pytest.fixture
def over_requests(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    module = bff()
    monkeypatch.setattr(module, "BACKENDS", "nats")
    monkeypatch.setitem(module.DELAYS, "recommendations", 0.0)
    return module


async def test_page_over_requests_on_the_memory_backbone(over_requests) -> None:  # type: ignore[no-untyped-def]
    from thaw.lowlevel import open_host
    from thaw.testing import MemoryBackbone

    async with open_host(over_requests.app, MemoryBackbone(), fetch_timeout=0.05) as host:
        page = msgspec.json.decode(
            (await host.invoke("page", Event(id="r1", data=b'{"user":"u1"}'))).data
        )  # type: ignore[union-attr]
        assert page["recommendations"] == ["B-7", "C-3"]
        assert (page["partial"], page["missing"]) == (False, [])
        over_requests.DELAYS["recommendations"] = 5.0
        late = msgspec.json.decode(
            (await host.invoke("page", Event(id="r2", data=b'{"user":"u1"}'))).data
        )  # type: ignore[union-attr]
        assert (late["partial"], late["missing"]) == (True, ["recommendations"])
        unknown = await host.invoke("page", Event(id="r3", data=b'{"user":"zz"}'))
        assert isinstance(unknown, Reject) and unknown.status == 404


async def test_page_over_requests_with_no_back_ends_running(over_requests) -> None:  # type: ignore[no-untyped-def]
    from thaw.testing import MemoryBackbone

    invoker = Invoker(over_requests.app, backbone=MemoryBackbone())  # no host: nobody answers
    outcome = await invoker.invoke("page", Event(id="r4", data=b'{"user":"u1"}'))
    assert isinstance(outcome, Ok)
    page = msgspec.json.decode(outcome.data)
    assert page["partial"] is True
    assert page["profile"] is None and page["orders"] is None
