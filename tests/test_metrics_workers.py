"""``/metrics`` under ``thaw serve --workers 2``: one view, whichever worker answers."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from thaw.adapters.telemetry.metrics_peers import merge

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(ROOT / "examples" / "hello")
WAIT = 60.0
SCRAPES = 40
REQUESTS = 60
_SAMPLE = re.compile(r"^([a-z_:]+)(\{[^}]*\})? (\S+)$")

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's"
)


def samples(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in text.splitlines():
        matched = _SAMPLE.match(line)
        if matched:
            found[matched[1] + (matched[2] or "")] = float(matched[3])
    return found


def test_merge_sums_counters_and_histograms_and_keeps_shared_gauges_at_the_largest() -> None:
    one = (
        b"# HELP thaw_x_total X.\n# TYPE thaw_x_total counter\n"
        b'thaw_x_total{capability="a"} 2\n'
        b"# HELP thaw_d_seconds D.\n# TYPE thaw_d_seconds histogram\n"
        b'thaw_d_seconds_bucket{le="0.1"} 1\nthaw_d_seconds_bucket{le="+Inf"} 2\n'
        b"thaw_d_seconds_sum 0.25\nthaw_d_seconds_count 2\n"
        b"# HELP thaw_stream_pending P.\n# TYPE thaw_stream_pending gauge\n"
        b'thaw_stream_pending{capability="a",consumer=""} 7\n'
    )
    two = (
        b"# HELP thaw_x_total X.\n# TYPE thaw_x_total counter\n"
        b'thaw_x_total{capability="a"} 3\nthaw_x_total{capability="b"} 1\n'
        b"# HELP thaw_d_seconds D.\n# TYPE thaw_d_seconds histogram\n"
        b'thaw_d_seconds_bucket{le="0.1"} 0\nthaw_d_seconds_bucket{le="+Inf"} 1\n'
        b"thaw_d_seconds_sum 0.5\nthaw_d_seconds_count 1\n"
        b"# HELP thaw_stream_pending P.\n# TYPE thaw_stream_pending gauge\n"
        b'thaw_stream_pending{capability="a",consumer=""} 5\n'
    )
    text = merge([one, two]).decode()
    assert text.count("# TYPE thaw_x_total counter") == 1
    got = samples(text)
    assert got['thaw_x_total{capability="a"}'] == 5
    assert got['thaw_x_total{capability="b"}'] == 1
    assert got['thaw_d_seconds_bucket{le="0.1"}'] == 1
    assert got['thaw_d_seconds_bucket{le="+Inf"}'] == 3
    assert got["thaw_d_seconds_sum"] == 0.75
    assert got["thaw_d_seconds_count"] == 3
    assert got['thaw_stream_pending{capability="a",consumer=""}'] == 7
    assert 'thaw_d_seconds_bucket{le="+Inf"} 3\n' in text  # integers stay integers


def test_merge_sums_process_cpu_and_memory_takes_the_largest_peak_and_the_first_start() -> None:
    from thaw.adapters.telemetry.process_metrics import process_samples

    def exposition(cpu: float, rss: int, peak: int, start: float) -> bytes:
        lines = []
        values = {
            "process_cpu_seconds_total": cpu,
            "process_resident_memory_bytes": rss,
            "process_max_resident_memory_bytes": peak,
            "process_start_time_seconds": start,
        }
        for name, kind, help_text, _ in process_samples():  # the real families' types
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines.append(f"{name} {values[name]!r}")
        return ("\n".join(lines) + "\n").encode()

    text = merge([exposition(1.5, 100, 300, 1000.5), exposition(2.0, 50, 200, 999.25)]).decode()
    got = samples(text)
    assert got["process_cpu_seconds_total"] == 3.5
    assert got["process_resident_memory_bytes"] == 150
    assert got["process_max_resident_memory_bytes"] == 300
    assert got["process_start_time_seconds"] == 999.25


def _get(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:  # a new connection each time: the kernel spreads them over the workers
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@linux_only
def test_forty_scrapes_under_two_workers_are_monotonic_and_add_up(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("THAW_METRICS_PEERS", None)
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", HELLO, "--http", "0"]
    command += ["--backbone", "memory", "--workers", "2", "--no-access-log"]
    command += ["--log-format", "json"]  # the parent's and the workers' lines alike
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=tmp_path
        )
    drain: threading.Thread | None = None
    try:
        assert process.stdout is not None
        line = ""
        for line in process.stdout:  # bounded by the process: it exits on failure
            if "with 2 workers" in line:
                break
        assert "with 2 workers" in line, (tmp_path / "stderr").read_text()
        port = int(line.split("http://127.0.0.1:")[1].split(";")[0])
        stdout = process.stdout
        drain = threading.Thread(target=stdout.read, daemon=True)  # the rest, to EOF
        drain.start()

        sent = 0
        series = 'thaw_invocations_total{capability="greet",trigger="http",outcome="ok",code=""}'
        previous: dict[str, float] = {}
        answered_by: set[str] = set()
        for _ in range(SCRAPES):
            for _ in range(REQUESTS // SCRAPES + 1):
                status, _body = _get(port, "POST", "/greet", b'{"name": "Ada"}')
                assert status == 200
                sent += 1
            status, text = _get(port, "GET", "/metrics")
            assert status == 200, text
            got = samples(text)
            answered_by.add(text)
            for key, value in got.items():
                if key.split("{")[0].endswith(("_total", "_count", "_bucket", "_sum")):
                    assert value >= previous.get(key, 0), (key, value, previous.get(key))
            previous = got
            assert got[series] == sent
        duration = 'thaw_invocation_duration_seconds_count{capability="greet",trigger="http"}'
        assert got[duration] == sent
        assert got['thaw_invocation_bytes_in_total{capability="greet"}'] == sent * 15
        assert got['thaw_http_responses_total{class="2xx"}'] >= sent
        assert got["process_cpu_seconds_total"] > 0
        assert got["process_resident_memory_bytes"] > 0
    finally:
        process.terminate()
        process.wait(WAIT)
        if drain is not None:
            drain.join(WAIT)
        if process.stdout is not None:
            process.stdout.close()
    logged = (tmp_path / "stderr").read_text()
    assert process.returncode == 0, logged
    lines = [json.loads(one) for one in logged.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(one) for one in lines), logged
    assert any(one["logger"] == "thaw.workers" for one in lines), logged  # the memory warning
