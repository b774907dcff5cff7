"""The pull inboxes' fast path in nats-py's reader (thaw.adapters.nats._reader), and
the one header parser (thaw.adapters.nats._wire) for delivered and stored messages.

Any byte stream, cut anywhere into reads, gives each routed sid exactly the frames
nats-py's own parser gives it (subject, reply, payload, headers by nats-py's rules),
in order, and every other frame to nats-py as before; a control line nats-py refuses
is still refused by nats-py. On a real server: a delivery on an inbox nobody waits on
any more is given back at once, and a client without the fast path still consumes.
"""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.errors import ProtocolError
from nats.protocol.parser import Parser
from nats_fixtures import jetstream_harness, nats_server, wait_until  # noqa: F401

from thaw.adapters.nats._pull import _Inbox
from thaw.adapters.nats._reader import DeliveryParser
from thaw.adapters.nats._wire import parse_header_block, parse_headers
from thaw.lowlevel import ConsumerConfig, StreamConfig

ROUTED, OTHER = 7, 9


class Recorder:
    """What a nats-py client is told by its parser."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, payload: bytes, headers: bytes
    ) -> None:
        self.seen.append(("msg", sid, bytes(subject), bytes(reply), bytes(payload), headers))

    async def _process_ping(self) -> None:
        self.seen.append(("ping",))

    async def _process_pong(self) -> None:
        self.seen.append(("pong",))

    async def _process_info(self, info: object) -> None:
        self.seen.append(("info", info))

    async def _process_err(self, message: object) -> None:
        self.seen.append(("err", message))


def nats_py_headers(raw: bytes) -> dict[str, str]:
    """What nats-py 2.16 makes of a delivery's header block."""

    async def parse() -> dict[str, str]:
        return await Client()._process_headers(raw) or {}

    return anyio.run(parse)


names = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n:"), min_size=0, max_size=12
) | st.sampled_from(["Nats-Msg-Id", "traceparent", "a b", "x\x1cy", " pad ", "ü", ""])
values = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
header_blocks = st.lists(st.tuples(names, values), max_size=5).map(
    lambda pairs: (
        b"NATS/1.0\r\n" + b"".join(f"{n}:{v}".encode() + b"\r\n" for n, v in pairs) + b"\r\n"
    )
)
tokens = st.text(st.sampled_from("abcXYZ019_-$"), min_size=1, max_size=10)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["hmsg", "msg", "ping", "pong", "ok", "info"]))
    if kind in ("ping", "pong", "ok"):
        return {"ping": b"PING\r\n", "pong": b"PONG\r\n", "ok": b"+OK\r\n"}[kind]
    if kind == "info":
        return b'INFO {"server_id":"x","max_payload":1048576}\r\n'
    sid = draw(st.sampled_from([ROUTED, OTHER]))
    subject = draw(tokens).encode()
    reply = draw(st.none() | tokens)
    payload = draw(st.binary(max_size=64))
    reply_part = b"" if reply is None else b" " + reply.encode()
    if kind == "msg":
        return b"MSG %s %d%s %d\r\n%s\r\n" % (subject, sid, reply_part, len(payload), payload)
    block = draw(header_blocks)
    total = len(block) + len(payload)
    return b"HMSG %s %d%s %d %d\r\n%s%s\r\n" % (
        subject,
        sid,
        reply_part,
        len(block),
        total,
        block,
        payload,
    )


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


async def feed(parser: Parser, reads: list[bytes]) -> None:
    for read in reads:
        await parser.parse(read)


