"""Webhook signatures: verify ``http(..., webhook=Webhook(...))`` routes before they run.

The sender computes ``HMAC-SHA256(secret, "<t>.<body>")`` over the exact body
bytes and sends ``<header>: t=<unix seconds>,v1=<hex>`` (several ``v1`` are
allowed, for secret rotation). A request is refused with 401 problem details:

- ``signature_missing``: no such header;
- ``signature_malformed``: not ``t=<digits>`` plus at least one 64-hex ``v1``;
- ``signature_stale``: ``t`` is further than ``tolerance`` seconds from now;
- ``signature_invalid``: no ``v1`` matches (compared in constant time);
- ``signature_replayed``: this signature was already answered with a 2xx.

Replay protection is always on, in its own store (the KV bucket
``thaw_webhooks_<app>`` on a host's backbone, provisioned for apps with webhook
routes; in memory for a bare invoker), never the idempotency bucket. A verified
signature is claimed while the route answers: a 2xx completes the claim, and the
record is kept until the signature would be stale anyway (``t + tolerance``) or
for ``replay_window`` seconds, whichever is longer; any other answer, or a
request that never finishes, releases it, so the provider's retry of a failed
delivery is accepted. The same signature arriving while the first is still
being answered gets 409 ``signature_in_use`` with ``Retry-After``; a replay
store that cannot be reached is a 503, never a pass.

Secrets are read once, when the server starts (``ConfigError`` naming the
variable or file, never the value, when absent); they are never logged and
appear in no repr.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from thaw import ConfigError, ThawError, Webhook
from thaw.adapters.http._wire import Response, response_from_answer
from thaw.host._provision import WEBHOOK_REPLAY_MARGIN, webhook_bucket_for
from thaw.invocation._idempotency import MemoryIdempotencyStore
from thaw.invocation._kv_idempotency import KvIdempotencyStore
from thaw.lowlevel import Backbone, CapabilityInvoker, IdempotencyStore, problem_answer

__all__ = ["SignatureVerifier", "load_secret", "replay_store_for", "sign"]

log = logging.getLogger("thaw.http")
_HEX = frozenset("0123456789abcdef")
_SETTLE_LIMIT = 5.0  # seconds a cancelled request may spend releasing its claim


def replay_store_for(invoker: CapabilityInvoker, backbone: Backbone | None) -> IdempotencyStore:
    """Where an app's webhook routes remember signatures: its own bucket on the
    backbone (shared by every host and worker), or this process's memory."""
    if backbone is None:
        return MemoryIdempotencyStore()
    return KvIdempotencyStore(backbone, bucket=webhook_bucket_for(invoker.app))


