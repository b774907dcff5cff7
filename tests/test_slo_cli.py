"""``thaw slo APP``: against canned expositions, then against ``thaw serve`` of the payment
example on a real nats-server, after real webhooks, ledger postings and fee quotes."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from nats_fixtures import end_process, nats_server, wait_line  # noqa: F401

from thaw import App, Availability, Latency, http
from thaw.adapters.cli import command as cli
from thaw.adapters.cli.slo import metrics_url, read_standings
from thaw.adapters.nats import EmbeddedServer
from thaw.adapters.telemetry.slo import SloEvaluator, declared

ROOT = Path(__file__).resolve().parent.parent
PAYMENTS = str(ROOT / "examples" / "payment_webhook")
IMAGES = str(ROOT / "examples" / "image_pipeline")
WAIT = 60.0
SECRET = "whsec_slo_e2e"
SENT = 12


def api_app() -> App:
    app = App("api")

    @app.capability(http("GET", "/a"), slo=[Latency(0.99, within=0.1), Availability(0.999)])
    async def answer() -> None: ...

    return app


@contextmanager
def hosted(body: bytes, *, status: int = 200) -> Iterator[str]:
    """A local HTTP server answering every GET with ``body``: its URL while open."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def written(app: App, *, bad: int) -> bytes:
    """What a host of ``app`` exports after 100 calls, ``bad`` of them slow and failed."""
    evaluator = SloEvaluator(declared([app]))
    for now, calls, failed in ((1.0, 0, 0), (6.0, 100, bad)):
        text = (
            f'thaw_invocations_total{{capability="answer",trigger="http",outcome="ok",code=""}} '
            f"{calls - failed}\n"
            'thaw_invocations_total{capability="answer",trigger="http",outcome="retry",'
            f'code="handler_error"}} {failed}\n'
            'thaw_invocation_duration_seconds_bucket{capability="answer",trigger="http",'
            f'le="0.1"}} {calls - failed}\n'
            'thaw_invocation_duration_seconds_count{capability="answer",trigger="http"} '
            f"{calls}\n"
        )
        evaluator.observe(text.encode(), now)
    return b"# TYPE thaw_up gauge\nthaw_up 1\n" + evaluator.render()


@pytest.fixture
def app_file(tmp_path: Path) -> str:
    path = tmp_path / "api_app.py"
    path.write_text(
        "from thaw import App, Availability, Latency, http\n"
        "app = App('api')\n"
        "@app.capability(http('GET', '/a'), slo=[Latency(0.99, within=0.1), Availability(0.999)])\n"
        "async def answer() -> None: ...\n"
    )
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_metrics_url_takes_an_address_or_a_url() -> None:
    assert metrics_url("127.0.0.1:9000") == "http://127.0.0.1:9000/metrics"
    assert metrics_url("http://h:1/") == "http://h:1/metrics"
    assert metrics_url("https://h/custom/metrics") == "https://h/custom/metrics"


def test_a_healthy_host_prints_one_row_per_objective_and_exits_0(
    app_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with hosted(written(api_app(), bad=0)) as url:
        code, out, err = run(capsys, "slo", app_file, "--url", url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"app api: 2 objectives at {url}/metrics"
    assert lines[1].split()[:3] == ["CAPABILITY", "OBJECTIVE", "SLI"]
    assert "latency <= 100ms for 99%" in lines[2] and lines[2].rstrip().endswith("ok")
    assert "availability 99.9%" in lines[3] and "100%" in lines[3]


def test_a_burning_objective_fires_and_exits_3_with_json(
    app_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with hosted(written(api_app(), bad=20)) as url:
        code, out, _ = run(capsys, "slo", app_file, "--url", url, "--json")
        assert code == 3
        document = json.loads(out)
        code, table, _ = run(capsys, "slo", app_file, "--url", url)
    assert code == 3 and "PAGE+TICKET" in table
    assert document["firing"] is True and document["app"] == "api"
    latency, availability = document["objectives"]
    assert latency["slo"] == "latency_p99_100ms" and latency["kind"] == "latency"
    assert latency["target"] == 0.99 and latency["within"] == 0.1
    assert latency["sli"]["5m"] == pytest.approx(0.8) and latency["events"]["1h"] == 100
    assert latency["burn_rate"]["5m"] == pytest.approx(20)
    assert latency["alerts"] == {"page": True, "ticket": True}
    assert availability["burn_rate"]["1h"] == pytest.approx(200)
    assert availability["error_budget_remaining"] == pytest.approx(-199)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"<html><h1>It works</h1></html>", 200, "did not answer a Prometheus text exposition"),
        (b"", 200, "answered no Thaw metrics"),
        (b"go_goroutines 7\n", 200, "answered no Thaw metrics"),
        (b"thaw_up 1\n", 200, "exports no SLO metrics"),
        (b"draining\n", 503, "answered HTTP 503: draining"),
    ],
)
def test_an_answer_that_is_not_a_thaw_hosts_metrics_is_a_clear_error(
    app_file: str, capsys: pytest.CaptureFixture[str], body: bytes, status: int, says: str
) -> None:
    with hosted(body, status=status) as url:
        code, out, err = run(capsys, "slo", app_file, "--url", url)
    assert code == 1 and out == ""
    assert err.startswith("thaw slo: ") and says in err and err.count("\n") == 1


