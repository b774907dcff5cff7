"""``thaw serve A B ...``: several apps on one host, each with its own consumers and routes;
one that cannot load, clashes or fails to start leaves the others serving. Also the
ServiceSet's routing and the merged /metrics exposition in process."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nats_fixtures import wait_line

from thaw.adapters.http.service_set import merge_expositions

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0

ALPHA = """
from thaw import App, http, stream

app = App("alpha")

@app.capability(http("GET", "/alpha"))
async def hello() -> str:
    return "alpha"

@app.capability(stream("shared.events"))
async def consume(raw: bytes) -> None:
    return None
"""

BETA = """
from thaw import App, http

app = App("beta")

@app.capability(http("POST", "/beta"))
async def greet(body: bytes) -> dict:
    return {"hi": body.decode()}
"""

# Its stream takes the subject alpha's stream holds: provisioning it fails at start.
GREEDY = """
from thaw import App, http, stream

app = App("greedy")

@app.capability(http("GET", "/greedy"))
async def hello() -> str:
    return "greedy"

@app.capability(stream("shared.events"))
async def consume(raw: bytes) -> None:
    return None
"""

CLASH = """
from thaw import App, http

app = App("clash")

@app.capability(http("GET", "/alpha"))
async def hello() -> str:
    return "clash"
"""

BROKEN = "raise RuntimeError('this app cannot even be imported')\n"


def write(tmp_path: Path, name: str, source: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "app.py").write_text(textwrap.dedent(source))
    return str(folder / "app.py")


@contextmanager
def serving(tmp_path: Path, *apps: str) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", *apps, "--http", "0"]
    command += ["--backbone", "memory", "--state-dir", str(tmp_path / "state")]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
    )
    try:
        line = wait_line(process, "thaw: serving app", limit=WAIT)
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
        yield process, port, line
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=WAIT)


def request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request(method, path, body=body or None)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_two_apps_share_one_port_and_the_broken_ones_are_reported(tmp_path: Path) -> None:
    apps = [
        write(tmp_path, "alpha", ALPHA),
        write(tmp_path, "beta", BETA),
        write(tmp_path, "greedy", GREEDY),
        write(tmp_path, "clash", CLASH),
        write(tmp_path, "broken", BROKEN),
    ]
    with serving(tmp_path, *apps) as (process, port, _):
        assert request(port, "GET", "/alpha") == (200, b'"alpha"')
        assert request(port, "POST", "/beta", b"ann") == (200, b'{"hi":"ann"}')
        status, body = request(port, "GET", "/greedy")  # provisioning failed: down, not gone
        assert status == 503 and json.loads(body)["code"] == "app_unavailable"
        assert "greedy" in json.loads(body)["detail"]
        assert request(port, "GET", "/nowhere")[0] == 404
        assert request(port, "GET", "/readyz")[0] == 200  # the serving apps are ready
        metrics = request(port, "GET", "/metrics")[1].decode()
        assert 'thaw_invocations_total{app="alpha",capability="hello"' in metrics
        assert 'thaw_invocations_total{app="beta",capability="greet"' in metrics
        assert metrics.count("# TYPE thaw_invocations_total counter") == 1
        paths = json.loads(request(port, "GET", "/openapi.json")[1])["paths"]
        assert {"/alpha", "/beta"} <= set(paths)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=WAIT)
    assert process.returncode == 0
    assert "app 'clash' serves GET /alpha, which app 'alpha' already serves" in err
    assert "cannot even be imported" in err
    assert "app greedy stopped" in err


def test_when_no_app_can_be_served_serve_exits_1(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken", BROKEN)
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", broken, "--backbone", "memory"]
    command += ["--state-dir", str(tmp_path / "state"), "--no-http"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "is not served" in done.stderr and "cannot even be imported" in done.stderr


def test_merged_expositions_label_every_sample_and_keep_one_header_per_family() -> None:
    alpha = (
        b'# HELP thaw_x Things.\n# TYPE thaw_x counter\nthaw_x{k="1"} 2\n'
        b"# HELP thaw_up Up.\n# TYPE thaw_up gauge\nthaw_up 1\n"
    )
    beta = b'# HELP thaw_x Things.\n# TYPE thaw_x counter\nthaw_x{k="2"} 5\n'
    merged = merge_expositions([("alpha", alpha), ('be"ta', beta)]).decode().splitlines()
    assert merged == [
        "# HELP thaw_x Things.",
        "# TYPE thaw_x counter",
        'thaw_x{app="alpha",k="1"} 2',
        'thaw_x{app="be\\"ta",k="2"} 5',
        "# HELP thaw_up Up.",
        "# TYPE thaw_up gauge",
        'thaw_up{app="alpha"} 1',
    ]


def test_a_build_is_reused_while_the_app_folder_is_unchanged(tmp_path: Path) -> None:
    from thaw.adapters.cli.serving import build_if_needed
    from thaw.snapshots._revision import load_revision

    target = write(tmp_path, "alpha", ALPHA)
    state = str(tmp_path / "alpha" / ".thaw")  # the usual place: inside the app folder
    path = build_if_needed(target, state)
    built_at = os.stat(path).st_mtime_ns
    revision = load_revision(path).revision_id
    assert build_if_needed(target, state) == path
    assert os.stat(path).st_mtime_ns == built_at  # not built again
    source = (tmp_path / "alpha" / "app.py").read_text()
    (tmp_path / "alpha" / "app.py").write_text(source.replace('return "alpha"', 'return "a2"'))
    assert build_if_needed(target, state) == path
    assert load_revision(path).revision_id != revision  # built again: the new source
    (tmp_path / "alpha" / "notes.txt").write_text("a new data file is a new revision")
    build_if_needed(target, state)
    assert "notes.txt" in load_revision(path).manifest.data_files