@given(st.lists(frames(), min_size=1, max_size=12), st.lists(st.integers(0, 10_000), max_size=8))
def test_any_stream_cut_anywhere_routes_what_nats_py_parses(
    stream: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(stream)
    reference = Recorder()
    anyio.run(feed, Parser(reference), [data])
    fast = Recorder()
    parser = DeliveryParser(fast)
    routed: list[tuple[bytes, bytes, bytes, bytes]] = []
    parser.routes[ROUTED] = lambda s, r, h, p: routed.append((s, r, h, p))
    anyio.run(feed, parser, split(data, cuts))

    expected_routed = [e for e in reference.seen if e[0] == "msg" and e[1] == ROUTED]
    assert [e for e in fast.seen] == [e for e in reference.seen if e not in expected_routed]
    assert len(routed) == len(expected_routed)
    for (subject, reply, raw, payload), (_, _, s, r, p, h) in zip(
        routed, expected_routed, strict=True
    ):
        assert (subject, reply, payload) == (s, r, p)
        assert (parse_headers(raw) if raw else {}) == (nats_py_headers(h) if h else {})


@given(header_blocks)
def test_header_blocks_parse_as_nats_py_parses_them(block: bytes) -> None:
    assert parse_headers(block) == nats_py_headers(block)


@pytest.mark.parametrize(
    ("block", "status", "description"),
    [
        (b"NATS/1.0 404 No Messages\r\n\r\n", "404", "No Messages"),
        (b"NATS/1.0 408 Request Timeout\r\n\r\n", "408", "Request Timeout"),
        (b"NATS/1.0 409 Consumer Deleted\r\n\r\n", "409", "Consumer Deleted"),
        (b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Stream: 3\r\n\r\n", "100", "Idle Heartbeat"),
        (b"NATS/1.0 404\r\n\r\n", "404", ""),
        (b"NATS/1.0 abc what\r\n\r\n", "", "what"),
    ],
)
def test_status_lines(block: bytes, status: str, description: str) -> None:
    headers, got_status, got_description = parse_header_block(block)
    assert (got_status, got_description) == (status, description)
    reference = nats_py_headers(block)
    assert headers.get("Status") == reference.get("Status")
    if description:
        assert headers.get("Description") == reference.get("Description")


@pytest.mark.parametrize(
    "line",
    [
        b"MSG a 7 -5\r\nxx\r\n",  # a negative size would move the reader backwards
        b"HMSG a 7 r 20 10\r\n" + b"x" * 12,  # headers larger than the frame
        b"MSG a 7 r ten\r\nxx\r\n",
        b"HMSG a seven r 5 5\r\nNATS/\r\n",
        b"MSG a\r\n",
        b"MSG " + b"a" * 5000,  # no end of line within nats-py's control-line limit
    ],
)
def test_a_control_line_nats_py_refuses_is_refused_by_nats_py(line: bytes) -> None:
    routed: list[object] = []
    parser = DeliveryParser(Recorder())
    parser.routes[ROUTED] = lambda *frame: routed.append(frame)

    async def outcome(p: Parser) -> str:
        try:
            await p.parse(line)
        except ProtocolError:
            return "refused"
        return "accepted"

    reference = anyio.run(outcome, Parser(Recorder()))
    assert anyio.run(outcome, parser) == reference
    assert routed == []


def test_a_large_message_in_small_reads_arrives_whole_and_once() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    frame = b"MSG big 7 $JS.ACK.S.C.1.1.1.1.0 %d\r\n%s\r\nPING\r\n" % (len(payload), payload)
    recorder = Recorder()
    parser = DeliveryParser(recorder)
    routed: list[bytes] = []
    parser.routes[ROUTED] = lambda s, r, h, p: routed.append(p)
    anyio.run(feed, parser, [frame[i : i + 65536] for i in range(0, len(frame), 65536)])
    assert routed == [payload]
    assert recorder.seen == [("ping",)]


@pytest.mark.anyio
async def test_a_delivery_nobody_waits_for_is_given_back_at_once(
    jetstream_harness,  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    await backbone.add_stream(StreamConfig(name=f"{p}_s", subjects=(f"{p}.s.>",)))
    await backbone.add_consumer(f"{p}_s", ConsumerConfig(durable="w", ack_wait=60.0))
    await backbone.publish(f"{p}.s.a", b"x")
    with anyio.fail_after(10):
        (first,) = await backbone.fetch(f"{p}_s", "w", timeout=5.0)
    # A pull inbox whose request is over gets that delivery again (a late one): it naks it.
    inbox = _Inbox(backbone.client, backbone.client.new_inbox(), 5.0)
    inbox.deliver(first.subject.encode(), first._reply.encode(), b"", first.data)
    with anyio.fail_after(10):  # far sooner than the 60 s AckWait
        (again,) = await backbone.fetch(f"{p}_s", "w", timeout=8.0)
    assert (again.seq, again.num_delivered) == (first.seq, 2)
    await again.ack()


@pytest.mark.anyio
async def test_a_client_without_the_fast_path_consumes_through_nats_py(
    jetstream_harness,  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    backbone.client._ps = Parser(backbone.client)  # as if the reader were not installed
    await backbone.add_stream(StreamConfig(name=f"{p}_s", subjects=(f"{p}.s.>",)))
    await backbone.add_consumer(f"{p}_s", ConsumerConfig(durable="w", ack_wait=60.0))
    for n in range(3):
        await backbone.publish(f"{p}.s.a", b"m%d" % n, headers={"k": str(n)})
    got: list[bytes] = []
    with anyio.fail_after(10):
        while len(got) < 3:
            for message in await backbone.fetch(f"{p}_s", "w", batch=3, timeout=5.0):
                assert message.headers["k"] == message.data.decode()[1:]
                got.append(message.data)
                await message.ack()

    async def all_acked() -> bool:  # the acks travel to the server
        return (await backbone.consumer_info(f"{p}_s", "w")).num_ack_pending == 0

    await wait_until(all_acked)
    assert got == [b"m0", b"m1", b"m2"]