def test_a_host_serving_another_app_is_named_as_such(
    app_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    other = App("other")

    @other.capability(http("GET", "/b"), slo=Latency(0.9, within=0.1))
    async def elsewhere() -> None: ...

    with hosted(written(other, bad=0)) as url:
        code, _, err = run(capsys, "slo", app_file, "--url", url)
    assert code == 1
    assert "serves other objectives (elsewhere/latency_p90_100ms), none of app api's" in err


def test_an_objective_the_host_does_not_export_is_shown_and_warned_about(
    capsys: pytest.CaptureFixture[str],
) -> None:
    newer = api_app()

    @newer.capability(http("GET", "/c"), slo=Latency(0.9, within=0.1))
    async def added() -> None: ...

    rows = read_standings(newer, written(api_app(), bad=0), url="u")
    assert [(row.capability, row.exported) for row in rows] == [
        ("answer", True),
        ("answer", True),
        ("added", False),
    ]


def test_an_unreachable_host_is_a_clear_error(
    app_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    code, _, err = run(capsys, "slo", app_file, "--url", f"127.0.0.1:{port}")
    assert code == 1 and f"cannot reach a host at http://127.0.0.1:{port}/metrics" in err
    code, _, err = run(capsys, "slo", app_file, "--url", "ftp://host/")
    assert code == 1 and "is not an http(s) URL" in err
    code, _, err = run(capsys, "slo", app_file, "--url", "http://host:port/")
    assert code == 1 and "is not an http(s) URL" in err


def test_credentials_in_the_url_are_sent_and_never_shown(
    app_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = run(capsys, "slo", app_file, "--url", f"http://ops:s3cret@127.0.0.1:{port}")
    assert code == 1 and "s3cret" not in err
    assert f"cannot reach a host at http://127.0.0.1:{port}/metrics" in err
    with hosted(written(api_app(), bad=0)) as url:
        address = url.replace("http://", "http://ops:s3cret@")
        code, out, err = run(capsys, "slo", app_file, "--url", address, "--json")
    assert code == 0 and "s3cret" not in out + err
    assert json.loads(out)["url"] == address.replace("s3cret", "***") + "/metrics"


def test_an_app_without_objectives_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plain.py"
    path.write_text("from thaw import App\napp = App('plain')\n")
    code, out, _ = run(capsys, "slo", str(path))
    assert code == 0 and "declares no service level objectives" in out


def test_thaw_list_shows_the_objectives(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", PAYMENTS)
    assert code == 0
    assert "slo: latency_p99_200ms (99% within 0.2s, 30d budget), availability_99.9" in out
    assert "slo: age_p99_5s (99% within 5s, 30d budget), completion_p99_20s" in out


# -- against thaw serve ------------------------------------------------------------------


def sign(body: bytes) -> str:
    """The example provider's signature (examples/payment_webhook/signatures.py)."""
    stamp = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    connection = HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def scrape(port: int) -> str:
    connection = HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def events(text: str, capability: str, slo: str) -> float:
    prefix = f'thaw_slo_events{{capability="{capability}",slo="{slo}",window="1h"}} '
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(found[0][len(prefix) :]) if found else 0.0


def thaw_slo(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thaw.adapters.cli", "slo", *argv],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )


@contextmanager
def serving(url: str, tmp_path: Path) -> Iterator[int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PAYMENT_WEBHOOK_SECRET=SECRET)
    env.update(THAW_SLO_INTERVAL="0.2")
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", PAYMENTS, "--nats", url]
    command += ["--http", "0", "--no-access-log"]
    with (tmp_path / "stderr.log").open("a") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=tmp_path
        )
    try:
        line = wait_line(process, "thaw: serving app", limit=WAIT)
        yield int(line.split("http://127.0.0.1:")[1].split(";")[0].split("/")[0])
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(WAIT)
            except subprocess.TimeoutExpired:
                pass
        end_process(process)


def test_thaw_slo_reads_a_served_payment_webhook(
    nats_server: EmbeddedServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    with serving(nats_server.url, tmp_path) as port:
        for number in range(SENT):
            event = {
                "id": f"evt_SLO{number:05d}",
                "type": "payment.succeeded",
                "created": "2026-11-27T12:00:00Z",
                "payment_id": f"pay_SLO{number:05d}",
                "amount": 1_000 + number,
                "currency": "EUR",
                "customer": "cus_SLO00001",
            }
            body = json.dumps(event).encode()
            headers = {"Content-Type": "application/json", "Webhook-Signature": sign(body)}
            assert post(port, "/webhooks/payments", body, headers) == 200
            quote = json.dumps({"amount": 500 + number, "currency": "EUR"}).encode()
            assert post(port, "/fees/quote", quote, {"Content-Type": "application/json"}) == 200
        bad = {"Content-Type": "application/json", "Webhook-Signature": "t=1,v1=00"}
        assert post(port, "/webhooks/payments", b"{}", bad) in (400, 401, 422)  # the caller's

        deadline = time.monotonic() + WAIT  # the host samples every 0.2 s: wait for it
        while True:
            text = scrape(port)
            counted = (
                events(text, "ingest", "latency_p99_200ms"),
                events(text, "quote_fee", "latency_p99.9_10ms"),
                events(text, "apply_payment", "completion_p99_20s"),
            )
            if counted[0] > SENT and counted[1] >= SENT and counted[2] >= SENT:
                break
            assert time.monotonic() < deadline, (counted, text[-3000:])
            time.sleep(0.1)

        address = f"http://127.0.0.1:{port}"
        table = thaw_slo(PAYMENTS, "--url", address)
        as_json = thaw_slo(PAYMENTS, "--url", address, "--json")
        other = thaw_slo(IMAGES, "--url", address)
    document = json.loads(as_json.stdout)
    # no timing thresholds here: a slow machine may burn the latency budget (exit 3)
    assert as_json.returncode == (3 if document["firing"] else 0), as_json.stderr
    assert table.returncode in (0, 3), table.stderr
    rows = {(row["capability"], row["slo"]): row for row in document["objectives"]}
    assert sorted(rows) == [
        ("apply_payment", "age_p99_5s"),
        ("apply_payment", "completion_p99_20s"),
        ("ingest", "availability_99.9"),
        ("ingest", "latency_p99_200ms"),
        ("quote_fee", "latency_p99.9_10ms"),
    ]
    for row in rows.values():
        assert row["exported"], row
        assert row["events"]["1h"] >= SENT, row
        assert 0 <= row["sli"]["1h"] <= 1 and row["error_budget_remaining"] <= 1, row
        assert all(rate >= 0 for rate in row["burn_rate"].values()), row
    assert rows[("ingest", "availability_99.9")]["sli"]["1h"] == 1.0  # the bad one is ours
    assert rows[("ingest", "latency_p99_200ms")]["events"]["1h"] == SENT + 1
    lines = table.stdout.splitlines()
    assert lines[0] == f"app payment_webhook: 5 objectives at {address}/metrics"
    assert sum(line.startswith(("ingest ", "apply_payment ", "quote_fee ")) for line in lines) == 5
    assert other.returncode == 1
    assert "none of app images's" in other.stderr, other.stderr
