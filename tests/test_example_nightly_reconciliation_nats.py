"""examples/nightly_reconciliation end to end: two `thaw serve` hosts, one real nats-server.

Both hosts serve the example from its source folder, as a user runs it, with
``RECON_HANG_PARTITION=3``: whichever host takes partition 3 first hangs on it (a host
stuck while it holds work). The nightly tick is published twice, as the schedule
loops of both hosts would. Once the other seven partitions are done, the host holding
partition 3 is killed with SIGKILL; the survivor gets partition 3 after AckWait and
the join writes the report. Then: one run for the tick, every partition compared to
completion exactly once, the report lists exactly the differences the seed made, one
notice; and the HTTP route that starts a run by hand refuses a bad date with 400.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import pytest
from nats_fixtures import embedded_server, end_process, wait_ready, wait_until

from examples.nightly_reconciliation import app
from examples.nightly_reconciliation.app import (
    PROGRESS,
    REPORTS,
    REPORTS_SUBJECT,
    report_name,
)
from examples.nightly_reconciliation.contracts import PARTITIONS, Report, ReportNotice
from examples.nightly_reconciliation.seed import seed
from thaw.adapters.nats import JetStreamBackbone
from thaw.declarations._batches import batch_bucket_for
from thaw.host._provision import plan_for
from thaw.host._schedule import ScheduleRunner, tick_stream_name
from thaw.lowlevel import ObjectNotFound

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nightly_reconciliation"
TICK = dt.datetime(2026, 12, 4, 2, 0, tzinfo=dt.UTC)
DAY = "2026-12-03"
ACK_WAIT = 2.0  # seconds: the killed host's partition comes back soon
HUNG = 3  # the partition whose first attempt hangs
LIMIT = 60.0  # seconds for anything to happen (hosts build a snapshot first)
_PORT = re.compile(r"http on http://127\.0\.0\.1:(\d+);")


class Host:
    """One `thaw serve` of the example (started and ended by this test, by PID)."""

    def __init__(self, url: str, tmp: Path, n: int) -> None:
        self.log = tmp / f"host{n}.log"
        env = dict(os.environ, RECON_HANG_PARTITION=str(HUNG), PYTHONPATH=str(ROOT))
        command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(EXAMPLE)]
        command += ["--nats", url, "--http", "0", "--ack-wait", str(ACK_WAIT)]
        command += ["--drain-timeout", "2", "--state-dir", str(tmp / f"state{n}")]
        with open(self.log, "a") as stderr:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=tmp
            )
        self.port = 0

    def wait_serving(self) -> None:
        """Until the ready line (bounded; if the host exits first, its log says why)."""

        def ready(line: str) -> bool:
            port = _PORT.search(line)
            if line.startswith("thaw: serving app reconciliation") and port:
                self.port = int(port.group(1))
            return self.port != 0

        wait_ready(self.process, self.log, limit=LIMIT, ready=ready)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, JetStreamBackbone]]:
    with embedded_server(tmp_path / "nats") as server:
        backbone = await JetStreamBackbone.connect(server.url)
        try:
            yield server.url, backbone
        finally:
            await backbone.aclose()


def post(port: int, path: str) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=b"")
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


async def marks(backbone: JetStreamBackbone, kind: str) -> list[tuple[int, int, str]]:
    """(partition, attempt, value) of the progress marks ``kind`` (start/done) of DAY."""
    bucket = await backbone.kv(PROGRESS)
    found = []
    for key in await bucket.keys(prefix=kind):
        _, day, part, attempt, _run = key.rsplit(".", 4)
        if day == DAY:
            entry = await bucket.get(key)
            found.append((int(part[1:]), int(attempt), entry.value.decode() if entry else ""))
    return sorted(found)


async def test_two_hosts_one_killed_mid_batch_report_every_difference_once(
    served: tuple[str, JetStreamBackbone], tmp_path: Path
) -> None:
    url, backbone = served
    made = await seed(backbone, DAY, accounts=400, mismatched=12)
    hosts = [Host(url, tmp_path, n) for n in (1, 2)]
    compare = next(c for c in plan_for(app).consumers if c.capability == "compare_partition")
    try:
        for host in hosts:
            await anyio.to_thread.run_sync(host.wait_serving)
        runner = ScheduleRunner(app, backbone)
        for _ in hosts:  # each host's schedule loop publishes the tick
            await runner.publish("nightly", TICK)

        async def stuck_with_the_rest_acked() -> bool:
            # Every partition but the hung one compared and acknowledged: killing the
            # holder now cannot send a finished partition round again.
            done = {p for p, _, _ in await marks(backbone, "done")}
            started = {p for p, _, _ in await marks(backbone, "start")}
            info = await backbone.consumer_info(compare.stream, compare.config.durable)
            return (
                HUNG in started
                and done == set(range(PARTITIONS)) - {HUNG}
                and (info.num_pending, info.num_ack_pending) == (0, 1)
            )

        await wait_until(stuck_with_the_rest_acked, limit=LIMIT)
        ((_, attempt, pid),) = [m for m in await marks(backbone, "start") if m[0] == HUNG]
        assert attempt == 1
        (holder,) = [h for h in hosts if str(h.process.pid) == pid]
        survivor = next(h for h in hosts if h is not holder)
        holder.process.kill()  # SIGKILL, by PID: no ack, no nak, no drain
        holder.process.wait(10)
        store = await backbone.object_store(REPORTS)

        async def reported() -> bool:
            try:
                await store.get(report_name(DAY))
            except ObjectNotFound:
                return False
            return True

        await wait_until(reported, limit=LIMIT)
        report = msgspec.json.decode(await store.get(report_name(DAY)), type=Report)
        status, problem = post(survivor.port, "/runs/yesterday")
        done = await marks(backbone, "done")
        started = await marks(backbone, "start")
        ticks = await backbone.stream_info(tick_stream_name(app.name))
        batches = [
            k
            for k in await (await backbone.kv(batch_bucket_for(app.name))).keys()
            if ".r." not in k
        ]
        notices = []
        for seq in range(1, (await backbone.stream_info("RECONCILIATION")).last_seq + 1):
            message = await backbone.get_message("RECONCILIATION", seq)
            if message.subject == REPORTS_SUBJECT:
                notices.append(msgspec.json.decode(message.data, type=ReportNotice))
    finally:
        for host in hosts:
            end_process(host.process)
    assert ticks.messages == 1  # the second publish of the tick was a duplicate
    assert len(batches) == 1  # one run for the tick
    assert [p for p, _, _ in done] == list(range(PARTITIONS))  # each compared to the end once
    assert [(p, a) for p, a, _ in started if p == HUNG] == [(HUNG, 1), (HUNG, 2)]
    assert (report.complete, report.timed_out, report.failed, report.missing) == (
        True,
        False,
        {},
        [],
    )
    found = {
        m.account: (m.ledger_cents, m.provider_cents)
        for r in report.partitions
        for m in r.mismatches
    }
    assert found == made and report.accounts == 400
    assert [(n.date, n.run, n.mismatched) for n in notices if n.date == DAY] == [
        (DAY, report.run, 12)
    ]
    assert (status, problem.get("code")) == (400, "date_invalid")
