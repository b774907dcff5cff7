"""NATS subject and JetStream name rules: validation and wildcard matching.

A subject is a string of dot-separated tokens (``orders.eu.created``). In a
*pattern*, the token ``*`` stands for exactly one token and ``>`` (last token
only) for one or more trailing tokens. Invariants: every function here is pure;
a valid subject has no empty token and no whitespace or control character;
``*`` and ``>`` are only ever whole tokens (``a*`` is refused rather than taken
literally, because it is almost always a typo); validation failures raise
``ConfigError`` naming the offending value and saying what to fix.
"""

from __future__ import annotations

import re

from thaw._errors import ConfigError

__all__ = [
    "validate_subject",
    "subject_matches",
    "subjects_overlap",
    "subject_is_subset",
    "validate_name",
    "validate_kv_key",
]

_MAX_NAME_LENGTH = 255
_FORBIDDEN_IN_NAME = frozenset(".*>/\\")
_BUCKET_NAME = re.compile(r"[-_a-zA-Z0-9]+")
_KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
# A valid key in one match (tokens of key characters joined by single dots): the fast path.
_VALID_KV_KEY = re.compile(r"[-/_=a-zA-Z0-9]+(?:\.[-/_=a-zA-Z0-9]+)*").fullmatch


def _bad_char(text: str) -> str | None:
    """The first whitespace or control character in ``text``, if any."""
    for char in text:
        if char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F:
            return char
    return None


def validate_subject(subject: str, *, wildcards: bool) -> None:
    """Raise ``ConfigError`` unless ``subject`` is a valid NATS subject.

    With ``wildcards=True`` it may be a pattern (``*`` tokens, a final ``>``), as in
    stream subjects and consumer filters; publish subjects pass ``wildcards=False``.
    """
    if not isinstance(subject, str) or not subject:
        raise ConfigError(f"invalid subject {subject!r}: a subject must be a non-empty string")
    bad = _bad_char(subject)
    if bad is not None:
        raise ConfigError(
            f"invalid subject {subject!r}: it contains {bad!r}; "
            "subjects may not contain whitespace or control characters"
        )
    tokens = subject.split(".")
    last = len(tokens) - 1
    for index, token in enumerate(tokens):
        if not token:
            raise ConfigError(
                f"invalid subject {subject!r}: token {index + 1} is empty; "
                "separate tokens with single dots and do not start or end with a dot"
            )
        if token in ("*", ">"):
            if not wildcards:
                raise ConfigError(
                    f"invalid subject {subject!r}: wildcard {token!r} is not allowed here; "
                    "publish to a concrete subject"
                )
            if token == ">" and index != last:
                raise ConfigError(
                    f"invalid subject {subject!r}: '>' must be the last token "
                    "(it matches one or more trailing tokens)"
                )
        elif "*" in token or ">" in token:
            raise ConfigError(
                f"invalid subject {subject!r}: token {token!r} mixes a wildcard with other "
                "characters; '*' and '>' must stand alone between dots"
            )


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the concrete ``subject`` is matched by ``pattern`` (both assumed valid)."""
    if pattern == subject:
        return True
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > index
        if index >= len(subject_tokens):
            return False
        if token != "*" and token != subject_tokens[index]:
            return False
    return len(pattern_tokens) == len(subject_tokens)


def subjects_overlap(first: str, second: str) -> bool:
    """Whether some concrete subject is matched by both patterns.

    JetStream refuses two streams whose subjects overlap, because a published
    message must land in exactly one stream.
    """
    first_tokens = first.split(".")
    second_tokens = second.split(".")
    for index in range(min(len(first_tokens), len(second_tokens))):
        a, b = first_tokens[index], second_tokens[index]
        if a == ">" or b == ">":
            # The other side has a token here, so its remainder is one or more tokens.
            return True
        if a != "*" and b != "*" and a != b:
            return False
    return len(first_tokens) == len(second_tokens)


def subject_is_subset(pattern: str, of: str) -> bool:
    """Whether every subject matched by ``pattern`` is also matched by ``of``.

    JetStream requires a consumer's filter subject to be a subset of one of its
    stream's subjects.
    """
    tokens = pattern.split(".")
    of_tokens = of.split(".")
    for index, of_token in enumerate(of_tokens):
        if index >= len(tokens):
            return False
        if of_token == ">":
            return True
        token = tokens[index]
        if token == ">":
            return False
        if of_token == "*":
            continue
        if token != of_token:
            return False
    return len(tokens) == len(of_tokens)


def validate_name(kind: str, name: str) -> None:
    """Raise ``ConfigError`` unless ``name`` is a valid JetStream stream/consumer/bucket name.

    ``kind`` names the thing in the message (``"stream"``, ``"durable consumer"``,
    ``"kv bucket"``...). Names become subject tokens and file names on the server:
    non-empty, at most 255 characters, no whitespace or control characters, none of
    ``. * > / \\``. A kind ending in ``bucket`` (KV and object store) follows the
    stricter bucket rule: letters, digits, ``-`` and ``_`` only.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"invalid {kind} name {name!r}: a name must be a non-empty string")
    if len(name) > _MAX_NAME_LENGTH:
        raise ConfigError(
            f"invalid {kind} name {name[:40]!r}...: it has {len(name)} characters; "
            f"the limit is {_MAX_NAME_LENGTH}"
        )
    bad = _bad_char(name)
    if bad is None:
        bad = next((char for char in name if char in _FORBIDDEN_IN_NAME), None)
    if bad is not None:
        raise ConfigError(
            f"invalid {kind} name {name!r}: it contains {bad!r}; names may not contain "
            "whitespace, control characters, '.', '*', '>', '/' or '\\'"
        )
    if kind.endswith("bucket") and _BUCKET_NAME.fullmatch(name) is None:
        raise ConfigError(f"invalid {kind} name {name!r}: use only letters, digits, '-' and '_'")


