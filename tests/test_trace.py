"""W3C traceparent parsing, continuing traces with child spans, starting new traces."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw import _trace
from thaw._trace import TraceContext, parse_traceparent, start_trace

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{SPAN_ID}-01"
HEX_TRACE = re.compile(r"[0-9a-f]{32}\Z")
HEX_SPAN = re.compile(r"[0-9a-f]{16}\Z")


def test_parses_the_w3c_example() -> None:
    assert parse_traceparent(VALID) == TraceContext(TRACE_ID, SPAN_ID, sampled=True)


@pytest.mark.parametrize(
    ("flags", "sampled"), [("00", False), ("01", True), ("02", False), ("03", True), ("ff", True)]
)
def test_sampled_is_bit_zero_of_the_flags(flags: str, sampled: bool) -> None:
    context = parse_traceparent(f"00-{TRACE_ID}-{SPAN_ID}-{flags}")
    assert context is not None
    assert context.sampled is sampled


def test_a_future_version_is_read_as_version_00() -> None:
    context = parse_traceparent(f"01-{TRACE_ID}-{SPAN_ID}-01")
    assert context == TraceContext(TRACE_ID, SPAN_ID, True)
    assert context.traceparent == VALID


def test_surrounding_whitespace_is_tolerated() -> None:
    # HTTP strips optional whitespace around header values; some proxies do not.
    assert parse_traceparent(f"  {VALID}\t") == parse_traceparent(VALID)
    assert parse_traceparent(f"{VALID}\r\n") == parse_traceparent(VALID)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "00",
        f"ff-{TRACE_ID}-{SPAN_ID}-01",  # version ff is forbidden
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # ids are lowercase hex
        f"00-{TRACE_ID}-{SPAN_ID.upper()}-01",
        f"0A-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-0A",
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",  # wrong lengths
        f"00-{TRACE_ID}0-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID[:-1]}-01",
        f"00-{TRACE_ID}-{SPAN_ID}0-01",
        f"0-{TRACE_ID}-{SPAN_ID}-01",
        f"000-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-1",
        f"00-{TRACE_ID}-{SPAN_ID}-001",
        f"00-{TRACE_ID}-{SPAN_ID}",  # missing flags
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",
        f"00_{TRACE_ID}_{SPAN_ID}_01",
        f"00-{TRACE_ID[:-1]}g-{SPAN_ID}-01",  # not hex
        f"00 -{TRACE_ID}-{SPAN_ID}-01",  # whitespace inside
        f"00-{TRACE_ID} -{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-0 1",
        f"00-{TRACE_ID}-\n{SPAN_ID}-01",
        VALID + " " * 100,  # overlong, even if only by whitespace
        VALID * 3,
        "\x00" * 55,
        "\u0660\u0660-" + TRACE_ID + "-" + SPAN_ID + "-01",  # non-ASCII digits
    ],
)
def test_invalid_headers_give_none(header: str) -> None:
    assert parse_traceparent(header) is None


def test_traceparent_renders_version_00_and_flags() -> None:
    assert TraceContext(TRACE_ID, SPAN_ID).traceparent == VALID
    assert TraceContext(TRACE_ID, SPAN_ID, sampled=False).traceparent == VALID[:-2] + "00"


def test_child_keeps_the_trace_with_a_new_span() -> None:
    parent = TraceContext(TRACE_ID, SPAN_ID, sampled=False)
    children = [parent.child() for _ in range(20)]
    for child in children:
        assert child.trace_id == TRACE_ID
        assert child.sampled is False
        assert HEX_SPAN.match(child.span_id)
        assert child.span_id != SPAN_ID
        assert parse_traceparent(child.traceparent) == child
    assert len({child.span_id for child in children}) == len(children)


def test_start_trace_makes_valid_random_ids() -> None:
    traces = [start_trace() for _ in range(20)]
    for trace in traces:
        assert HEX_TRACE.match(trace.trace_id)
        assert HEX_SPAN.match(trace.span_id)
        assert trace.sampled is True
        assert parse_traceparent(trace.traceparent) == trace
    assert len({trace.trace_id for trace in traces}) == len(traces)


def test_ids_are_never_all_zero_even_if_the_random_draw_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_trace.random, "getrandbits", lambda bits: 0)
    trace = start_trace()
    child = trace.child()
    assert trace.trace_id != "0" * 32
    assert trace.span_id != "0" * 16
    assert child.span_id != "0" * 16
    assert parse_traceparent(trace.traceparent) == trace
    assert parse_traceparent(child.traceparent) == child


# -- properties --------------------------------------------------------------------

HEADERISH = st.one_of(
    st.text(max_size=200),
    st.text(st.sampled_from("0123456789abcdefABCDEF- \t"), max_size=70),
    st.from_regex(r"\A[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z"),
)


@given(HEADERISH)
def test_parse_never_raises_and_round_trips(header: str) -> None:
    context = parse_traceparent(header)
    if context is None:
        return
    assert HEX_TRACE.match(context.trace_id)
    assert HEX_SPAN.match(context.span_id)
    assert parse_traceparent(context.traceparent) == context


@given(
    st.from_regex(r"\A[0-9a-f]{32}\Z"),
    st.from_regex(r"\A[0-9a-f]{16}\Z"),
    st.integers(0, 255),
)
def test_every_well_formed_header_with_nonzero_ids_parses(
    trace_id: str, span_id: str, flags: int
) -> None:
    header = f"00-{trace_id}-{span_id}-{flags:02x}"
    context = parse_traceparent(header)
    if trace_id == "0" * 32 or span_id == "0" * 16:
        assert context is None
    else:
        assert context == TraceContext(trace_id, span_id, bool(flags & 1))
