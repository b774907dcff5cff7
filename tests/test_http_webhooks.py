"""Webhook signature verification per route: valid, stale, tampered, missing, replayed;
the replay store (its own bucket; claim, then keep on 2xx or release)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_http_support import RawClient, Reply, request, serving

from thaw import App, ConfigError, Idempotency, Webhook, http
from thaw.adapters.http import HttpConfig, HttpService, open_http_server
from thaw.adapters.http._wire import Response
from thaw.adapters.http.webhooks import SignatureVerifier, load_secret, sign
from thaw.host._provision import webhook_bucket_for, webhook_replay_ttl
from thaw.lowlevel import BackboneError, Claim, Invoker, open_host, plan_for
from thaw.testing import MemoryBackbone, MemoryIdempotencyStore

pytestmark = pytest.mark.anyio
SECRET = "whsec_test_0123456789"


class Paid(msgspec.Struct):
    payment: str


def hook_app(webhook: Webhook, calls: list[Paid]) -> App:
    app = App("hooks")

    @app.capability(http("POST", "/hooks/paid", webhook=webhook))
    async def paid(event: Paid) -> None:
        calls.append(event)

    return app


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("THAW_TEST_HOOK_SECRET", SECRET)
    return "THAW_TEST_HOOK_SECRET"


async def test_signatures_are_verified_before_the_capability_runs(secret_env: str) -> None:
    calls: list[Paid] = []
    app = hook_app(Webhook(secret_env=secret_env, header="X-Sig", tolerance=300), calls)
    body = b'{"payment": "pay_1"}'
    now = int(time.time())
    good = sign(SECRET.encode(), now, body)
    again = sign(SECRET.encode(), now - 1, body)  # each delivery is signed anew
    cases = {
        "valid": (body, {"X-Sig": good}),
        "rotated": (body, {"X-Sig": again.replace("v1=", "v1=" + "0" * 64 + ",v1=")}),
        "missing": (body, {}),
        "malformed": (body, {"X-Sig": "v1=abc"}),
        "stale": (body, {"X-Sig": sign(SECRET.encode(), now - 301, body)}),
        "future": (body, {"X-Sig": sign(SECRET.encode(), now + 301, body)}),
        "tampered": (b'{"payment": "pay_2"}', {"X-Sig": good}),
        "wrong_secret": (body, {"X-Sig": sign(b"other", now, body)}),
    }
    answers = {}
    async with serving(app) as server, RawClient.connect(server.port) as client:
        for name, (payload, headers) in cases.items():
            await client.send(request("POST", "/hooks/paid", payload, headers))
            answers[name] = await client.response()
    assert answers["valid"].status == 204
    assert answers["rotated"].status == 204
    expected = {
        "missing": "signature_missing",
        "malformed": "signature_malformed",
        "stale": "signature_stale",
        "future": "signature_stale",
        "tampered": "signature_invalid",
        "wrong_secret": "signature_invalid",
    }
    for name, code in expected.items():
        reply = answers[name]
        assert reply.status == 401, name
        assert reply.headers["content-type"] == "application/problem+json"
        assert json.loads(reply.body)["code"] == code, name
        assert SECRET not in reply.body.decode()
    assert calls == [Paid("pay_1"), Paid("pay_1")]  # only the verified ones ran


async def test_replay_protection_is_on_by_default(secret_env: str) -> None:
    calls: list[Paid] = []
    app = hook_app(Webhook(secret_env=secret_env), calls)
    body = b'{"payment": "pay_9"}'
    signature = sign(SECRET.encode(), int(time.time()), body)
    async with serving(app) as server, RawClient.connect(server.port) as client:
        headers = {"Webhook-Signature": signature}
        await client.send(request("POST", "/hooks/paid", body, headers))
        first = await client.response()
        await client.send(request("POST", "/hooks/paid", body, headers))
        second = await client.response()
    assert first.status == 204
    assert (second.status, json.loads(second.body)["code"]) == (401, "signature_replayed")
    assert len(calls) == 1


async def test_the_secret_can_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    assert load_secret(Webhook(secret_file=str(path))) == SECRET.encode()
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_secret(Webhook(secret_file=str(tmp_path / "absent")))
    assert SECRET not in str(info.value)


def test_a_missing_secret_stops_the_server_naming_the_variable_only() -> None:
    app = hook_app(Webhook(secret_env="THAW_TEST_UNSET_SECRET"), [])
    with pytest.raises(ConfigError, match="THAW_TEST_UNSET_SECRET is not set"):
        HttpService(Invoker(app), config=HttpConfig())


def test_secrets_appear_in_no_repr() -> None:
    webhook = Webhook(secret_env="X_SECRET")
    verifier = SignatureVerifier(
        webhook, SECRET.encode(), replay_key="k", store=MemoryIdempotencyStore()
    )
    assert SECRET not in repr(verifier)
    assert "X_SECRET" in repr(webhook)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"secret_env": "A", "secret_file": "/b"},
        {"secret_env": "1BAD"},
        {"secret_env": "A", "header": "bad header"},
        {"secret_env": "A", "tolerance": 0},
        {"secret_env": "A", "tolerance": float("nan")},
        {"secret_env": "A", "replay_window": -1},
        {"secret_env": "A", "scheme": "md5"},
    ],
)
def test_bad_webhook_declarations_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Webhook(**options)  # type: ignore[arg-type]


def test_http_refuses_a_webhook_that_is_not_a_webhook() -> None:
    with pytest.raises(ConfigError, match="must be a Webhook"):
        http("POST", "/x", webhook="X_SECRET")  # type: ignore[arg-type]


# -- replay protection: its own store, claim then complete or release -----------------


def flaky_app(webhook: Webhook, calls: list[Paid], *, failures: int) -> App:
    """A webhook whose handler fails ``failures`` times first (the downstream is down)."""
    app = App("flaky_hooks")
    left = [failures]

    @app.capability(http("POST", "/hooks/paid", webhook=webhook))
    async def paid(event: Paid) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise RuntimeError("the ledger is down")
        calls.append(event)

    return app


async def post_twice(server_port: int, body: bytes, signature: str) -> tuple[Reply, Reply]:
    async with RawClient.connect(server_port) as client:
        headers = {"Webhook-Signature": signature}
        await client.send(request("POST", "/hooks/paid", body, headers))
        first = await client.response()
        await client.send(request("POST", "/hooks/paid", body, headers))
        second = await client.response()
    return first, second


async def test_a_host_without_idempotency_serves_signed_webhooks(secret_env: str) -> None:
    calls: list[Paid] = []
    app = hook_app(Webhook(secret_env=secret_env), calls)  # nothing here is idempotent
    body = b'{"payment": "pay_host"}'
    signature = sign(SECRET.encode(), int(time.time()), body)
    async with open_host(app, MemoryBackbone()) as host, open_http_server(host) as server:
        first, second = await post_twice(server.port, body, signature)
    assert first.status == 204, first.body  # was a 500: the replay store did not exist
    assert (second.status, json.loads(second.body)["code"]) == (401, "signature_replayed")
    assert calls == [Paid("pay_host")]


async def test_a_failed_delivery_releases_its_signature_for_the_retry(secret_env: str) -> None:
    calls: list[Paid] = []
    app = flaky_app(Webhook(secret_env=secret_env, replay_window=60), calls, failures=1)
    body = b'{"payment": "pay_retry"}'
    signature = sign(SECRET.encode(), int(time.time()), body)
    async with open_host(app, MemoryBackbone()) as host, open_http_server(host) as server:
        failed, retried = await post_twice(server.port, body, signature)
        _, replayed = await post_twice(server.port, body, signature)
    assert failed.status >= 500
    assert retried.status == 204, retried.body  # the provider's retry is accepted
    assert (replayed.status, json.loads(replayed.body)["code"]) == (401, "signature_replayed")
    assert calls == [Paid("pay_retry")]


def test_the_replay_bucket_outlives_every_signature_whatever_idempotency_keeps() -> None:
    app = App("windows")

    @app.capability(
        http("POST", "/a", webhook=Webhook(secret_env="A_SECRET", tolerance=600)),
        idempotency=Idempotency(ttl=1),
    )
    async def a(body: bytes) -> None: ...

    @app.capability(
        http("POST", "/b", webhook=Webhook(secret_env="B_SECRET", replay_window=3600)),
        timeout=5,
    )
    async def b(body: bytes) -> None: ...

    buckets = {bucket.bucket: bucket for bucket in plan_for(app).buckets}
    replays = buckets[webhook_bucket_for(app)]
    assert replays.ttl >= 2 * 600 and replays.ttl >= 3600  # never the idempotency TTL
    assert buckets["thaw_idempotency_windows"].ttl == 1
    assert plan_for(hook_app(Webhook(secret_env="X"), [])).buckets[0].bucket == (
        "thaw_webhooks_hooks"
    )


class RecordingStore(MemoryIdempotencyStore):
    """Remembers the TTL each completed claim was kept for."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[float] = []

    async def complete(
        self, key: str, token: int, result: bytes, *, ttl: float, digest: bytes = b""
    ) -> None:
        self.kept.append(ttl)
        await super().complete(key, token, result, ttl=ttl, digest=digest)


