"""Schedule ticks as JetStream messages on a real nats-server: retried and dead-lettered,
once per tick across two hosts, and not lost when the host running one is killed -9.

The tests publish ticks with ``ScheduleRunner.publish`` (what the runner's loop does
at each tick) rather than waiting for wall-clock minutes; the app's own cron is once
a year, so the hosts' runners publish nothing meanwhile.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from _schedule_host import ACK_WAIT, marks_bucket, schedule_app
from nats_fixtures import (  # noqa: F401
    JetStreamHarness,
    end_process,
    jetstream_harness,
    nats_server,
    wait_ready,
    wait_until,
)

from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone
from thaw.host._dead_letters import list_dead_letters
from thaw.host._schedule import ScheduleRunner, tick_stream_name
from thaw.lowlevel import KeyValue, open_host

pytestmark = pytest.mark.anyio

HOST_SCRIPT = Path(__file__).resolve().parent / "_schedule_host.py"
ROOT = HOST_SCRIPT.parent.parent
UTC = dt.UTC
FIRST = dt.datetime(2026, 11, 26, 10, 5, tzinfo=UTC)


def tick_at(n: int) -> dt.datetime:
    return FIRST + dt.timedelta(minutes=5 * n)


async def marks(bucket: KeyValue, kind: str) -> list[list[str]]:
    """The marks of one kind, split: run -> [epoch, attempt, id], done -> [epoch, id]."""
    return [key.split(".")[1:] for key in await bucket.keys() if key.startswith(f"{kind}.")]


async def settled(backbone: JetStreamBackbone, stream: str, durable: str) -> bool:
    info = await backbone.consumer_info(stream, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_failing_tick_is_retried_and_then_dead_lettered(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    backbone, prefix = jetstream_harness.backbone, jetstream_harness.prefix
    app = schedule_app(prefix, fail=True)
    async with open_host(app, backbone, fetch_timeout=0.2):
        bucket = await backbone.kv(marks_bucket(prefix))
        await ScheduleRunner(app, backbone).publish("report", FIRST)

        async def dead() -> bool:
            return bool(await list_dead_letters(backbone, app=app.name))

        await wait_until(dead)
        [letter] = await list_dead_letters(backbone, app=app.name)
        runs = await marks(bucket, "run")
    assert letter.code == "handler_error"
    assert letter.attempts == 3
    assert "gave up after 3 attempts" in letter.message
    assert letter.original_subject == f"thaw.tick.{app.name}.report"
    assert letter.original_stream == tick_stream_name(app.name)
    epoch = str(int(FIRST.timestamp()))
    assert sorted(attempt for e, attempt, _ in runs if e == epoch) == ["1", "2", "3"]


async def test_two_hosts_on_one_backbone_run_each_tick_once(
    nats_server: EmbeddedServer,  # noqa: F811
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    prefix = jetstream_harness.prefix
    app = schedule_app(prefix)
    other = await JetStreamBackbone.connect(nats_server.url)
    try:
        async with (
            open_host(app, jetstream_harness.backbone, fetch_timeout=0.2) as first,
            open_host(schedule_app(prefix), other, fetch_timeout=0.2),
        ):
            runners = [ScheduleRunner(app, first.backbone), ScheduleRunner(app, other)]
            for n in range(5):  # each host publishes every tick, as their loops do
                for runner in runners:
                    await runner.publish("report", tick_at(n))
            bucket = await first.backbone.kv(marks_bucket(prefix))

            async def all_done() -> bool:
                return len(await marks(bucket, "done")) >= 5

            await wait_until(all_done)
            consumer = next(c for c in first.plan.consumers if c.capability == "report")

            async def nothing_left() -> bool:
                return await settled(first.backbone, consumer.stream, consumer.config.durable)

            await wait_until(nothing_left)
            done = await marks(bucket, "done")
            stream = await first.backbone.stream_info(tick_stream_name(app.name))
    finally:
        await other.aclose()
    assert sorted(epoch for epoch, _ in done) == sorted(
        str(int(tick_at(n).timestamp())) for n in range(5)
    )
    assert stream.messages == 5  # the second publish of each tick was dropped


def _start_host(url: str, prefix: str, log: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "a") as stderr:
        return subprocess.Popen(
            [sys.executable, str(HOST_SCRIPT), url, prefix],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )


async def test_a_host_killed_between_publish_and_run_does_not_lose_the_tick(
    nats_server: EmbeddedServer,  # noqa: F811
    jetstream_harness: JetStreamHarness,  # noqa: F811
    tmp_path: Path,
) -> None:
    backbone, prefix = jetstream_harness.backbone, jetstream_harness.prefix
    app = schedule_app(prefix)
    log = tmp_path / "host.log"
    host = _start_host(nats_server.url, prefix, log)
    try:
        await anyio.to_thread.run_sync(wait_ready, host, log)
        bucket = await backbone.kv(marks_bucket(prefix))
        await ScheduleRunner(app, backbone).publish("report", FIRST)

        async def started() -> bool:
            return bool(await marks(bucket, "run"))

        await wait_until(started)  # the host holds the tick and is running it
        host.kill()  # SIGKILL, by PID: no ack, no nak, no goodbye
        host.wait(10)
        assert await marks(bucket, "done") == []
        async with open_host(app, backbone, ack_wait=ACK_WAIT, fetch_timeout=0.2):

            async def finished() -> bool:
                return bool(await marks(bucket, "done"))

            await wait_until(finished, limit=ACK_WAIT + 15)
            runs = await marks(bucket, "run")
            done = await marks(bucket, "done")
    finally:
        end_process(host)
    epoch = str(int(FIRST.timestamp()))
    assert sorted((e, attempt) for e, attempt, _ in runs) == [(epoch, "1"), (epoch, "2")]
    assert [e for e, _ in done] == [epoch]
