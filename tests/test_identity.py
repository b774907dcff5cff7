"""Stream event ids: ``Thaw-Event-Id`` only from Thaw's own signed re-publishes, never
from any publisher; the event-id key every host and replay share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw import App, ConfigError, Idempotency, RetryPolicy, stream
from thaw.backbone._contract import DeliveredMessage, KvConfig
from thaw.host._dead_letters import DeadLetterRecord, list_dead_letters, replay_dead_letter
from thaw.host._host import Host, open_host
from thaw.host._identity import (
    EVENT_KEY,
    KEYS_BUCKET,
    load_event_key,
    sign_event_id,
    signed_event_headers,
    stream_event_id,
)
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio
KEY = bytes(range(32))


class Job(msgspec.Struct, frozen=True):
    name: str


def jobs_app(effects: list[str], *, failing: set[str] | None = None) -> App:
    app = App("ids")

    @app.capability(stream("ids.run"), retry=RetryPolicy(max_attempts=1), idempotency=Idempotency())
    async def run(job: Job) -> str:
        if failing is not None and job.name in failing:
            raise RuntimeError("not now")
        effects.append(job.name)
        return job.name

    return app


def delivery(
    headers: dict[str, str], *, data: bytes = b"x", subject: str = "a.b"
) -> DeliveredMessage:
    return DeliveredMessage(subject, "$JS.ACK.S.d.1.7.7.0.0", data, headers)


async def wait_until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll what the host's worker tasks change (bounded): they signal nothing."""
    with anyio.fail_after(10):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.005)


def acked(host: Host, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return host.statistics().workers["run"].acked >= count

    return check


async def test_a_foreign_publisher_cannot_make_a_message_pass_for_another() -> None:
    backbone = MemoryBackbone()
    effects: list[str] = []
    async with open_host(jobs_app(effects), backbone, fetch_timeout=0.01) as host:
        await backbone.publish("ids.run", b'{"name":"victim"}', msg_id="evt-victim")
        await wait_until(acked(host, 1))
        # Someone with publish rights claims the victim's id for another message.
        await backbone.publish(
            "ids.run",
            b'{"name":"foreign"}',
            msg_id="evt-foreign",
            headers={"Thaw-Event-Id": "evt-victim", "Thaw-Event-Signature": "0" * 64},
        )
        await wait_until(acked(host, 2))
    assert effects == ["victim", "foreign"]  # both ran: neither was taken for the other


def test_only_a_valid_signature_over_id_subject_and_payload_is_honoured() -> None:
    signed = signed_event_headers(KEY, "evt-1", "a.b", b"x")
    token = EVENT_KEY.set(KEY)
    try:
        assert stream_event_id(delivery({**signed, "Nats-Msg-Id": "m"})) == "evt-1"
        # Copied onto another payload or subject, or signed with another key: ignored.
        assert stream_event_id(delivery({**signed, "Nats-Msg-Id": "m"}, data=b"y")) == "m"
        assert stream_event_id(delivery({**signed, "Nats-Msg-Id": "m"}, subject="a.c")) == "m"
        other = signed_event_headers(b"k" * 32, "evt-1", "a.b", b"x")
        assert stream_event_id(delivery({**other, "Nats-Msg-Id": "m"})) == "m"
        assert stream_event_id(delivery({"Thaw-Event-Id": "evt-1"})) == "S.7"  # unsigned
    finally:
        EVENT_KEY.reset(token)
    # A process that holds no key honours no header, signed or not.
    assert stream_event_id(delivery({**signed, "Nats-Msg-Id": "m"})) == "m"


def test_signatures_cannot_be_shifted_between_the_id_and_the_subject() -> None:
    assert sign_event_id(KEY, "a.b", "c", b"") != sign_event_id(KEY, "a", "b.c", b"")
    assert sign_event_id(KEY, "1:a", "b", b"") != sign_event_id(KEY, "1", "a1:b", b"")


@given(
    claimed=st.text(max_size=300),
    signature=st.text(max_size=80),
    data=st.binary(max_size=64),
)
def test_hostile_headers_never_raise_and_are_never_honoured(
    claimed: str, signature: str, data: bytes
) -> None:
    token = EVENT_KEY.set(KEY)
    try:
        headers = {"Thaw-Event-Id": claimed, "Thaw-Event-Signature": signature}
        got = stream_event_id(delivery(headers, data=data))
    finally:
        EVENT_KEY.reset(token)
    if got == claimed and claimed:
        assert signature == sign_event_id(KEY, claimed, "a.b", data)
    else:
        assert got == "S.7"


async def test_hosts_and_replays_on_one_backbone_agree_on_one_key() -> None:
    backbone = MemoryBackbone()
    keys: list[bytes] = []

    async def load() -> None:
        keys.append(await load_event_key(backbone))

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(load)
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert await load_event_key(MemoryBackbone()) != keys[0]  # random per installation


async def test_a_damaged_key_is_a_clear_error() -> None:
    backbone = MemoryBackbone()
    bucket = await backbone.add_kv(KvConfig(bucket=KEYS_BUCKET))
    await bucket.put("event-id", b"short")
    with pytest.raises(ConfigError, match="thaw_keys"):
        await load_event_key(backbone)


async def test_a_replay_keeps_its_identity_and_is_not_run_twice() -> None:
    backbone = MemoryBackbone()
    effects: list[str] = []
    failing = {"flaky"}
    app = jobs_app(effects, failing=failing)
    async with open_host(app, backbone, fetch_timeout=0.01):
        await backbone.publish("ids.run", b'{"name":"flaky"}', msg_id="evt-flaky")

        async def dead_lettered() -> bool:
            return bool(await list_dead_letters(backbone))

        await wait_until(dead_lettered)
    [letter] = await list_dead_letters(backbone)
    assert letter.event_id == "evt-flaky"
    failing.clear()
    await replay_dead_letter(backbone, letter.seq)
    await replay_dead_letter_again(backbone, letter)
    async with open_host(app, backbone, fetch_timeout=0.01) as host:
        await wait_until(acked(host, 2))
    assert effects == ["flaky"]  # the second replay was recognised as the same event


async def replay_dead_letter_again(backbone: MemoryBackbone, letter: DeadLetterRecord) -> None:
    """Dead-letter the same event once more (as a lost ack would) and replay it."""
    headers = {k: v for k, v in letter.headers.items() if k != "Nats-Msg-Id"}
    await backbone.publish("thaw.dlq.ids.run", letter.data, headers=headers)
    [again] = await list_dead_letters(backbone)
    await replay_dead_letter(backbone, again.seq)
