"""A real ``thaw serve`` on the embedded nats-server, for an app with no http trigger: it
still answers /metrics, /healthz and /readyz, and its stream invocations, message ages
(from JetStream's own timestamps) and completions add up there."""

from __future__ import annotations

import http.client
import os
import time
from pathlib import Path

import anyio
import nats
from nats_fixtures import nats_server, thaw_serve  # noqa: F401
from test_http_metrics import Samples, parse, value

from thaw.adapters.nats.server import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0

APP = """
from thaw import App, Rejected, RetryPolicy, stream

app = App("meter{suffix}")


@app.capability(stream("meter{suffix}.jobs"), retry=RetryPolicy(max_attempts=1))
async def work(data: bytes) -> bytes:
    if data == b"bad":
        raise Rejected("refused", code="bad_job")
    return data.upper()
"""


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def scrape_until(port: int, done: int) -> Samples:
    """/metrics once ``done`` messages of the capability have had their final action
    (ack or dead letter: after their invocation), within a bound."""
    deadline = time.monotonic() + WAIT
    key = ("thaw_message_completion_seconds_count", frozenset({("capability", "work")}))
    while True:
        status, text = get(port, "/metrics")
        assert status == 200, text
        _, samples = parse(text)
        if samples.get(key, 0) >= done:
            return samples
        assert time.monotonic() < deadline, text
        time.sleep(0.05)  # the host is another process: poll its /metrics, bounded


async def publish(url: str, subject: str, payloads: list[bytes]) -> None:
    client = await nats.connect(url)
    try:
        jetstream = client.jetstream()
        for payload in payloads:
            await jetstream.publish(subject, payload)
    finally:
        await client.close()


def test_a_stream_only_app_under_thaw_serve_is_scraped_and_adds_up(
    tmp_path: Path,
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    suffix = str(os.getpid())
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text(APP.format(suffix=suffix))
    arguments = [str(tmp_path / "app"), "--url", nats_server.url, "--http", "0"]
    arguments += ["--state-dir", str(tmp_path / "s"), "--no-access-log"]
    # served although the app declares no http trigger (thaw_serve finds its port)
    with thaw_serve(arguments, tmp_path, limit=WAIT) as (process, port):
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/readyz")[0] == 200
        payloads = [b"a", b"bb", b"bad", b"ccc"]
        anyio.run(publish, nats_server.url, f"meter{suffix}.jobs", payloads)
        samples = scrape_until(port, len(payloads))
    assert process.returncode == 0, (tmp_path / "host.log").read_text()
    stream = {"capability": "work", "trigger": "stream"}
    total = "thaw_invocations_total"
    assert value(samples, total, **stream, outcome="ok", code="") == 3
    assert value(samples, total, **stream, outcome="reject", code="bad_job") == 1
    assert (
        value(samples, "thaw_invocation_bytes_in_total", capability="work") == 9
    )  # a, bb, bad, ccc
    assert value(samples, "thaw_invocation_bytes_out_total", capability="work") == 6
    work = {"capability": "work"}
    assert value(samples, "thaw_message_age_seconds_count", **work) == 4
    assert value(samples, "thaw_message_completion_seconds_count", **work) == 4
    # JetStream's timestamps against this machine's clock: the ages are real and small.
    assert 0 <= value(samples, "thaw_message_age_seconds_sum", **work) < WAIT * 4
    assert value(samples, "thaw_message_age_seconds_bucket", **work, le="+Inf") == 4
    deliveries = "thaw_stream_deliveries_total"
    assert value(samples, deliveries, **work, consumer="", action="ack") == 3
    assert value(samples, deliveries, **work, consumer="", action="dead_letter") == 1
    assert value(samples, "thaw_retry_budget_refusals_total") == 0
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
