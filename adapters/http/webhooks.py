"""Webhook signatures: verify ``http(..., webhook=Webhook(...))`` routes before they run.

The sender computes ``HMAC-SHA256(secret, "<t>.<body>")`` over the exact body
bytes and sends ``<header>: t=<unix seconds>,v1=<hex>`` (several ``v1`` are
allowed, for secret rotation). A request is refused with 401 problem details:

- ``signature_missing``: no such header;
- ``signature_malformed``: not ``t=<digits>`` plus at least one 64-hex ``v1``;
- ``signature_stale``: ``t`` is further than ``tolerance`` seconds from now;
- ``signature_invalid``: no ``v1`` matches (compared in constant time);
- ``signature_replayed``: with ``replay_window``, this signature was seen before
  within the window (kept in the invoker's idempotency store).

Secrets are read once, when the server starts (``ConfigError`` naming the
variable or file, never the value, when absent); they are never logged and
appear in no repr.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable
from pathlib import Path

from thaw import ConfigError, Webhook
from thaw.adapters.http._wire import Response, response_from_answer
from thaw.lowlevel import IdempotencyStore, problem_answer

__all__ = ["SignatureVerifier", "load_secret", "sign"]

_HEX = frozenset("0123456789abcdef")


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


class SignatureVerifier:
    """Checks one route's signatures. Holds the secret; shows it nowhere."""

    __slots__ = ("_header", "_key", "_now", "_secret", "_store", "_tolerance", "_window")

    def __init__(
        self,
        webhook: Webhook,
        secret: bytes,
        *,
        replay_key: str,
        store: IdempotencyStore,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._header = webhook.header.lower()
        self._tolerance = webhook.tolerance
        self._window = webhook.replay_window
        self._key = replay_key
        self._store = store
        self._now = now

    def __repr__(self) -> str:
        return f"<SignatureVerifier header={self._header!r}>"

    async def verify(self, headers: dict[str, str], body: bytes) -> Response | None:
        """None when the signature holds, else the 401 answer."""
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
        matched = ""
        for candidate in candidates:  # compare every one, in constant time each
            if hmac.compare_digest(expected, candidate):
                matched = candidate
        if not matched:
            return _refuse("signature_invalid", "the signature does not match the body")
        if self._window > 0:
            key = f"{self._key}.{matched}"
            claim = await self._store.claim(key, hold=self._window, ttl=self._window)
            if claim.state != "claimed":  # the claim lapses by itself after the window
                return _refuse("signature_replayed", "this signature was already used")
        return None


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