async def _ok() -> Response:
    return Response(204)


@pytest.mark.parametrize(("skew", "window"), [(-300, 0), (0, 0), (300, 0), (-300, 7200)])
async def test_a_used_signature_is_kept_until_it_is_stale_and_no_longer(
    skew: int, window: float
) -> None:
    now = 1_800_000_000.0
    store = RecordingStore()
    webhook = Webhook(secret_env="X", tolerance=300, replay_window=window)
    verifier = SignatureVerifier(
        webhook, SECRET.encode(), replay_key="k", store=store, timeout=5, now=lambda: now
    )
    timestamp = int(now) + skew  # the sender's clock, anywhere within the tolerance
    headers = {"webhook-signature": sign(SECRET.encode(), timestamp, b"{}")}
    assert (await verifier.guard(headers, b"{}", _ok)).status == 204
    [kept] = store.kept
    assert kept >= timestamp + 300 - now  # no replay is accepted while it is fresh
    assert kept >= window
    bucket_ttl = webhook_replay_ttl(webhook, timeout=5)
    assert kept <= bucket_ttl  # and the bucket keeps it as long


async def test_the_same_signature_while_the_first_is_answered_is_told_to_retry() -> None:
    store = MemoryIdempotencyStore()
    verifier = SignatureVerifier(
        Webhook(secret_env="X"), SECRET.encode(), replay_key="k", store=store
    )
    headers = {"webhook-signature": sign(SECRET.encode(), int(time.time()), b"{}")}
    answering, release = anyio.Event(), anyio.Event()
    seen: list[Response] = []

    async def slow() -> Response:
        answering.set()
        await release.wait()
        return Response(204)

    async with anyio.create_task_group() as group:

        async def first() -> None:
            seen.append(await verifier.guard(headers, b"{}", slow))

        group.start_soon(first)
        await answering.wait()
        during = await verifier.guard(headers, b"{}", _ok)
        release.set()
    after = await verifier.guard(headers, b"{}", _ok)
    assert (during.status, json.loads(during.body)["code"]) == (409, "signature_in_use")
    assert ("retry-after", "1") in during.headers
    assert seen[0].status == 204
    assert (after.status, json.loads(after.body)["code"]) == (401, "signature_replayed")


