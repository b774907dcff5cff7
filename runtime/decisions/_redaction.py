"""Redaction: what of a message's headers and an error's text may be kept in a dead letter.

Dead letters are stored for days and shown to operators, so credentials never go
in: ``redact_headers`` replaces the value of every header whose name says it holds
one (``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``, and any
name containing ``auth``, ``token``, ``secret``, ``passw``, ``apikey``, ``cookie``,
``session`` or ``credential``, ignoring case, ``-`` and ``_``; plus the names the
host lists, see ``extra_redacted``) by ``REDACTED``, keeping the name so the reader
sees one was there; ``scrub_secrets`` rewrites credentials inside free text (error
messages, and the values of the headers that are kept): the password of a URL
(``scheme://user:pass@host`` -> ``scheme://user:***@host``), a URL's lone userinfo
(a NATS token: ``nats://tok@host`` -> ``nats://***@host``), ``password=...``,
``token: ...`` and the like, ``Bearer``/``Basic`` credentials, and the values of the
credentials the host itself was given (``KNOWN_SECRETS``: ``thaw serve`` sets the NATS
password and token it connects with), wherever they appear.

Invariants: pure functions of their inputs (no I/O), a header's name is never
changed, a value is only ever replaced or shortened. The payload is not touched:
a replay must give the function its input back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar

__all__ = [
    "REDACTED",
    "ALWAYS_REDACTED",
    "is_secret_header",
    "redact_headers",
    "scrub_secrets",
    "parse_header_names",
    "EXTRA_REDACTED",
    "KNOWN_SECRETS",
    "known_secrets",
    "REDACT_HEADERS_ENV",
]

REDACTED = "[redacted]"
# The names a host adds to the built-in list (``thaw serve --redact-header``, or
# ``THAW_REDACT_HEADERS``), lower-case; set before the host starts its workers, which
# inherit it, so a dead letter a worker writes honours it.
REDACT_HEADERS_ENV = "THAW_REDACT_HEADERS"  # comma-separated names, read by `thaw serve`
EXTRA_REDACTED: ContextVar[tuple[str, ...]] = ContextVar("thaw_extra_redacted", default=())
# Values never to be written anywhere (the host's own credentials), longest first; set
# like EXTRA_REDACTED, before the workers start. Values shorter than 4 characters are
# not taken: they would blank out ordinary words.
KNOWN_SECRETS: ContextVar[tuple[str, ...]] = ContextVar("thaw_known_secrets", default=())
ALWAYS_REDACTED = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Parts of a header name (lower case, without - and _) that mark it as holding a credential.
_SECRET_PARTS = (
    "auth",
    "token",
    "secret",
    "passw",
    "apikey",
    "cookie",
    "session",
    "credential",
    "privatekey",
)

# scheme://user:password@  and  scheme://token@  (the userinfo ends at the last @ before
# the host: a raw @ in a password is not valid in a URL, but text is not always valid)
_URL_WITH_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^\s/:@]*):[^\s/]*@")
_URL_WITH_TOKEN = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/:@]+@")
_KEY_VALUE = re.compile(
    r"(?i)([\w\-]*(?:password|passwd|pwd|token|secret|api[_\-]?key|credentials?)[\w\-]*)"
    r"([\"']?\s*[=:]\s*[\"']?)"
    # quoted (after a quote): up to the closing quote, spaces included; else up to a delimiter
    r"((?<=[\"'])[^\"'\n]+|[^\s&;,\"')\]}]+)"
)
# An HTTP credential in text: whatever follows the scheme, up to the next space.
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+(?!\*\*\*)\S+")


def _normalised(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def is_secret_header(name: str, extra: frozenset[str] = frozenset()) -> bool:
    """Whether a header named ``name`` holds a credential (``extra``: lower-case names)."""
    lowered = name.lower()
    if lowered in ALWAYS_REDACTED or lowered in extra:
        return True
    flat = _normalised(name)
    return any(part in flat for part in _SECRET_PARTS)


def scrub_secrets(text: str) -> str:
    """``text`` with the credentials it holds replaced by ``***`` (see the module doc)."""
    if not text:
        return text
    for secret in KNOWN_SECRETS.get():
        if secret in text:
            text = text.replace(secret, "***")
    text = _URL_WITH_PASSWORD.sub(r"\1\2:***@", text)
    text = _URL_WITH_TOKEN.sub(r"\1***@", text)
    text = _AUTH_SCHEME.sub(r"\1 ***", text)
    return _KEY_VALUE.sub(r"\1\2***", text)


def redact_headers(
    headers: Mapping[str, str], extra: Iterable[str] | None = None
) -> dict[str, str]:
    """A copy of ``headers`` with secret values replaced and the others scrubbed.

    ``extra``: more header names to redact (None: the host's, ``EXTRA_REDACTED``).
    """
    listed = EXTRA_REDACTED.get() if extra is None else extra
    names = frozenset(name.strip().lower() for name in listed if name.strip())
    return {
        name: REDACTED if is_secret_header(name, names) else scrub_secrets(value)
        for name, value in headers.items()
    }


def parse_header_names(text: str) -> tuple[str, ...]:
    """Header names from a comma-separated list (``THAW_REDACT_HEADERS``), lower-cased."""
    return tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))


def known_secrets(values: Iterable[str | None]) -> tuple[str, ...]:
    """``values`` as ``KNOWN_SECRETS`` holds them: the ones of 4 characters or more,
    longest first (so a secret containing another is replaced whole)."""
    kept = {value for value in values if value and len(value) >= 4}
    return tuple(sorted(kept, key=len, reverse=True))