def load_secret(webhook: Webhook, environ: dict[str, str] | None = None) -> bytes:
    """The secret a Webhook names: an environment variable or a file's contents."""
    if webhook.secret_env:
        value = (os.environ if environ is None else environ).get(webhook.secret_env, "")
        if not value:
            raise ConfigError(
                f"webhook secret: environment variable {webhook.secret_env} is not set or empty"
            )
        return value.encode()
    try:
        data = Path(webhook.secret_file).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"webhook secret: cannot read {webhook.secret_file!r} ({exc.strerror})"
        ) from None
    if not data:
        raise ConfigError(f"webhook secret: {webhook.secret_file!r} is empty")
    return data


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The header value a sender sends (for tests and for clients written in Python)."""
    digest = hmac.new(secret, b"%d.%s" % (timestamp, body), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _refuse(code: str, detail: str) -> Response:
    return response_from_answer(problem_answer(code, detail, status=401))


def _same(response: Response) -> Response:
    return response


class SignatureVerifier:
    """Checks one route's signatures and keeps them from being replayed. Holds the
    secret; shows it nowhere."""

    __slots__ = ("_header", "_hold", "_key", "_now", "_secret", "_store", "_tolerance", "_window")

    def __init__(
        self,
        webhook: Webhook,
        secret: bytes,
        *,
        replay_key: str,
        store: IdempotencyStore,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._header = webhook.header.lower()
        self._tolerance = webhook.tolerance
        self._window = webhook.replay_window
        self._key = replay_key
        self._store = store
        # A claim outlives the route's answer (its capability's timeout) so that no
        # replay runs beside it, and lapses by itself if this process dies holding it.
        self._hold = timeout + WEBHOOK_REPLAY_MARGIN
        self._now = now

    def __repr__(self) -> str:
        return f"<SignatureVerifier header={self._header!r}>"

    def check(self, headers: dict[str, str], body: bytes) -> Response | tuple[int, str]:
        """The 401 answer, or the signature's timestamp and the digest it matched."""
        value = headers.get(self._header)
        if value is None:
            return _refuse("signature_missing", f"the {self._header} header is required")
        timestamp, candidates = _parse(value)
        if timestamp is None or not candidates:
            return _refuse(
                "signature_malformed",
                f"the {self._header} header must look like t=<unix seconds>,v1=<64 hex digits>",
            )
        if abs(self._now() - timestamp) > self._tolerance:
            return _refuse(
                "signature_stale",
                f"the signature's timestamp is more than {self._tolerance:g} s from the "
                "server's clock; sign the request again",
            )
        expected = hmac.new(self._secret, b"%d.%s" % (timestamp, body), hashlib.sha256).hexdigest()
        matched = False
        for candidate in candidates:  # compare every one, in constant time each
            matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            return _refuse("signature_invalid", "the signature does not match the body")
        return timestamp, expected

    async def guard(
        self,
        headers: dict[str, str],
        body: bytes,
        answer: Callable[[], Awaitable[Response]],
        *,
        refused: Callable[[Response], Response] = _same,
    ) -> Response:
        """Verify, claim the signature, ``answer()``, then keep the claim (2xx) or
        release it. Refusals pass through ``refused`` (CORS headers, say)."""
        checked = self.check(headers, body)
        if isinstance(checked, Response):
            return refused(checked)
        timestamp, digest = checked
        key = f"{self._key}.{digest}"
        try:
            claim = await self._store.claim(key, hold=self._hold, ttl=self._hold)
        except ThawError as exc:
            log.warning("webhook replay store unavailable for %s: %s", self._key, exc)
            detail = "the replay store is unavailable; send the request again"
            return refused(_unavailable(exc.code, detail))
        if claim.state == "busy":
            detail = "this signature is being answered right now; retry in a moment"
            problem = problem_answer("signature_in_use", detail, status=409, retry_after=1)
            return refused(response_from_answer(problem))
        if claim.state != "claimed":
            return refused(_refuse("signature_replayed", "this signature was already used"))
        try:
            response = await answer()
        except BaseException:
            with anyio.move_on_after(_SETTLE_LIMIT, shield=True):
                await self._settle(key, claim.token, timestamp, answered=False)
            raise
        await self._settle(key, claim.token, timestamp, answered=200 <= response.status < 300)
        return response

    async def _settle(self, key: str, token: int, timestamp: int, *, answered: bool) -> None:
        """Keep an answered signature until it is stale (or ``replay_window``); free it
        otherwise. A store failure here is logged: the answer stands, and the claim
        lapses by itself after its hold."""
        try:
            if answered:
                keep = max(timestamp + self._tolerance - self._now(), self._window, 0.0)
                await self._store.complete(key, token, b"", ttl=keep + WEBHOOK_REPLAY_MARGIN)
            else:
                await self._store.release(key, token)
        except ThawError as exc:
            log.warning("webhook replay store: could not settle a claim of %s: %s", self._key, exc)


def _unavailable(code: str, detail: str) -> Response:
    return response_from_answer(problem_answer(code, detail, status=503, retry_after=1))


def _parse(value: str) -> tuple[int | None, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for part in value.split(","):
        name, sep, item = part.strip().partition("=")
        if not sep:
            return None, []
        if name == "t":
            if timestamp is not None or not item.isascii() or not item.isdigit() or len(item) > 12:
                return None, []
            timestamp = int(item)
        elif name == "v1":
            if len(item) != 64 or not _HEX.issuperset(item):
                return None, []
            candidates.append(item)
    return timestamp, candidates[:8]
