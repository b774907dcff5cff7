"""Request/reply in the core: reply encoding both ways, MemoryBackbone responders, ctx.request."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw import (
    Access,
    App,
    ConfigError,
    Context,
    DeadlineExceeded,
    Event,
    Ok,
    Reject,
    Retry,
    subject,
)
from thaw._errors import AccessDenied
from thaw._headers import STATUS_HEADER
from thaw.decisions._reply import outcome_of_reply
from thaw.lowlevel import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    BackboneError,
    Invoker,
    NoResponders,
    Reply,
    open_host,
    service_reply,
)
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio


# -- the reply convention, both ways ----------------------------------------------------


@pytest.mark.parametrize(
    "outcome",
    [
        Ok(b'{"a":1}'),
        Ok(b""),
        Reject("user_unknown", "no user 'x'", 1, 404),
        Reject("contract_invalid", "Expected `int`, got `str` - at `$.n`"),
        Retry(3.0, "busy", "overloaded"),
        Retry(0.0, "too slow", "deadline_exceeded"),
    ],
)
def test_a_reply_carries_the_outcome_back(outcome: object) -> None:
    body, headers = service_reply(outcome)  # type: ignore[arg-type]
    back = outcome_of_reply(body, headers)
    if isinstance(outcome, Ok):
        assert back == outcome
    elif isinstance(outcome, Reject):
        assert isinstance(back, Reject)
        assert (back.code, back.reason) == (outcome.code, outcome.reason)
        assert back.status == (outcome.status or 422)
    else:
        assert isinstance(outcome, Retry) and isinstance(back, Retry)
        assert (back.code, back.reason) == (outcome.code, outcome.reason)
        assert back.delay == max(1.0, outcome.delay)  # Retry-After is whole seconds, >= 1


def test_a_server_fault_reply_hides_the_reason_but_keeps_the_code() -> None:
    body, headers = service_reply(Retry(0.0, "KeyError: 'secret'", "handler_error"))
    back = outcome_of_reply(body, headers)
    assert isinstance(back, Retry)
    assert back.code == "handler_error"
    assert "secret" not in back.reason


def test_replies_from_other_micro_services_use_numeric_codes() -> None:
    back = outcome_of_reply(b"", {ERROR_HEADER: "bad input", ERROR_CODE_HEADER: "400"})
    assert back == Reject("remote_error", "bad input", 1, 400)
    busy = outcome_of_reply(b"", {ERROR_HEADER: "later", ERROR_CODE_HEADER: "503"})
    assert isinstance(busy, Retry) and busy.code == "remote_error"


@given(
    headers=st.dictionaries(
        st.sampled_from([ERROR_HEADER, ERROR_CODE_HEADER, STATUS_HEADER, "Retry-After", "x"]),
        st.text(max_size=600),
    ),
    data=st.binary(max_size=64),
)
def test_any_reply_headers_give_an_outcome_and_never_raise(
    headers: dict[str, str], data: bytes
) -> None:
    outcome = outcome_of_reply(data, headers)
    if ERROR_HEADER not in headers:
        assert outcome == Ok(data)
    else:
        assert isinstance(outcome, Reject | Retry)
        assert outcome.code
        assert len(outcome.reason) <= 512
        if isinstance(outcome, Reject):
            assert outcome.status is not None and 100 <= outcome.status <= 999


# -- MemoryBackbone responders ----------------------------------------------------------


async def echo(subject: str, data: bytes, headers: Mapping[str, str]) -> Reply:
    return Reply(subject.encode() + b":" + data, {"seen": headers.get("h", "")})


async def test_a_request_reaches_a_matching_responder() -> None:
    backbone = MemoryBackbone()
    with backbone.respond("svc.*", echo):
        reply = await backbone.request("svc.a", b"hi", headers={"h": "1"}, timeout=1)
    assert reply == Reply(b"svc.a:hi", {"seen": "1"})
    with pytest.raises(NoResponders, match="nobody answers requests on 'svc.a'"):
        await backbone.request("svc.a", b"hi", timeout=1)  # the responder was closed


async def test_requests_go_round_robin_to_one_responder_each() -> None:
    backbone = MemoryBackbone()
    seen: list[str] = []

    def named(name: str):  # type: ignore[no-untyped-def]
        async def answer(subject: str, data: bytes, headers: Mapping[str, str]) -> Reply:
            seen.append(name)
            return Reply(name.encode())

        return answer

    with backbone.respond("svc.x", named("a")), backbone.respond("svc.>", named("b")):
        replies = [(await backbone.request("svc.x", b"", timeout=1)).data for _ in range(4)]
    assert sorted(replies) == [b"a", b"a", b"b", b"b"]
    assert len(seen) == 4


async def test_a_slow_responder_times_out_and_a_failing_one_fails_at_once() -> None:
    backbone = MemoryBackbone()
    cancelled = anyio.Event()

    async def slow(subject: str, data: bytes, headers: Mapping[str, str]) -> Reply:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    async def broken(subject: str, data: bytes, headers: Mapping[str, str]) -> Reply:
        raise KeyError("secret")

    async def wrong(subject: str, data: bytes, headers: Mapping[str, str]) -> Reply:
        return b"not a reply"  # type: ignore[return-value]

    with backbone.respond("slow", slow), backbone.respond("broken", broken):
        with pytest.raises(DeadlineExceeded, match="no reply on 'slow' within 0.05s"):
            await backbone.request("slow", b"", timeout=0.05)
        assert cancelled.is_set()
        with pytest.raises(BackboneError, match="responder for 'broken' failed: KeyError"):
            await backbone.request("broken", b"", timeout=1)
    with backbone.respond("wrong", wrong), pytest.raises(BackboneError, match="not a Reply"):
        await backbone.request("wrong", b"", timeout=1)


@pytest.mark.parametrize("bad", ["", "a..b", "a.*", "a.>", "a b", "a\tb", ".a"])
async def test_bad_request_subjects_are_refused(bad: str) -> None:
    backbone = MemoryBackbone()
    with pytest.raises(ConfigError):
        await backbone.request(bad, b"", timeout=1)


async def test_a_closed_backbone_refuses_requests() -> None:
    backbone = MemoryBackbone()
    await backbone.aclose()
    with pytest.raises(BackboneError, match="closed"):
        await backbone.request("svc", b"", timeout=1)
    with pytest.raises(BackboneError, match="closed"):
        backbone.respond("svc", echo)


# -- ctx.request through a host ---------------------------------------------------------


class Ask(msgspec.Struct, frozen=True):
    n: int


def services_app() -> App:
    app = App("services")

    @app.capability(subject("math.double"), timeout=1.0)
    async def double(ask: Ask) -> int:
        if ask.n < 0:
            from thaw import Rejected

            raise Rejected("negative numbers are not served", code="negative")
        return ask.n * 2

    @app.capability(subject("math.slow"), timeout=5.0)
    async def slow(ask: Ask) -> int:
        await anyio.sleep(5)
        return 0

    return app


def caller_app(access: Access | None = None) -> App:
    app = App("caller")

    @app.capability(timeout=1.0, access=access)
    async def ask(ask: Ask, ctx: Context) -> dict[str, int | str]:
        outcome = await ctx.request("math.double", ask, timeout=0.5)
        if isinstance(outcome, Ok):
            return {"ok": msgspec.json.decode(outcome.data)}
        return {"code": outcome.code}

    @app.capability(timeout=1.0)
    async def late(ctx: Context) -> str:
        outcome = await ctx.request("math.slow", Ask(1), timeout=0.05)
        assert isinstance(outcome, Retry)
        return outcome.code

    @app.capability(timeout=1.0)
    async def nobody(ctx: Context) -> str:
        outcome = await ctx.request("math.nobody", b"{}")
        assert isinstance(outcome, Retry)
        return outcome.code

    return app


async def test_a_host_answers_its_subject_triggers_in_process() -> None:
    backbone = MemoryBackbone()
    async with (
        open_host(services_app(), backbone, fetch_timeout=0.05),
        open_host(caller_app(), backbone, fetch_timeout=0.05) as caller,
    ):
        assert await caller.invoke("ask", Event(id="1", data=b'{"n":21}')) == Ok(b'{"ok":42}')
        refused = await caller.invoke("ask", Event(id="2", data=b'{"n":-1}'))
        assert refused == Ok(b'{"code":"negative"}')
        assert await caller.invoke("late", Event(id="3")) == Ok(b'"deadline_exceeded"')
        assert await caller.invoke("nobody", Event(id="4")) == Ok(b'"no_responders"')
    # The services host has closed: its subjects are no longer answered.
    async with open_host(caller_app(), backbone, fetch_timeout=0.05) as caller:
        assert await caller.invoke("ask", Event(id="5", data=b'{"n":1}')) == Ok(
            b'{"code":"no_responders"}'
        )


async def test_the_request_carries_trace_and_a_derived_id() -> None:
    backbone = MemoryBackbone()
    seen: list[Mapping[str, str]] = []

    async def record(subject: str, data: bytes, headers: Mapping[str, str]) -> Reply:
        seen.append(dict(headers))
        return Reply(b"1")

    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with backbone.respond("math.double", record):
        invoker = Invoker(caller_app(), backbone=backbone)
        await invoker.invoke("ask", Event(id="evt-9", data=b'{"n":1}', traceparent=trace))
    (headers,) = seen
    assert headers["Nats-Msg-Id"] == "evt-9/ask?math.double/1"
    assert headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert headers["traceparent"] != trace  # a child span


async def test_access_lists_and_backbones_without_requests_give_clear_errors() -> None:
    backbone = MemoryBackbone()
    denied = Invoker(caller_app(Access(requests=("other.*",))), backbone=backbone)
    outcome = await denied.invoke("ask", Event(id="1", data=b'{"n":1}'))
    assert isinstance(outcome, Reject) and outcome.code == AccessDenied.code
    assert "may not send requests to 'math.double'" in outcome.reason

    class NoRequests:  # a backbone that carries no request/reply
        pass

    plain = Invoker(caller_app(), backbone=NoRequests())  # type: ignore[arg-type]
    outcome = await plain.invoke("ask", Event(id="2", data=b'{"n":1}'))
    assert isinstance(outcome, Reject | Retry)
    assert outcome.code == ConfigError.code


def test_request_subjects_are_their_own_allow_list_and_never_provisioned() -> None:
    from thaw.lowlevel import plan_for

    app = App("asks")

    @app.capability(access=Access(requests=("prices.>",), publishes=("orders.placed",)))
    async def ask(ctx: Context) -> None:
        await ctx.request("prices.eur", b"{}")

    captured = {subject for stream in plan_for(app).streams for subject in stream.subjects}
    assert "orders.placed" in captured
    assert not any(subject.startswith("prices") for subject in captured)
    with pytest.raises(ConfigError, match=r"overlaps Access.publishes 'prices.\*'"):
        Access(requests=("prices.eur",), publishes=("prices.*",))
    with pytest.raises(ConfigError, match="take tuples, not a string"):
        Access(requests="prices.>")  # type: ignore[arg-type]
