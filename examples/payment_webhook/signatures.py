"""Webhook signatures: HMAC-SHA256 over ``"<timestamp>.<raw body>"``.

The provider sends ``Webhook-Signature: t=1767225600,v1=<hex>[,v1=<hex>...]``;
several ``v1`` values appear while it rotates secrets. A signature is accepted
when any ``v1`` matches under any of our keys (compared in constant time) and
``t`` lies within ``tolerance`` seconds of now, which bounds replays.
Every failure is a ``Rejected`` with a stable code and says what to fix.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from thaw import Rejected

HEADER = "Webhook-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300.0
MAX_SIGNATURES = 8

_PAIR = re.compile(r"\s*([a-z0-9]+)=([^,\s]*)\s*")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def prepare_keys(secrets: Sequence[str]) -> tuple[hmac.HMAC, ...]:
    """HMAC objects with the key schedule done once; ``verify`` copies them per call."""
    keys = tuple(hmac.new(s.encode(), digestmod=hashlib.sha256) for s in secrets if s)
    if not keys:
        raise ValueError("at least one non-empty webhook secret is required")
    return keys


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value a provider would send (for tests, tools and the demo)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},{SCHEME}={digest.hexdigest()}"


def parse_header(value: str) -> tuple[int, list[str]]:
    """``(timestamp, [v1 digests])``; ``signature_malformed`` if the header is not the format."""
    timestamp: int | None = None
    digests: list[str] = []
    for part in value.split(","):
        match = _PAIR.fullmatch(part)
        if match is None:
            raise _malformed(f"part {part[:40]!r} is not key=value")
        name, text = match.groups()
        if name == "t":
            if timestamp is not None or not _TIMESTAMP.fullmatch(text):
                raise _malformed("it needs exactly one t=<unix seconds>")
            timestamp = int(text)
        elif name == SCHEME:
            if not _HEX_DIGEST.fullmatch(text):
                raise _malformed(f"{SCHEME}= must be 64 lowercase hex digits")
            digests.append(text)
        # other schemes (v0, future ones) are ignored, as providers document
    if timestamp is None:
        raise _malformed("it has no t=<unix seconds>")
    if not digests or len(digests) > MAX_SIGNATURES:
        raise _malformed(f"it needs 1 to {MAX_SIGNATURES} {SCHEME}=<hex> signatures")
    return timestamp, digests


def verify(
    header: str | None,
    body: bytes,
    keys: Sequence[hmac.HMAC],
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """Check ``header`` against ``body``; return the signed timestamp or raise ``Rejected``."""
    if not header:
        raise Rejected(
            f"the request has no {HEADER} header; sign it as t=<unix time>,{SCHEME}=<hex>",
            code="signature_missing",
            http_status=401,
        )
    timestamp, digests = parse_header(header)
    if abs(now - timestamp) > tolerance:
        raise Rejected(
            f"the signature timestamp {timestamp} is {abs(now - timestamp):.0f}s away from now; "
            f"it must be within {tolerance:.0f}s (check the sender's clock or replay)",
            code="signature_stale",
            http_status=401,
        )
    signed = f"{timestamp}.".encode() + body
    for key in keys:
        mac = key.copy()
        mac.update(signed)
        expected = mac.hexdigest()
        # compare against every candidate: no early exit that would leak which matched
        if sum(hmac.compare_digest(expected, digest) for digest in digests):
            return timestamp
    raise Rejected(
        f"no {SCHEME} signature matches the body under the configured secrets "
        "(wrong secret, or the body was changed in transit)",
        code="signature_invalid",
        http_status=401,
    )


def _malformed(why: str) -> Rejected:
    return Rejected(
        f"the {HEADER} header is malformed: {why}; expected t=<unix time>,{SCHEME}=<hex>",
        code="signature_malformed",
        http_status=400,
    )
