"""The edge host: Thaw inside Pyodide under Node, driven as a subprocess, and its guest in CPython.

The Node tests need the edge cache (``python -m thaw.adapters.edge.prepare``, which
``make test`` runs first). Without it they fail with that instruction; they are
never skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import EDGE_ONLY, edge_files
from edge_support import wait_listening

from thaw import App, http
from thaw.adapters.edge import prepare
from thaw.adapters.edge._guest import EdgeResponse, open_edge
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.process.build import build_snapshot
from thaw.lowlevel import load_app

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(ROOT / "examples" / "hello")


@pytest.fixture(scope="module")
def host() -> list[str]:
    """The command that runs the edge host; fails (never skips) when the cache is missing."""
    problems = prepare.check()
    if problems:
        pytest.fail("the edge host cannot run:\n  " + "\n  ".join(problems), pytrace=False)
    return prepare.host_command()


def run_host(command: list[str], *, stdin: str = "", timeout: float = 300) -> tuple[str, str]:
    completed = subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert completed.returncode == 0, (
        f"edge host exited {completed.returncode}\nstdout:\n{completed.stdout[-3000:]}\n"
        f"stderr:\n{completed.stderr[-3000:]}"
    )
    return completed.stdout, completed.stderr


# -- inside Pyodide ---------------------------------------------------------------


@pytest.mark.slow
def test_the_core_test_subset_passes_inside_pyodide(host: list[str], tmp_path: Path) -> None:
    expected = collected_here()  # before Node: a broken table fails here, in a few seconds
    snapshot = tmp_path / "hello.snap"  # built by this CPython: Pyodide must refuse it
    build_snapshot(HELLO, str(snapshot))
    stdout, _ = run_host([*host, "test", "--snapshot", str(snapshot)], timeout=900)
    line = next(x for x in reversed(stdout.splitlines()) if x.startswith("edge-test-summary: "))
    summary = json.loads(line.split(": ", 1)[1])
    assert summary["platform"] == "emscripten"
    assert summary["python"].startswith("3.14")
    assert summary["failed"] == summary["error"] == 0, stdout[-2000:]
    # Every test of every file of the subset ran and passed: none skipped, none left out.
    outcomes = {key: summary[key] for key in ("skipped", "xfailed", "xpassed")}
    assert outcomes == {"skipped": 0, "xfailed": 0, "xpassed": 0}, stdout[-2000:]
    assert summary["collected"] == expected
    assert summary["passed"] == sum(expected.values())
    assert "tests/test_in_pyodide.py ...." in stdout


def collected_here() -> dict[str, int]:
    """Tests per file of the edge's subset (tests/conftest.py), as this CPython collects them."""
    paths = {
        str(EDGE_ONLY[name].relative_to(ROOT)) if name in EDGE_ONLY else f"tests/{name}": name
        for name in (path.removeprefix("tests/") for path in edge_files())
    }
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    counts = Counter(x.split("::", 1)[0] for x in completed.stdout.splitlines() if "::" in x)
    assert set(counts) == set(paths), completed.stdout[-3000:]  # no file collected nothing
    return {f"tests/{paths[path]}": count for path, count in sorted(counts.items())}


@pytest.mark.slow
def test_hello_answers_through_the_fetch_handler(host: list[str]) -> None:
    requests: list[dict[str, Any]] = [
        {
            "method": "POST",
            "path": "/greet",
            "headers": {"content-type": "application/json"},
            "body": '{"name": "Ada", "language": "fr"}',
        },
        {"method": "GET", "path": "/no/such/route"},
        {"method": "POST", "path": "/greet", "body": '{"name": 42}'},
        {"method": "POST", "path": "/greet", "body": '{"name": "Ada"'},
        {"method": "GET", "path": "/greet"},
        {"method": "POST", "path": "/greet", "body": '{"name": "Ada", "language": "xx"}'},
        {"method": "HEAD", "path": "/healthz"},
    ]
    stdout, _ = run_host([*host, "handle", HELLO], stdin=json.dumps(requests))
    document = json.loads(stdout.strip().splitlines()[-1])
    ok, missing, wrong_type, broken, wrong_method, refused, head = document["responses"]

    assert (ok["status"], json.loads(ok["body"])) == (
        200,
        {"message": "Bonjour, Ada!", "attempt": 1},
    )
    assert ok["headers"]["content-type"] == "application/json"

    assert missing["status"] == 404
    assert missing["headers"]["content-type"] == "application/problem+json"
    assert json.loads(missing["body"])["code"] == "route_not_found"

    problem = json.loads(wrong_type["body"])
    assert (wrong_type["status"], problem["code"]) == (422, "contract_invalid")
    assert "$.name" in problem["detail"]

    assert (broken["status"], json.loads(broken["body"])["code"]) == (400, "payload_malformed")
    assert wrong_method["status"] == 405
    assert "POST" in wrong_method["headers"]["allow"]
    assert (refused["status"], json.loads(refused["body"])["code"]) == (422, "unknown_language")
    assert (head["status"], head["body"]) == (200, "")

    timings = document["timings"]
    assert timings["boot_to_ready_ms"] > 0
    assert document["sizes"]["wheels"] > 100_000


