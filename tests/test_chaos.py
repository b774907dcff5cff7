"""The chaos suite: nothing lost, nothing doubled, while hosts are killed and servers restart.

Each run serves an app written the way the README shows (a stream capability that
publishes one ledger entry per message) with ``thaw serve`` in a process of its own,
on a nats-server this test starts, and with a seeded random schedule:

- messages of four kinds: ordinary (0-25 ms of work), slow (longer than AckWait, kept
  alive by the heartbeat), poison (``Rejected``) and failing (raises on every attempt);
- a publisher that paces its messages, retries every publish that fails (the same
  ``Nats-Msg-Id``), and publishes some messages twice on purpose;
- ``kill -9`` of the host at random points of the run, each followed by a new host;
- optionally a restart of the nats-server in the middle of the run.

At the end the ledger holds every ordinary and slow message exactly once, the
dead-letter stream every poison and failing message exactly once, and nothing else.
Idempotency on and off. The seed is in the test id and in every failure message;
``THAW_CHAOS_SEEDS=N`` runs N more seeds per scenario, ``THAW_CHAOS_MESSAGES`` sets
the messages per run (default 240).
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import pytest
from nats_fixtures import embedded_server, end_process, wait_ready, wait_until

from thaw.adapters.nats import JetStreamBackbone, open_jetstream_backbone
from thaw.lowlevel import BackboneError, ConsumerConfig, Message

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ACK_WAIT = 1.0  # short, so a killed host's messages come back within the run
MAX_ATTEMPTS = 3  # as in the README: a killed delivery spends one of them
HOST_START_LIMIT = 60.0  # seconds for `thaw serve` to import, connect and provision
SETTLE_LIMIT = 120.0  # seconds for the last messages to settle after the chaos
MESSAGES = int(os.environ.get("THAW_CHAOS_MESSAGES", "240"))
EXTRA_SEEDS = int(os.environ.get("THAW_CHAOS_SEEDS", "0"))

APP = '''
"""The chaos suite's app: one ledger entry per message, as the README writes it."""
import os

import anyio
import msgspec

from thaw import Access, App, Backoff, Context, Idempotency, Rejected, RetryPolicy, stream


class Job(msgspec.Struct, frozen=True):
    n: int
    kind: str
    work_ms: int


app = App("chaos")


@app.capability(
    stream("chaos.jobs"),
    idempotency=Idempotency() if os.environ["CHAOS_IDEMPOTENCY"] == "1" else None,
    concurrency=8,
    timeout=5.0,
    retry=RetryPolicy(
        max_attempts=MAX_ATTEMPTS, backoff=Backoff(initial=0.05, maximum=0.2, jitter=0.1)
    ),
    access=Access(publishes=("chaos.ledger",)),
)
async def work(job: Job, ctx: Context) -> None:
    if job.kind == "poison":
        raise Rejected(f"job {job.n} is poison", code="poison")
    if job.kind == "failing":
        raise RuntimeError(f"job {job.n} fails on every attempt")
    await anyio.sleep(job.work_ms / 1000)
    await ctx.publish("chaos.ledger", msgspec.json.encode({"n": job.n}))
