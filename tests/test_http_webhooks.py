"""Webhook signature verification per route: valid, stale, tampered, missing, replayed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest
from test_http_support import RawClient, request, serving

from thaw import App, ConfigError, Webhook, http
from thaw.adapters.http import HttpConfig, HttpService
from thaw.adapters.http.webhooks import SignatureVerifier, load_secret, sign
from thaw.lowlevel import Invoker
from thaw.testing import MemoryIdempotencyStore

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
    cases = {
        "valid": (body, {"X-Sig": good}),
        "rotated": (body, {"X-Sig": good.replace("v1=", "v1=" + "0" * 64 + ",v1=")}),
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


async def test_the_replay_window_refuses_a_signature_seen_before(secret_env: str) -> None:
    calls: list[Paid] = []
    app = hook_app(Webhook(secret_env=secret_env, replay_window=60), calls)
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
