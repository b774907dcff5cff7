"""The stream decision table and dead-letter headers."""

from __future__ import annotations

import pytest

from thaw import Ok, Reject, Retry
from thaw.decisions._delivery import dead_letter_headers, decide_stream
from thaw.lowlevel import Ack, DeadLetter, Nak


@pytest.mark.parametrize(
    ("outcome", "count", "max_deliver", "expected"),
    [
        (Ok(b"x"), 1, 5, Ack()),
        (Ok(b"x"), 5, 5, Ack()),
        (Retry(2.0, "boom"), 1, 5, Nak(2.0)),
        (Retry(2.0, "boom"), 4, 5, Nak(2.0)),
        (Retry(-1.0, "boom"), 1, 5, Nak(0.0)),
        (Retry(2.0, "boom"), 1, -1, Nak(2.0)),
        (Retry(2.0, "boom"), 1000, 0, Nak(2.0)),
        (Reject("contract_invalid", "bad"), 1, 5, DeadLetter("contract_invalid", "bad")),
    ],
)
def test_table(outcome: object, count: int, max_deliver: int, expected: object) -> None:
    assert decide_stream(outcome, delivery_count=count, max_deliver=max_deliver) == expected  # type: ignore[arg-type]


def test_last_allowed_delivery_failing_goes_to_dead_letter_with_its_code() -> None:
    action = decide_stream(Retry(1.0, "db down", "handler_error"), delivery_count=5, max_deliver=5)
    assert isinstance(action, DeadLetter)
    assert action.code == "handler_error"
    assert "delivery 5 of at most 5" in action.reason
    assert "db down" in action.reason


def test_dead_letter_headers_say_why_and_where_from() -> None:
    headers = dead_letter_headers(
        DeadLetter("card_declined", "line one\r\nline two"),
        app="pay",
        capability="charge",
        subject="pay.charge",
        stream="PAY",
        seq=42,
        attempts=3,
        revision="rev1",
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    )
    assert headers["Thaw-Error-Code"] == "card_declined"
    assert headers["Thaw-Error-Message"] == "line one line two"  # no CR/LF in a header
    assert headers["Thaw-Original-Seq"] == "42"
    assert headers["Thaw-Attempts"] == "3"
    assert headers["Thaw-Revision"] == "rev1"
    assert headers["Thaw-Capability"] == "charge"
    assert headers["traceparent"].startswith("00-")


def test_dead_letter_message_is_capped() -> None:
    headers = dead_letter_headers(
        DeadLetter("x", "y" * 10_000),
        app="a",
        capability="c",
        subject="s",
        stream="S",
        seq=1,
        attempts=1,
    )
    assert len(headers["Thaw-Error-Message"]) <= 1024