'''.replace("MAX_ATTEMPTS", str(MAX_ATTEMPTS))


class Job(msgspec.Struct, frozen=True):
    n: int
    kind: str
    work_ms: int


class Scenario(msgspec.Struct, frozen=True):
    seed: int
    idempotency: bool
    kills: int
    server_restart: bool = False

    def id(self) -> str:
        idem = "idem" if self.idempotency else "no-idem"
        restart = "-server-restart" if self.server_restart else ""
        return f"seed{self.seed}-{idem}-kill{self.kills}{restart}"


BASE = [
    Scenario(seed=11, idempotency=True, kills=6),
    Scenario(seed=12, idempotency=False, kills=6),
    Scenario(seed=13, idempotency=True, kills=2, server_restart=True),
    Scenario(seed=14, idempotency=False, kills=2, server_restart=True),
]
SCENARIOS = BASE + [
    msgspec.structs.replace(s, seed=s.seed * 1000 + extra)
    for extra in range(1, EXTRA_SEEDS + 1)
    for s in BASE
]


def jobs_for(rng: random.Random) -> list[Job]:
    kinds = rng.choices(
        ["ordinary", "slow", "poison", "failing"], weights=[92, 2, 3, 3], k=MESSAGES
    )
    return [
        Job(n, kind, int(ACK_WAIT * 1500) if kind == "slow" else rng.randrange(0, 26))
        for n, kind in enumerate(kinds)
    ]


class Host:
    """One `thaw serve` process (started and ended by this test, by PID)."""

    def __init__(self, app: Path, url: str, log: Path, *, idempotency: bool) -> None:
        env = dict(os.environ, CHAOS_IDEMPOTENCY="1" if idempotency else "0")
        command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(app)]
        command += ["--nats", url, "--no-http", "--ack-wait", str(ACK_WAIT)]
        command += ["--drain-timeout", "2"]
        with open(log, "a") as stderr:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=app.parent
            )
        self._log = log

    def wait_serving(self) -> None:
        wait_ready(
            self.process,
            self._log,
            limit=HOST_START_LIMIT,
            ready=lambda line: line.startswith("thaw: serving app chaos"),
        )

    def kill(self) -> None:
        end_process(self.process)  # SIGKILL, by PID

    def tail(self) -> str:
        return self._log.read_text()[-3000:]


@asynccontextmanager
async def hosts() -> AsyncIterator[list[Host]]:
    running: list[Host] = []
    try:
        yield running
    finally:
        for host in running:
            host.kill()


async def start_host(running: list[Host], app: Path, url: str, log: Path, idem: bool) -> None:
    host = Host(app, url, log, idempotency=idem)
    running.append(host)
    await anyio.to_thread.run_sync(host.wait_serving)


async def publish_surely(backbone: JetStreamBackbone, job: Job, limit: float = 60.0) -> None:
    """Publish until the stream confirms it: a retrying publisher, same Nats-Msg-Id."""
    deadline = time.monotonic() + limit
    while True:
        try:
            await backbone.publish("chaos.jobs", msgspec.json.encode(job), msg_id=f"job-{job.n}")
            return
        except BackboneError:
            if time.monotonic() > deadline:
                raise
            await anyio.sleep(0.1)  # a publisher's back-off while the server is away


async def counter(backbone: JetStreamBackbone, stream: str, subject: str) -> str:
    """A consumer that is never fetched from: its pending count is what the stream holds."""
    durable = f"count-{subject.replace('.', '-')}"
    await backbone.add_consumer(stream, ConsumerConfig(durable=durable, filter_subject=subject))
    return durable


async def pending(backbone: JetStreamBackbone, stream: str, durable: str) -> int:
    try:
        return (await backbone.consumer_info(stream, durable)).num_pending
    except BackboneError:  # the server is restarting: nothing known yet
        return -1


async def read_all(backbone: JetStreamBackbone, stream: str, subject: str) -> list[Message]:
    durable = f"read-{subject.replace('.', '-')}"
    await backbone.add_consumer(stream, ConsumerConfig(durable=durable, filter_subject=subject))
    found: list[Message] = []
    while True:
        batch = await backbone.fetch(stream, durable, batch=256, timeout=0.5)
        if not batch:
            return found
        for message in batch:
            found.append(message)
            await message.ack()


def ledger_numbers(entries: list[Message]) -> collections.Counter[int]:
    return collections.Counter(json.loads(entry.data)["n"] for entry in entries)


def dead_letter_numbers(letters: list[Message]) -> collections.Counter[int]:
    return collections.Counter(
        int(letter.headers["Thaw-Event-Id"].removeprefix("job-")) for letter in letters
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=Scenario.id)
async def test_nothing_lost_nothing_doubled(scenario: Scenario, tmp_path: Path) -> None:
    rng = random.Random(scenario.seed)
    jobs = jobs_for(rng)
    wanted_ledger = {j.n for j in jobs if j.kind in ("ordinary", "slow")}
    wanted_dead = {j.n for j in jobs if j.kind in ("poison", "failing")}
    twice = set(rng.sample(sorted(wanted_ledger), k=max(1, len(jobs) // 20)))
    kill_at = sorted(rng.sample(range(10, len(wanted_ledger) - 10), k=scenario.kills))
    restart_at = rng.randrange(20, len(wanted_ledger) - 20) if scenario.server_restart else None
    app = tmp_path / "chaos_app.py"
    app.write_text(APP)
    log = tmp_path / "hosts.log"
    where = f"[{scenario.id()}; rerun with this seed]"
    with embedded_server(tmp_path / "store") as server:
        async with (
            hosts() as running,
            open_jetstream_backbone(server.url) as backbone,
        ):
            await start_host(running, app, server.url, log, scenario.idempotency)
            ledger_counter = await counter(backbone, "CHAOS", "chaos.ledger")
            await counter(backbone, "THAW_DLQ", "thaw.dlq.chaos.work")

            async def ledger_count() -> int:
                return await pending(backbone, "CHAOS", ledger_counter)

            async def publish_all() -> None:
                for job in jobs:
                    await publish_surely(backbone, job)
                    if job.n in twice:  # the publisher lost the ack and sends it again
                        await publish_surely(backbone, job)
                    if job.n % 8 == 7:
                        await anyio.sleep(0.02)  # paced: the run lasts while the chaos acts

            async def chaos() -> None:
                events = [("kill", at) for at in kill_at]
                if restart_at is not None:
                    events.append(("restart", restart_at))
                for kind, at in sorted(events, key=lambda e: e[1]):
                    await wait_until(lambda at=at: _reached(ledger_count, at), limit=SETTLE_LIMIT)
                    if kind == "kill":
                        running[-1].kill()
                        await start_host(running, app, server.url, log, scenario.idempotency)
                    else:
                        await anyio.to_thread.run_sync(server.restart)

            async with anyio.create_task_group() as group:
                group.start_soon(publish_all)
                group.start_soon(chaos)

            async def settled() -> bool:
                # All work done: the app's consumer has nothing left to deliver or in flight.
                try:
                    info = await backbone.consumer_info("CHAOS", "chaos-work")
                except BackboneError:
                    return False
                return (info.num_pending, info.num_ack_pending) == (0, 0)

            await wait_until(settled, limit=SETTLE_LIMIT)
            ledger = await read_all(backbone, "CHAOS", "chaos.ledger")
            dead = await read_all(backbone, "THAW_DLQ", "thaw.dlq.chaos.work")
            logs = running[-1].tail()
    posted, lettered = ledger_numbers(ledger), dead_letter_numbers(dead)
    codes = {
        int(m.headers["Thaw-Event-Id"].removeprefix("job-")): m.headers.get("Thaw-Error-Code", "")
        for m in dead
    }
    # An ordinary job whose every allowed attempt died with a killed host is dead-lettered
    # as deliveries_exhausted (with its reason, replayable): not lost. Anything else an
    # ordinary job finds in the dead-letter stream is a failure.
    exhausted = {n for n in wanted_ledger if codes.get(n) == "deliveries_exhausted"}
    lost = (wanted_ledger - set(posted) - exhausted) | (wanted_dead - set(lettered))
    doubled = {n for n, times in (posted + lettered).items() if times > 1 and n not in exhausted}
    doubled |= {n for n in exhausted if posted[n] > 1 or lettered[n] > 1}
    wrongly = {n: codes[n] for n in wanted_ledger & set(codes) if n not in exhausted}
    report = {
        "scenario": scenario.id(),
        "sent": len(jobs) + len(twice),
        "distinct": len(jobs),
        "lost": len(lost),
        "doubled": len(doubled),
        "dead_lettered": len(lettered),
        "exhausted_by_kills": len(exhausted),
        "kills": scenario.kills,
    }
    print(f"chaos: {json.dumps(report)}")
    assert not lost, f"{where} lost {sorted(lost)[:20]}: {logs}"
    assert not doubled, f"{where} doubled {sorted(doubled)[:20]}"
    assert not wrongly, f"{where} dead-lettered ordinary jobs: {wrongly}"
    assert set(posted) <= wanted_ledger, f"{where} posted a poison or failing job"
    assert set(lettered) - exhausted == wanted_dead, f"{where} dead letters: {codes}"


async def _reached(count: object, at: int) -> bool:
    assert callable(count)
    return bool(await count() >= at)
