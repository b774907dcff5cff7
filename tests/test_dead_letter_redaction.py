"""Dead letters keep no credentials: secret headers redacted, error texts scrubbed.

Before the redaction, ``dead_letter_headers`` copied ``Authorization`` and
``Cookie`` as they came and kept error texts whole, URLs with passwords included,
in a stream that was never aged out.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thaw.decisions._delivery import DeadLetter, dead_letter_headers
from thaw.decisions._redaction import (
    EXTRA_REDACTED,
    KNOWN_SECRETS,
    REDACTED,
    is_secret_header,
    known_secrets,
    parse_header_names,
    redact_headers,
    scrub_secrets,
)

SECRET_NAMES = (
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "Set-Cookie",
    "X-Api-Key",
    "X-API-KEY",
    "api_key",
    "X-Auth-Token",
    "X-Amz-Security-Token",
    "X-Client-Secret",
    "X-Session-Id",
    "X-Password",
)
PLAIN_NAMES = ("Content-Type", "traceparent", "X-Request-Id", "Accept", "KV-Operation")
SECRET_KEYS = ("password", "passwd", "token", "secret", "api_key", "apikey", "access_token")


def letter(original: dict[str, str], reason: str = "failed", **options: object) -> dict[str, str]:
    return dead_letter_headers(
        DeadLetter("boom", reason),
        app="a",
        capability="c",
        subject="a.c",
        stream="A",
        seq=1,
        attempts=3,
        original=original,
        **options,  # type: ignore[arg-type]
    )


def test_authorization_and_cookie_headers_are_not_kept() -> None:
    headers = letter(
        {
            "Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
            "Cookie": "session=abc123def",
            "Content-Type": "application/json",
        }
    )
    assert headers["Authorization"] == REDACTED
    assert headers["Cookie"] == REDACTED
    assert headers["Content-Type"] == "application/json"
    assert "abc123def" not in str(headers) and "eyJhbGci" not in str(headers)


def test_error_texts_lose_url_passwords_and_secret_pairs() -> None:
    reason = (
        "connect to postgres://app:hunter2@db.internal:5432/shop failed "
        "(password=hunter3, token: 'tok-9', nats://s3cr3tT0ken@nats:4222)"
    )
    message = letter({}, reason)["Thaw-Error-Message"]
    assert "postgres://app:***@db.internal:5432/shop" in message
    assert "nats://***@nats:4222" in message
    for secret in ("hunter2", "hunter3", "tok-9", "s3cr3tT0ken"):
        assert secret not in message


def test_a_host_lists_more_headers_to_redact() -> None:
    original = {"X-Tenant-Pin": "4711", "X-Other": "kept"}
    assert letter(original, redact=["x-tenant-pin"])["X-Tenant-Pin"] == REDACTED
    token = EXTRA_REDACTED.set(parse_header_names(" X-Tenant-PIN , ,x-more"))
    try:
        headers = letter(original)
    finally:
        EXTRA_REDACTED.reset(token)
    assert headers["X-Tenant-Pin"] == REDACTED
    assert headers["X-Other"] == "kept"
    assert letter(original)["X-Tenant-Pin"] == "4711"  # the list is the host's, not global


def test_the_hosts_own_credentials_never_reach_a_dead_letter() -> None:
    """A function that puts the NATS password it found into an error (or a header) does
    not put it in the dead letter: the host's credentials are replaced wherever they are."""
    password, token = "pw-Qx81-secret", "tok-Zr55-secret"
    reason = f"could not log in with {password} (token {token})"
    original = {"X-Note": f"used {token}"}
    assert password in letter(original, reason)["Thaw-Error-Message"]  # not known: kept
    known = KNOWN_SECRETS.set(known_secrets([password, token, None, "abc"]))
    try:
        headers = letter(original, reason)
        assert scrub_secrets("abc def") == "abc def"  # too short to be taken as a secret
    finally:
        KNOWN_SECRETS.reset(known)
    text = repr(headers)
    assert password not in text and token not in text
    assert "could not log in with ***" in headers["Thaw-Error-Message"]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_header_names_are_recognised(name: str) -> None:
    assert is_secret_header(name)


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_plain_header_names_are_kept(name: str) -> None:
    assert not is_secret_header(name)
    assert redact_headers({name: "v"}) == {name: "v"}


_SECRET_ALPHABET = string.ascii_letters + string.digits + "-._~!$*+"
_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " .,;()[]{}-_'\"\t\n", max_size=40)


@st.composite
def secrets_in_places(draw: st.DrawFn) -> tuple[str, dict[str, str], str]:
    """A distinctive secret, headers holding it and a reason text holding it somewhere."""
    secret = "Zq" + draw(st.text(alphabet=_SECRET_ALPHABET, min_size=6, max_size=24)) + "Xk"
    headers: dict[str, str] = {}
    for name in draw(st.lists(st.sampled_from(SECRET_NAMES), min_size=1, max_size=4)):
        cased = "".join(
            c.upper() if draw(st.booleans()) else c.lower() for c in name
        )  # header names in any case
        headers[cased] = draw(_TEXT) + secret + draw(_TEXT)
    headers.update({name: draw(_TEXT) for name in draw(st.lists(st.sampled_from(PLAIN_NAMES)))})
    scheme = draw(st.sampled_from(("nats", "postgres", "https", "redis", "amqp+ssl")))
    user = draw(st.text(alphabet=string.ascii_lowercase, max_size=8))
    key = draw(st.sampled_from(SECRET_KEYS))
    key = key.upper() if draw(st.booleans()) else key
    separator = draw(st.sampled_from(("=", ": ", " = ", '": "', "='")))
    forms = (
        f"{scheme}://{user}:{secret}@host.example:4222/path",
        f"{scheme}://{secret}@host.example",
        f"{key}{separator}{secret}",
        f"Authorization: Bearer {secret}",
    )
    form = draw(st.sampled_from(forms))
    reason = draw(_TEXT) + " " + form + " " + draw(_TEXT)
    # A URL in a kept header is scrubbed as well.
    headers["X-Upstream"] = f"{scheme}://{user}:{secret}@upstream"
    return secret, headers, reason


@settings(max_examples=300, deadline=None)
@given(secrets_in_places())
def test_no_secret_survives_in_any_header_or_position(
    case: tuple[str, dict[str, str], str],
) -> None:
    secret, original, reason = case
    headers = letter(original, reason)
    for name, value in headers.items():
        assert secret not in value, (name, value)
    for name in original:
        assert name in headers  # a header's name is kept, so the reader sees it was there


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_scrubbing_never_lengthens_or_fails_on_any_text(text: str) -> None:
    scrubbed = scrub_secrets(text)
    assert isinstance(scrubbed, str)
    assert scrub_secrets(scrubbed) == scrubbed  # idempotent: scrubbed text stays as it is