async def test_an_answer_that_never_finishes_releases_the_signature() -> None:
    store = MemoryIdempotencyStore()
    verifier = SignatureVerifier(
        Webhook(secret_env="X"), SECRET.encode(), replay_key="k", store=store
    )
    headers = {"webhook-signature": sign(SECRET.encode(), int(time.time()), b"{}")}

    async def cut_off() -> Response:
        raise anyio.get_cancelled_exc_class()  # the client went away mid-answer

    with pytest.raises(anyio.get_cancelled_exc_class()):
        await verifier.guard(headers, b"{}", cut_off)
    assert (await verifier.guard(headers, b"{}", _ok)).status == 204


class DownStore(MemoryIdempotencyStore):
    async def claim(self, key: str, **options: Any) -> Claim:
        raise BackboneError("nats: connection closed")


async def test_an_unreachable_replay_store_is_a_503_never_a_pass() -> None:
    verifier = SignatureVerifier(
        Webhook(secret_env="X"), SECRET.encode(), replay_key="k", store=DownStore()
    )
    headers = {"webhook-signature": sign(SECRET.encode(), int(time.time()), b"{}")}
    ran: list[bool] = []

    async def answer() -> Response:
        ran.append(True)
        return Response(204)

    refused = await verifier.guard(headers, b"{}", answer)
    assert refused.status == 503 and not ran
    assert ("retry-after", "1") in refused.headers


@given(value=st.text(max_size=300), body=st.binary(max_size=64))
def test_any_signature_header_is_refused_cleanly(value: str, body: bytes) -> None:
    verifier = SignatureVerifier(
        Webhook(secret_env="X"), SECRET.encode(), replay_key="k", store=MemoryIdempotencyStore()
    )
    checked = verifier.check({"webhook-signature": value}, body)
    assert isinstance(checked, Response) and checked.status == 401
    assert json.loads(checked.body)["code"].startswith("signature_")