@pytest.mark.slow
def test_serve_answers_http_on_loopback(host: list[str]) -> None:
    process = subprocess.Popen(
        [*host, "serve", HELLO, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = str(wait_listening(process, timeout=120)["listening"])
        assert base.startswith("http://127.0.0.1:")
        status, body, headers = _request(
            "POST", f"{base}/greet", b'{"name": "Grace", "language": "es"}'
        )
        assert (status, json.loads(body)) == (200, {"message": "Hola, Grace!", "attempt": 1})
        assert headers["content-type"] == "application/json"
        status, body, headers = _request("GET", f"{base}/nowhere", None)
        assert status == 404
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["code"] == "route_not_found"
        status, body, _ = _request("POST", f"{base}/greet", b'{"language": "en"}')
        assert status == 422
        assert "name" in json.loads(body)["detail"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def _request(method: str, url: str, body: bytes | None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return (
                response.status,
                response.read(),
                {k.lower(): v for k, v in response.headers.items()},
            )
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read(), {k.lower(): v for k, v in error.headers.items()}


# -- the guest in CPython (the same code Pyodide runs) -----------------------------


@pytest.mark.anyio
async def test_guest_answers_like_the_http_adapter() -> None:
    async with open_edge(load_app(HELLO)) as edge:
        ok = await edge.handle(
            "POST", "/greet", [("Content-Type", "application/json")], b'{"name": "Ada"}'
        )
        assert ok == EdgeResponse(
            200, [("content-type", "application/json")], b'{"message":"Hello, Ada!","attempt":1}'
        )
        head = await edge.handle("HEAD", "/healthz", [], b"")
        assert (head.status, head.body) == (200, b"")
        failing = await edge.handle("POST", "/greet", [], b'{"name": "Flaky"}')
        problem = msgspec.json.decode(failing.body)
        assert (failing.status, problem["code"]) == (500, "handler_error")
        assert "hiccupped" not in problem["detail"]  # internals stay in the log
        assert ("retry-after", "1") in failing.headers


@pytest.mark.anyio
async def test_guest_refuses_a_body_over_the_route_limit() -> None:
    app = App("small")

    @app.capability(http("POST", "/echo"), max_payload=16)
    async def echo(data: bytes) -> bytes:
        return data

    async with open_edge(app, config=HttpConfig()) as edge:
        fits = await edge.handle("POST", "/echo", [], b"x" * 16)
        assert (fits.status, fits.body) == (200, b"x" * 16)
        assert ("content-type", "application/octet-stream") in fits.headers
        big = await edge.handle("POST", "/echo", [], b"x" * 17)
        assert big.status == 413
        assert msgspec.json.decode(big.body)["code"] == "payload_too_large"


# -- the prepare step, without the network -------------------------------------------


def test_wheel_pins_come_from_the_constraints_file() -> None:
    pinned = prepare.pins(prepare.RUNTIME_WHEELS)
    constraints = (ROOT / "constraints.txt").read_text()
    for name, version in pinned.items():
        assert f"{name}=={version}".lower() in constraints.lower()
    assert prepare.pins(["sniffio"]) == {"sniffio": prepare.EDGE_ONLY_PINS["sniffio"]}
    with pytest.raises(prepare.EdgeSetupError, match="no pin"):
        prepare.pins(["surely-not-a-pinned-package"])


def test_check_names_the_prepare_step_when_the_cache_is_empty(tmp_path: Path) -> None:
    problems = prepare.check(tmp_path)
    assert problems
    assert all("thaw.adapters.edge.prepare" in problem for problem in problems)


def test_the_closure_check_refuses_a_wheel_whose_requirement_is_missing(tmp_path: Path) -> None:
    group = tmp_path / "wheels" / "runtime"
    group.mkdir(parents=True)
    _fake_wheel(
        group / "needy-1.0-py3-none-any.whl", ["leftpad>=1", 'winonly; sys_platform == "win32"']
    )
    target = prepare.WheelTarget("pyemscripten_2026_0_wasm32", "3.14", "cp314", "3.14.2")
    with pytest.raises(prepare.EdgeSetupError, match="leftpad"):
        prepare._check_closure(tmp_path, target, {"runtime": ["needy-1.0-py3-none-any.whl"]})
    _fake_wheel(group / "leftpad-1.2-py3-none-any.whl", [])
    prepare._check_closure(
        tmp_path,
        target,
        {"runtime": ["needy-1.0-py3-none-any.whl", "leftpad-1.2-py3-none-any.whl"]},
    )


def _fake_wheel(path: Path, requires: list[str]) -> None:
    name, version = path.name.split("-")[:2]
    lines = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")


def test_the_lock_pins_pyodide_exactly() -> None:
    package = json.loads((ROOT / "adapters" / "edge" / "package.json").read_text())
    lock = json.loads((ROOT / "adapters" / "edge" / "package-lock.json").read_text())
    for name, version in package["dependencies"].items():
        assert version[0].isdigit(), f"{name} must be pinned exactly, not {version!r}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert os.path.basename(prepare.HOST_SCRIPT) == "thaw_edge.mjs"