def validate_kv_key(key: str) -> None:
    """Raise ``ConfigError`` unless ``key`` is a valid JetStream KV key.

    Keys use ``[-/_=.a-zA-Z0-9]``; dots separate tokens, so a key may not start or
    end with a dot or contain two dots in a row.
    """
    if type(key) is str and _VALID_KV_KEY(key) is not None:
        return  # the common case, checked in one regex match (this is on the KV hot path)
    if not isinstance(key, str) or not key:
        raise ConfigError(f"invalid KV key {key!r}: a key must be a non-empty string")
    if _KV_KEY.fullmatch(key) is None:
        bad = next(char for char in key if _KV_KEY.fullmatch(char) is None)
        raise ConfigError(
            f"invalid KV key {key!r}: it contains {bad!r}; "
            "keys may use only letters, digits and '-', '/', '_', '=', '.'"
        )
    if key.startswith(".") or key.endswith(".") or ".." in key:
        raise ConfigError(
            f"invalid KV key {key!r}: dots separate tokens, so a key may not start or end "
            "with '.' or contain '..'"
        )


def parse_ack_subject(reply: str) -> tuple[str, int, int, int]:
    """(stream, num_delivered, stream sequence, pending) from a JetStream ``$JS.ACK`` subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or with
    ``<domain>.<account hash>`` after ``ACK`` (and a random token at the end); pending
    is how many messages the consumer still held for delivery after this one. The
    NATS adapters share it (the edge host too, so it lives in the portable core).
    """
    stream, delivered, seq, _stamp, pending = ack_fields(reply)
    return stream, delivered, seq, pending


def ack_fields(reply: str) -> tuple[str, int, int, int, int]:
    """``parse_ack_subject`` with the timestamp too, from one split (the stream hot path
    reads both): (stream, num_delivered, stream sequence, stored at in ns since the
    epoch or 0 if that token is no number, pending). IndexError or ValueError for a
    subject that is no ``$JS.ACK`` subject."""
    tokens = reply.split(".")
    short = len(tokens) == 9
    stamp = tokens[7 if short else 9]
    if short:
        fields = tokens[2], int(tokens[4]), int(tokens[5]), int(tokens[8])
    else:
        fields = tokens[4], int(tokens[6]), int(tokens[7]), int(tokens[10])
    return fields[0], fields[1], fields[2], int(stamp) if stamp.isdigit() else 0, fields[3]
