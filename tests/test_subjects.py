"""Subjects and names: validation messages, and wildcard matching checked against oracles."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw._errors import ConfigError
from thaw.backbone._subjects import (
    parse_ack_subject,
    subject_is_subset,
    subject_matches,
    subjects_overlap,
    validate_kv_key,
    validate_name,
    validate_subject,
)

# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize("subject", ["a", "orders.eu.created", "a-b_c.D9", "ünïcode.ok"])
def test_concrete_subjects_are_valid_either_way(subject: str) -> None:
    validate_subject(subject, wildcards=False)
    validate_subject(subject, wildcards=True)


@pytest.mark.parametrize("subject", ["*", ">", "a.*", "a.>", "*.b.>", "a.*.*"])
def test_patterns_are_valid_only_where_wildcards_are_allowed(subject: str) -> None:
    validate_subject(subject, wildcards=True)
    with pytest.raises(ConfigError, match="wildcard"):
        validate_subject(subject, wildcards=False)


@pytest.mark.parametrize(
    ("subject", "fragment"),
    [
        ("", "non-empty"),
        (".a", "token 1 is empty"),
        ("a.", "token 2 is empty"),
        ("a..b", "token 2 is empty"),
        ("a b", "' '"),
        ("a\tb", "'\\\\t'"),
        ("a\x00", "control"),
        ("a.>.b", "last token"),
        ("a*.b", "must stand alone"),
        ("a.b>", "must stand alone"),
    ],
)
def test_invalid_subjects_name_the_subject_and_the_problem(subject: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as caught:
        validate_subject(subject, wildcards=True)
    assert repr(subject) in str(caught.value)


@pytest.mark.parametrize("kind", ["stream", "consumer", "durable consumer"])
@pytest.mark.parametrize("name", ["orders", "ORDERS_v2", "a-b", "x" * 255])
def test_valid_names(kind: str, name: str) -> None:
    validate_name(kind, name)


@pytest.mark.parametrize("name", ["", "a.b", "a*", "a>", "a/b", "a\\b", "a b", "a\nb", "x" * 256])
def test_invalid_names_name_the_kind(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid stream name"):
        validate_name("stream", name)


@pytest.mark.parametrize("kind", ["bucket", "kv bucket", "object store bucket"])
def test_bucket_names_allow_only_letters_digits_dash_underscore(kind: str) -> None:
    validate_name(kind, "claims-v2_x")
    with pytest.raises(ConfigError, match="letters, digits"):
        validate_name(kind, "claims:v2")
    validate_name("stream", "claims:v2")  # streams are less strict


@pytest.mark.parametrize("key", ["a", "a.b.c", "user/42", "k=v", "-_/=.x", "A9"])
def test_valid_kv_keys(key: str) -> None:
    validate_kv_key(key)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "non-empty"),
        (".a", "start or end"),
        ("a.", "start or end"),
        ("a..b", "'\\.\\.'"),
        ("a b", "' '"),
        ("a*", "'\\*'"),
        ("a>", "'>'"),
        ("é", "'é'"),
    ],
)
def test_invalid_kv_keys(key: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        validate_kv_key(key)


# -- properties -----------------------------------------------------------------------

_KEY_ORACLE = re.compile(r"[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*")


@given(st.text(alphabet="ab.-_/=*> é\n", max_size=12))
def test_kv_key_validation_agrees_with_the_regular_expression(key: str) -> None:
    valid = _KEY_ORACLE.fullmatch(key) is not None
    if valid:
        validate_kv_key(key)
    else:
        with pytest.raises(ConfigError):
            validate_kv_key(key)


_tokens = st.text(alphabet="abcXYZ019-_", min_size=1, max_size=4)


@given(st.lists(_tokens, min_size=1, max_size=6))
def test_joined_tokens_are_valid_subjects_that_match_themselves(tokens: list[str]) -> None:
    subject = ".".join(tokens)
    validate_subject(subject, wildcards=False)
    assert subject_matches(subject, subject)
    assert subject_matches(">", subject)
    assert subject_matches(".".join("*" for _ in tokens), subject)


@given(st.text(alphabet="ab.*> \t", max_size=10))
def test_validation_agrees_with_a_token_oracle(subject: str) -> None:
    tokens = subject.split(".")
    valid = (
        bool(subject)
        and not any(char in subject for char in " \t")
        and all(token in ("*", ">") or (token and not set(token) & {"*", ">"}) for token in tokens)
        and ">" not in tokens[:-1]
    )
    if valid:
        validate_subject(subject, wildcards=True)
    else:
        with pytest.raises(ConfigError):
            validate_subject(subject, wildcards=True)


# Patterns over a small alphabet; the universe of concrete subjects adds a token
# ("c") no pattern mentions and is one token longer than any pattern, so every
# distinction between two patterns shows up on some subject in it.
_pattern_tokens = st.sampled_from(["a", "b", "*"])
_patterns = st.builds(
    lambda tokens, tail: ".".join([*tokens, ">"] if tail else tokens) or ">",
    st.lists(_pattern_tokens, min_size=0, max_size=3),
    st.booleans(),
)
_UNIVERSE = [
    ".".join(tokens) for length in range(1, 6) for tokens in itertools.product("abc", repeat=length)
]


def _regex_for(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in pattern.split("."):
        parts.append({"*": r"[^.]+", ">": r"[^.]+(?:\.[^.]+)*"}.get(token, re.escape(token)))
    return re.compile(r"\.".join(parts))


@given(_patterns, st.sampled_from(_UNIVERSE))
def test_matching_agrees_with_a_regular_expression(pattern: str, subject: str) -> None:
    validate_subject(pattern, wildcards=True)
    expected = _regex_for(pattern).fullmatch(subject) is not None
    assert subject_matches(pattern, subject) == expected


@given(_patterns, _patterns)
def test_overlap_means_some_subject_matches_both(first: str, second: str) -> None:
    witness = any(
        subject_matches(first, subject) and subject_matches(second, subject)
        for subject in _UNIVERSE
    )
    assert subjects_overlap(first, second) == witness
    assert subjects_overlap(second, first) == witness


@given(_patterns, _patterns)
def test_subset_means_every_match_of_one_matches_the_other(pattern: str, of: str) -> None:
    expected = all(
        subject_matches(of, subject) for subject in _UNIVERSE if subject_matches(pattern, subject)
    )
    assert subject_is_subset(pattern, of) == expected
    assert subject_is_subset(pattern, pattern)
    assert subject_is_subset(pattern, ">")


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("orders.*", "orders.eu", True),
        ("orders.*", "orders.eu.created", False),
        ("orders.>", "orders.eu.created", True),
        ("orders.>", "orders", False),
        ("*.created", "orders.created", True),
        ("orders.eu", "orders.us", False),
        (">", "x", True),
    ],
)
def test_matching_examples(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


@given(st.text(alphabet=st.sampled_from("ab9-/_=.*> \x00é"), max_size=12))
def test_the_kv_key_fast_path_agrees_with_the_rules(key: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_=.")
    valid = (
        bool(key)
        and set(key) <= allowed
        and not key.startswith(".")
        and not key.endswith(".")
        and ".." not in key
    )
    try:
        validate_kv_key(key)
    except ConfigError:
        assert not valid, key
    else:
        assert valid, key


def test_ack_subjects_in_both_layouts() -> None:
    plain = "$JS.ACK.ORDERS.worker.3.41.40.1767225600000000000.7"
    assert parse_ack_subject(plain) == ("ORDERS", 3, 41, 7)
    domain = "$JS.ACK.hub.ACCHASH.ORDERS.worker.1.9.9.1767225600000000000.0.token"
    assert parse_ack_subject(domain) == ("ORDERS", 1, 9, 0)
